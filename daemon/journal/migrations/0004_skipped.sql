-- A file can be "skipped": taken by the filters but not sent, with the reason in last_error
-- (an empty file, a file whose content is not the image its name says).
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt.

CREATE TABLE files_next (
    id              INTEGER PRIMARY KEY,
    dataset_id      INTEGER NOT NULL REFERENCES datasets (id),
    volume          TEXT NOT NULL,
    relpath         BLOB NOT NULL,
    dspath          BLOB NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    sha256          TEXT,
    status          TEXT NOT NULL DEFAULT 'waiting' CHECK (status IN
                    ('waiting', 'uploading', 'uploaded', 'duplicate', 'failed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    remote_key      BLOB,
    duplicate_of    INTEGER REFERENCES files (id),
    discovered_at   REAL NOT NULL,
    uploaded_at     REAL,
    spool_path      BLOB,
    UNIQUE (volume, relpath)
);
INSERT INTO files_next SELECT id, dataset_id, volume, relpath, dspath, size, mtime_ns, sha256,
    status, attempts, last_error, next_attempt_at, remote_key, duplicate_of, discovered_at,
    uploaded_at, spool_path FROM files;
DROP TABLE files;
ALTER TABLE files_next RENAME TO files;
CREATE INDEX files_queue ON files (status, next_attempt_at);
CREATE INDEX files_dataset ON files (dataset_id, status);
CREATE INDEX files_hash ON files (sha256);
CREATE INDEX files_spooled ON files (spool_path) WHERE spool_path IS NOT NULL;
