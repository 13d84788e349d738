-- PostgreSQL version of migrations/server/0001_devices_feedback.sql (same tables, same
-- columns; BLOB is BYTEA, integers are BIGINT). Timestamps stay RFC 3339 text as on SQLite.
-- Columns that are sorted or compared use COLLATE "C" (byte order, as SQLite compares).

CREATE TABLE devices (
    device_id      TEXT COLLATE "C" PRIMARY KEY,
    name           TEXT COLLATE "C" NOT NULL UNIQUE,
    device_group   TEXT NOT NULL DEFAULT 'default',
    public_key     BYTEA,
    enrollment_code_sha256 TEXT,
    enrollment_expires_at TEXT COLLATE "C",
    enrolled_at    TEXT,
    revoked_at     TEXT,
    last_seen      TEXT,
    created_at     TEXT NOT NULL
);

-- One row per feedback id: a retried or re-imported record is never stored twice, whichever
-- server process receives it (the primary key decides, not a lock in a process).
CREATE TABLE feedback (
    feedback_id   TEXT COLLATE "C" PRIMARY KEY,
    -- Arrival order (SQLite's rowid): the tie-break of "latest decision" in training.
    seq           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    device_id     TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id),
    item_id       TEXT COLLATE "C" NOT NULL,
    kind          TEXT NOT NULL,
    model_name    TEXT COLLATE "C" NOT NULL,
    model_version TEXT NOT NULL,
    action        TEXT NOT NULL,
    labels        TEXT NOT NULL,
    new_labels    TEXT NOT NULL,
    annotator     TEXT NOT NULL,
    created_at    TEXT COLLATE "C" NOT NULL,
    supersedes    TEXT COLLATE "C",
    embedding     BYTEA NOT NULL,
    content       BYTEA,
    content_type  TEXT,
    received_at   TEXT COLLATE "C" NOT NULL,
    received_via  TEXT NOT NULL CHECK (received_via IN ('http', 'usb'))
);
CREATE INDEX feedback_model ON feedback (model_name, received_at);
CREATE INDEX feedback_device ON feedback (device_id, received_at);
-- Training's "is it superseded?" and "latest per item" lookups.
CREATE INDEX feedback_supersedes ON feedback (supersedes);
CREATE INDEX feedback_item ON feedback (model_name, device_id, item_id);

CREATE TABLE nonces (
    device_id  TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, nonce)
);
CREATE INDEX nonces_expiry ON nonces (expires_at);

CREATE TABLE audit (
    audit_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
