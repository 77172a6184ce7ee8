-- What a target remembers about a dataset across restarts: a project id, a task uuid, the
-- credentials-free facts it needs to resume into the same remote container after a crash.

CREATE TABLE target_memos (
    dataset_id  INTEGER NOT NULL REFERENCES datasets (id),
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (dataset_id, key)
);
