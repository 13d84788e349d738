-- Retraining on the server: which field decisions are held out for evaluation, and one row
-- per training run with its evaluation report and what became of the candidate.

-- A decision's split is chosen once, the first time a training run sees it, and never
-- changes: a held-out decision is never trained on later. Chosen per stratum (device and
-- label) so that each keeps close to the configured held-out share.
CREATE TABLE feedback_split (
    feedback_id TEXT PRIMARY KEY REFERENCES feedback (feedback_id),
    split       TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
    assigned_at TEXT NOT NULL
);

CREATE TABLE training_runs (
    run_id            INTEGER PRIMARY KEY,
    model_name        TEXT NOT NULL,
    base_version      TEXT NOT NULL,             -- the published release it started from
    candidate_version TEXT,                      -- set once a candidate bundle exists
    trigger           TEXT NOT NULL CHECK (trigger IN ('operator', 'auto')),
    status            TEXT NOT NULL CHECK (status IN ('running', 'published', 'held', 'failed')),
    reason            TEXT NOT NULL DEFAULT '',  -- why it was held or failed; what was published
    feedback_seen     INTEGER NOT NULL,          -- feedback rows for the model when the run started
    report            TEXT,                      -- evaluation report (JSON)
    bundle_dir        TEXT,                      -- the candidate bundle on the server's disk
    started_at        TEXT NOT NULL,
    finished_at       TEXT
);
CREATE INDEX training_runs_model ON training_runs (model_name, run_id);
CREATE UNIQUE INDEX training_runs_candidate ON training_runs (model_name, candidate_version);
