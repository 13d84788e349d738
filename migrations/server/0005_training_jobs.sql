-- Training as a job that exactly one server process runs. The serving processes queue a job
-- when a model is due; each claims queued jobs (or running ones whose lease expired: the
-- process that took it died) inside one write transaction, so a job is never run twice at
-- once. The claiming process renews its lease while it trains.
CREATE TABLE training_jobs (
    job_id        INTEGER PRIMARY KEY,
    model_name    TEXT NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('operator', 'auto')),
    feedback_seen INTEGER NOT NULL,            -- feedback rows for the model when queued
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,  -- claims so far (a retry after a crash is 2)
    owner         TEXT,                        -- the process holding it (host:pid:uuid)
    lease_until   INTEGER,                     -- unix seconds; past it, another process may take it
    run_id        INTEGER,                     -- the training run it produced
    error         TEXT,
    enqueued_at   TEXT NOT NULL,
    finished_at   TEXT
);
-- At most one open job per model: queueing again while one waits or runs does nothing.
CREATE UNIQUE INDEX training_jobs_open ON training_jobs (model_name)
    WHERE state IN ('queued', 'running');
CREATE INDEX training_jobs_state ON training_jobs (state, job_id);
