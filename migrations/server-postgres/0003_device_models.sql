-- PostgreSQL version of migrations/server/0003_device_models.sql.
CREATE TABLE device_models (
    device_id      TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id),
    model          TEXT COLLATE "C" NOT NULL,
    active_version TEXT,
    pinned         TEXT,
    installed      TEXT NOT NULL DEFAULT '[]',
    reported_at    TEXT NOT NULL,
    PRIMARY KEY (device_id, model)
);
CREATE TABLE device_model_failures (
    failure_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices (device_id),
    model       TEXT NOT NULL,
    version     TEXT,
    kind        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX device_model_failures_device ON device_model_failures (device_id, failure_id);
