-- Drift summaries sent by agents (src/drift.rs): one row per window of predictions, per
-- device. Numbers, label names and folder names only: no raw data.
CREATE TABLE drift_windows (
    device_id      TEXT NOT NULL REFERENCES devices (device_id),
    window_id      INTEGER NOT NULL,            -- the agent's id: re-sending stores nothing twice
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    items          INTEGER NOT NULL,
    novel          INTEGER NOT NULL,
    score          REAL NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('ok', 'watch', 'drifted')),
    top_score_psi  REAL,
    label_psi      REAL,
    novel_labels   TEXT NOT NULL,               -- JSON [[label, count], ...]
    novel_folders  TEXT NOT NULL,
    started_at     TEXT NOT NULL,               -- device clock
    ended_at       TEXT NOT NULL,
    received_at    TEXT NOT NULL,               -- server clock
    PRIMARY KEY (device_id, window_id)
);
CREATE INDEX drift_windows_model ON drift_windows (model_name, device_id, window_id);
