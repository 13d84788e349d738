-- PostgreSQL version of migrations/server/0004_drift.sql.
CREATE TABLE drift_windows (
    device_id      TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id),
    window_id      BIGINT NOT NULL,
    model_name     TEXT COLLATE "C" NOT NULL,
    model_version  TEXT NOT NULL,
    items          BIGINT NOT NULL,
    novel          BIGINT NOT NULL,
    score          DOUBLE PRECISION NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('ok', 'watch', 'drifted')),
    top_score_psi  DOUBLE PRECISION,
    label_psi      DOUBLE PRECISION,
    novel_labels   TEXT NOT NULL,
    novel_folders  TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    PRIMARY KEY (device_id, window_id)
);
CREATE INDEX drift_windows_model ON drift_windows (model_name, device_id, window_id);
