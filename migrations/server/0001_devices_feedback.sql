-- The central server's store: enrolled devices, the feedback they sent (each piece once),
-- request nonces (replay protection) and an audit log of operator actions.

CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY,         -- UUID given at `devices add`
    name           TEXT NOT NULL UNIQUE,
    device_group   TEXT NOT NULL DEFAULT 'default',
    public_key     BLOB,                     -- Ed25519 public key, set at enrollment
    enrollment_code_sha256 TEXT,             -- one-time code, hashed; cleared once used
    enrollment_expires_at TEXT,
    enrolled_at    TEXT,
    revoked_at     TEXT,
    last_seen      TEXT,
    created_at     TEXT NOT NULL
);

-- One row per feedback id: a retried or re-imported record is never stored twice.
CREATE TABLE feedback (
    feedback_id   TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL REFERENCES devices (device_id),
    item_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    action        TEXT NOT NULL,
    labels        TEXT NOT NULL,             -- JSON array
    new_labels    TEXT NOT NULL,             -- JSON array
    annotator     TEXT NOT NULL,
    created_at    TEXT NOT NULL,             -- when the reviewer decided (device clock)
    supersedes    TEXT,
    embedding     BLOB NOT NULL,             -- little-endian float16
    content       BLOB,
    content_type  TEXT,
    received_at   TEXT NOT NULL,             -- server clock
    received_via  TEXT NOT NULL CHECK (received_via IN ('http', 'usb'))
);
CREATE INDEX feedback_model ON feedback (model_name, received_at);
CREATE INDEX feedback_device ON feedback (device_id, received_at);

CREATE TABLE nonces (
    device_id  TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,             -- unix seconds
    PRIMARY KEY (device_id, nonce)
);

CREATE TABLE audit (
    audit_id INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
