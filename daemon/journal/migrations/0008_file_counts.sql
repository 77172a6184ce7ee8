-- Per-dataset file counts, kept as files change instead of counted over every file. A box
-- keeps every file it ever saw: with a year of history (a million files) a count over the
-- files table read all of them, once a second in the daemon and at each `status`.
--
-- One row per (dataset, status, hashed): how many files and their bytes. The triggers keep it
-- in the same transaction as the change of the file, whatever statement made it, so the
-- counts are as durable and as atomic as the statuses themselves.
CREATE TABLE file_counts (
    dataset_id  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    hashed      INTEGER NOT NULL,           -- sha256 IS NOT NULL
    files       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, status, hashed)
) WITHOUT ROWID;

INSERT INTO file_counts (dataset_id, status, hashed, files, bytes)
    SELECT dataset_id, status, sha256 IS NOT NULL, count(*), coalesce(sum(size), 0)
    FROM files GROUP BY dataset_id, status, sha256 IS NOT NULL;

CREATE TRIGGER file_counts_insert AFTER INSERT ON files BEGIN
    INSERT INTO file_counts (dataset_id, status, hashed, files, bytes)
        VALUES (new.dataset_id, new.status, new.sha256 IS NOT NULL, 1, new.size)
        ON CONFLICT DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER file_counts_delete AFTER DELETE ON files BEGIN
    UPDATE file_counts SET files = files - 1, bytes = bytes - old.size
        WHERE dataset_id = old.dataset_id AND status = old.status
        AND hashed = (old.sha256 IS NOT NULL);
END;

-- Only a change of what is counted costs the two statements (a retry's new error does not).
CREATE TRIGGER file_counts_update AFTER UPDATE OF dataset_id, status, size, sha256 ON files
    WHEN old.dataset_id != new.dataset_id OR old.status != new.status OR old.size != new.size
        OR (old.sha256 IS NULL) != (new.sha256 IS NULL)
BEGIN
    UPDATE file_counts SET files = files - 1, bytes = bytes - old.size
        WHERE dataset_id = old.dataset_id AND status = old.status
        AND hashed = (old.sha256 IS NOT NULL);
    INSERT INTO file_counts (dataset_id, status, hashed, files, bytes)
        VALUES (new.dataset_id, new.status, new.sha256 IS NOT NULL, 1, new.size)
        ON CONFLICT DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
END;

-- The daemon looks at the datasets with work left several times a second: a year of
-- processed ones is not read for it.
CREATE INDEX datasets_state ON datasets (state);
