-- The journal: every dataset and every file the daemon has seen, with its status.
-- Paths are stored as bytes (BLOB) because file names on a card need not be UTF-8.

CREATE TABLE datasets (
    id                  INTEGER PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    target              TEXT NOT NULL,
    source              TEXT NOT NULL,          -- the configured source path
    volume              TEXT NOT NULL,          -- the folder or card the files live on
    folder              BLOB NOT NULL,          -- the dataset folder, relative to the volume
    generation          INTEGER NOT NULL DEFAULT 1,  -- 2, 3, ... for files after processing began
    state               TEXT NOT NULL DEFAULT 'collecting' CHECK (state IN
                        ('collecting', 'ready', 'processing', 'processed', 'failed',
                         'cancelled', 'paused')),
    auto_process        INTEGER NOT NULL DEFAULT 1,
    quiet_s             REAL NOT NULL,
    created_at          REAL NOT NULL,
    last_activity_at    REAL NOT NULL,           -- a file was added or changed
    processing_started_at   REAL,
    processing_finished_at  REAL,
    processing_handle   TEXT,                    -- what the target needs to poll it
    detail              TEXT                     -- the last thing worth telling the operator
);
CREATE INDEX datasets_folder ON datasets (volume, folder, generation);

CREATE TABLE files (
    id              INTEGER PRIMARY KEY,
    dataset_id      INTEGER NOT NULL REFERENCES datasets (id),
    volume          TEXT NOT NULL,
    relpath         BLOB NOT NULL,              -- relative to the volume: the hash-cache key
    dspath          BLOB NOT NULL,              -- relative to the dataset folder: the target key
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    sha256          TEXT,                       -- NULL until the file is stable and hashed
    status          TEXT NOT NULL DEFAULT 'waiting' CHECK (status IN
                    ('waiting', 'uploading', 'uploaded', 'duplicate', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    remote_key      BLOB,                        -- where the target stored it
    duplicate_of    INTEGER REFERENCES files (id),
    discovered_at   REAL NOT NULL,
    uploaded_at     REAL,
    UNIQUE (volume, relpath)
);
CREATE INDEX files_queue ON files (status, next_attempt_at);
CREATE INDEX files_dataset ON files (dataset_id, status);
CREATE INDEX files_hash ON files (sha256);
