-- PostgreSQL version of migrations/server/0005_training_jobs.sql. Processes claim a job with
-- SELECT ... FOR UPDATE SKIP LOCKED: concurrent claimers skip a row another is taking.
CREATE TABLE training_jobs (
    job_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name    TEXT COLLATE "C" NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('operator', 'auto')),
    feedback_seen BIGINT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    owner         TEXT,
    lease_until   BIGINT,
    run_id        BIGINT,
    error         TEXT,
    enqueued_at   TEXT NOT NULL,
    finished_at   TEXT
);
CREATE UNIQUE INDEX training_jobs_open ON training_jobs (model_name)
    WHERE state IN ('queued', 'running');
CREATE INDEX training_jobs_state ON training_jobs (state, job_id);
