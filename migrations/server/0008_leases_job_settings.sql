-- Named leases that serialise work across server processes: the signed repository
-- (publishing, staging, withdrawing, re-signing the timestamp) is changed by one process at
-- a time. A lease runs out by itself (expires_at, unix seconds) if its process dies.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
-- An operator's `train` or the dashboard's "train now" is a job too; its overrides of the
-- configured training settings (JSON: tolerance, channel, groups, percent, publish) travel
-- with it to whichever process claims it.
ALTER TABLE training_jobs ADD COLUMN settings TEXT;
