-- PostgreSQL version of migrations/server/0002_training.sql.

CREATE TABLE feedback_split (
    feedback_id TEXT COLLATE "C" PRIMARY KEY REFERENCES feedback (feedback_id),
    split       TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
    assigned_at TEXT NOT NULL
);

CREATE TABLE training_runs (
    run_id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name        TEXT COLLATE "C" NOT NULL,
    base_version      TEXT NOT NULL,
    candidate_version TEXT COLLATE "C",
    trigger           TEXT NOT NULL CHECK (trigger IN ('operator', 'auto')),
    status            TEXT NOT NULL CHECK (status IN ('running', 'published', 'held', 'failed')),
    reason            TEXT NOT NULL DEFAULT '',
    feedback_seen     BIGINT NOT NULL,
    report            TEXT,
    bundle_dir        TEXT,
    started_at        TEXT NOT NULL,
    finished_at       TEXT
);
CREATE INDEX training_runs_model ON training_runs (model_name, run_id);
CREATE UNIQUE INDEX training_runs_candidate ON training_runs (model_name, candidate_version);
