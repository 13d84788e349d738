-- Feedback: staff confirming or correcting a prediction, and the outbox that carries each
-- piece of feedback to the central server.
--
-- feedback is the history: one immutable row per decision, never updated except `state`.
-- outbox holds what still has to travel: a row is added in the same transaction as its
-- feedback, and removed only when the server has acknowledged it (sync issue) or when a
-- newer decision on the same item replaces it before it was sent.

CREATE TABLE feedback (
    feedback_id   TEXT PRIMARY KEY,        -- UUID v4, stable across retries and USB carries
    item_id       TEXT NOT NULL REFERENCES items (item_id),
    prediction_id INTEGER REFERENCES predictions (prediction_id),
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    action        TEXT NOT NULL CHECK (action IN ('confirm', 'correct')),
    labels        TEXT NOT NULL,           -- JSON array: the labels the reviewer gave
    new_labels    TEXT NOT NULL DEFAULT '[]', -- JSON array: given labels the model does not know
    annotator     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    embedding     BLOB NOT NULL,           -- the item's embedding (float16), what the server retrains on
    include_content INTEGER NOT NULL DEFAULT 0, -- whether the raw item travels with it
    supersedes    TEXT REFERENCES feedback (feedback_id), -- the earlier decision on this item, if any
    state         TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'superseded', 'undone'))
);
CREATE INDEX feedback_item ON feedback (item_id, created_at);
CREATE INDEX feedback_created ON feedback (created_at);

CREATE TABLE outbox (
    feedback_id TEXT PRIMARY KEY REFERENCES feedback (feedback_id),
    enqueued_at TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    acked_at    TEXT                       -- set when the server acknowledged; then it is history
);
CREATE INDEX outbox_pending ON outbox (acked_at, enqueued_at);

-- Small key/value facts about the agent (last successful sync, annotator name...).
CREATE TABLE agent_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
