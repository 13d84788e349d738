-- PostgreSQL version of migrations/server/0006_dashboard.sql: operator accounts with
-- Argon2id password hashes, their sign-in sessions, and what each device last said about
-- its outbox.

CREATE TABLE admins (
    name            TEXT COLLATE "C" PRIMARY KEY,
    password_hash   TEXT NOT NULL,           -- PHC string: $argon2id$v=19$m=..,t=..,p=..$salt$hash
    created_at      TEXT NOT NULL,
    password_set_at TEXT NOT NULL
);

-- A session is known by the sha256 of its cookie value: a copy of the database does not
-- let anyone sign in. Each session has its own CSRF token for the page's forms.
CREATE TABLE admin_sessions (
    token_sha256 TEXT COLLATE "C" PRIMARY KEY,
    admin        TEXT COLLATE "C" NOT NULL REFERENCES admins (name) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   BIGINT NOT NULL              -- unix seconds
);

ALTER TABLE devices ADD COLUMN pending_feedback BIGINT;   -- outbox rows not yet acknowledged
ALTER TABLE devices ADD COLUMN pending_reported_at TEXT;  -- server clock
