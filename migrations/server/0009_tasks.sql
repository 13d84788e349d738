-- Tasks (issue 18): a question the field asks that becomes a model of its own, trained on
-- the embeddings of an existing model's backbone. `labels` is a JSON array of strings;
-- `multi_label` 0/1; `channel` is where a candidate that passes the new-task gate goes.
CREATE TABLE tasks (
    name        TEXT PRIMARY KEY,
    backbone    TEXT NOT NULL,
    labels      TEXT NOT NULL,
    multi_label INTEGER NOT NULL,
    channel     TEXT NOT NULL,
    defined_by  TEXT NOT NULL,
    defined_at  TEXT NOT NULL
);
