-- Spool mode: where a file's verified copy on local disk is, until it is uploaded.
ALTER TABLE files ADD COLUMN spool_path BLOB;
CREATE INDEX files_spooled ON files (spool_path) WHERE spool_path IS NOT NULL;
