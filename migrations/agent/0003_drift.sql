-- Drift monitoring (src/drift.rs): each prediction's novelty (distance to the nearest label
-- centroid of the bundle's base data), whether it goes to the front of the review queue, and
-- one row per window of predictions with its drift score, state and likely cause.

ALTER TABLE predictions ADD COLUMN novelty REAL;               -- NULL until its window is scored
ALTER TABLE predictions ADD COLUMN drift_priority INTEGER NOT NULL DEFAULT 0; -- 1: unfamiliar item in a watch/drifted window

CREATE TABLE drift_windows (
    window_id          INTEGER PRIMARY KEY,
    model_name         TEXT NOT NULL,
    model_version      TEXT NOT NULL,
    first_prediction_id INTEGER NOT NULL,
    last_prediction_id INTEGER NOT NULL,
    items              INTEGER NOT NULL,
    novel              INTEGER NOT NULL,        -- items above the novelty threshold
    score              REAL NOT NULL,           -- novel / items
    state              TEXT NOT NULL CHECK (state IN ('ok', 'watch', 'drifted')),
    top_score_psi      REAL,
    label_psi          REAL,
    novel_labels       TEXT NOT NULL,           -- JSON [[label, count], ...]
    novel_folders      TEXT NOT NULL,           -- JSON [[folder, count], ...]
    started_at         TEXT NOT NULL,
    ended_at           TEXT NOT NULL
);
CREATE INDEX drift_windows_model ON drift_windows (model_name, model_version, last_prediction_id);
