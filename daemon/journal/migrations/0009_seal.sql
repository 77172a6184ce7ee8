-- A file's seal (daemon.hashing.seal_of): boot, device, inode, size, mtime and ctime of the
-- file an upload reads, as they were when it was hashed. An upload that finds the file still
-- sealed so sends it without hashing it again; NULL (every file recorded before, and any file
-- on a filesystem where a seal proves nothing) hashes as it sends, as before.
ALTER TABLE files ADD COLUMN seal INTEGER;
