-- Queries that ran once per file or once a second, and read the whole files table as it
-- grew (100,000 files on a card: 20 ms each, 36 KB of the journal read per file uploaded).
--
-- File counts: the processing controller counts every dataset's files once a second, and
-- `status` on demand. Without these indexes each count read the whole files table (at
-- 100,000 files, 50 ms of CPU and 30 MB read per count); with them, two small indexes.
CREATE INDEX files_counts ON files (dataset_id, status, size);
CREATE INDEX files_unhashed ON files (dataset_id) WHERE status = 'waiting' AND sha256 IS NULL;

-- The upload queue: files hashed and waiting, by when they are due. The dispatcher asks for
-- the next few after every upload; through files_queue it stepped over every file not yet
-- hashed (a whole card of them while its first files upload).
CREATE INDEX files_due ON files (next_attempt_at, id) WHERE status = 'waiting' AND sha256 IS NOT NULL;
