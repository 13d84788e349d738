-- PostgreSQL version of migrations/server/0008_leases_job_settings.sql.
CREATE TABLE leases (
    name       TEXT COLLATE "C" PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
ALTER TABLE training_jobs ADD COLUMN settings TEXT;
