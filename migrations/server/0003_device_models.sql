-- Which model version each device runs, and which updates it refused or rolled back
-- (POST /v1/device/models; shown by `outpost-server devices list`).
CREATE TABLE device_models (
    device_id      TEXT NOT NULL REFERENCES devices (device_id),
    model          TEXT NOT NULL,
    active_version TEXT,
    pinned         TEXT,
    installed      TEXT NOT NULL DEFAULT '[]',
    reported_at    TEXT NOT NULL,
    PRIMARY KEY (device_id, model)
);
CREATE TABLE device_model_failures (
    failure_id  INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices (device_id),
    model       TEXT NOT NULL,
    version     TEXT,
    kind        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX device_model_failures_device ON device_model_failures (device_id, failure_id);
