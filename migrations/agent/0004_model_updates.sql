-- Over-the-air model updates: what the agent installed, switched to, refused or rolled back,
-- and whether the server has been told. The active version itself is a symlink on disk
-- (<data_dir>/models/<name>/active), switched by one rename.
CREATE TABLE model_events (
    event_id  INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    model     TEXT NOT NULL,
    version   TEXT,
    -- installed | activated | refused | rolled_back | pinned | unpinned
    kind      TEXT NOT NULL,
    reason    TEXT NOT NULL DEFAULT '',
    -- 1 once the server acknowledged a report carrying it (refused / rolled_back only)
    reported  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX model_events_unreported ON model_events (reported, kind);
