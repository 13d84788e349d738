-- PostgreSQL version of migrations/server/0007_confirmations.sql: the dashboard's proposed
-- actions waiting for their confirmation, shared by every server process, so that
-- any server process behind a load balancer can confirm what another one proposed. A row
-- is taken (deleted) exactly once; the token and the session are kept only as sha256.
CREATE TABLE admin_confirmations (
    token_sha256   TEXT COLLATE "C" PRIMARY KEY,
    session_sha256 TEXT NOT NULL,
    action         TEXT NOT NULL,             -- JSON of the proposed action
    expires_at     BIGINT NOT NULL            -- unix seconds
);
CREATE INDEX admin_confirmations_expiry ON admin_confirmations (expires_at);
