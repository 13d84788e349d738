-- Tasks (issue 18): as migrations/server/0009_tasks.sql.
CREATE TABLE tasks (
    name        TEXT PRIMARY KEY,
    backbone    TEXT NOT NULL,
    labels      TEXT NOT NULL,
    multi_label INTEGER NOT NULL,
    channel     TEXT NOT NULL,
    defined_by  TEXT NOT NULL,
    defined_at  TEXT NOT NULL
);
