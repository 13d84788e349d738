-- The agent's store: what was analysed (items), what the models said (predictions),
-- each run of `outpost analyze` (runs) and every input that could not be analysed (failures).
-- Applied once, in order, by src/store/migrate.rs; PRAGMA user_version records the last one.

-- An item is one thing a model looks at: an image tile or a written report.
-- item_id is the sha256 of its content, so analysing the same tile or report again
-- (from the same file or another) finds the same row instead of adding one.
CREATE TABLE items (
    item_id     TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    source      TEXT NOT NULL,            -- the file it was last seen in
    locator     TEXT,                     -- where in the file: 'tile x,y,w,h', 'row 12', 'line 3'
    width       INTEGER,                  -- tile size in pixels (images)
    height      INTEGER,
    geometry    TEXT,                     -- GeoJSON geometry in WGS84 (georeferenced tiles)
    content     BLOB,                     -- the tile's image bytes or the report's UTF-8 text
    content_type TEXT,                    -- 'image/png', 'image/jpeg', 'text/plain'
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL
);
CREATE INDEX items_source ON items (source);

CREATE TABLE runs (
    run_id      INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    inputs      TEXT NOT NULL,            -- JSON array of the paths given
    items       INTEGER NOT NULL DEFAULT 0,
    failures    INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ok', 'partial', 'failed', 'interrupted'))
);

-- One row per item and model version: analysing again replaces the row.
CREATE TABLE predictions (
    prediction_id INTEGER PRIMARY KEY,
    item_id       TEXT NOT NULL REFERENCES items (item_id),
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    run_id        INTEGER REFERENCES runs (run_id), -- the last run that produced or saw this prediction
    labels        TEXT NOT NULL,          -- JSON array of the labels decided (top label, or all above threshold)
    top_label     TEXT NOT NULL,
    top_score     REAL NOT NULL,
    scores        TEXT NOT NULL,          -- JSON array of every label's score, in the manifest's label order
    embedding     BLOB NOT NULL,          -- backbone embedding, little-endian float16
    truncated     INTEGER NOT NULL DEFAULT 0, -- report longer than the model's max_length
    preprocess_ms REAL,                   -- per item: decode/tokenize and preprocessing
    infer_ms      REAL,                   -- per item: backbone and head
    created_at    TEXT NOT NULL,
    UNIQUE (item_id, model_name, model_version)
);
CREATE INDEX predictions_run ON predictions (run_id);
CREATE INDEX predictions_model ON predictions (model_name, model_version, top_score);

CREATE TABLE failures (
    failure_id INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL REFERENCES runs (run_id),
    source     TEXT NOT NULL,
    locator    TEXT,
    code       TEXT NOT NULL,             -- 'corrupt', 'empty', 'unsupported', 'too-many-pixels', ...
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX failures_run ON failures (run_id);
