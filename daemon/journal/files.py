"""Files: what the scanner knows of a volume, reading file rows, and adding new files."""

from __future__ import annotations

import sys

from daemon.journal.datasets import Datasets
from daemon.journal.db import chunks
from daemon.journal.rows import FILE_COLUMNS, KNOWN_COLUMNS, FileRow, Known, NewFile


class Files(Datasets):
    """The file rows: the scanner's view of a volume, reads by id or dataset, new files."""

    def folder_files(self, volume: str, folder: bytes) -> dict[bytes, tuple[int, int, bool]]:
        """The files recorded directly in one folder of the volume: size, mtime_ns, settled.

        Settled: hashed, nothing left to do (uploaded, duplicate, skipped, failed). A scan asks
        folder by folder, so what it holds is one folder's files, not every file the volume
        (a card slot used for a year) ever held; the unique (volume, relpath) index answers it
        as one range.
        """
        columns = "relpath, size, mtime_ns, sha256 IS NOT NULL AND status != 'waiting'"
        if folder:  # '0' follows '/': the range of the paths under ``folder/``
            rows = self._conn.execute(
                f"SELECT {columns} FROM files WHERE volume = ? AND relpath >= ? AND relpath < ?",  # noqa: S608
                (volume, folder + b"/", folder + b"0"),
            )
        else:  # the top of the volume: paths without a slash (files of a "single" source)
            rows = self._conn.execute(
                f"SELECT {columns} FROM files WHERE volume = ? AND instr(relpath, x'2f') = 0",  # noqa: S608
                (volume,),
            )
        start = len(folder) + 1 if folder else 0
        return {
            bytes(relpath): (size, mtime_ns, bool(done))
            for relpath, size, mtime_ns, done in rows
            if b"/" not in relpath[start:]
        }

    def open_files(self, volume: str) -> dict[bytes, Known]:
        """The volume's files with work left (waiting, or never hashed), by relative path."""
        rows = self._conn.execute(
            f"SELECT {KNOWN_COLUMNS} FROM files INDEXED BY files_queue"  # noqa: S608
            " WHERE status = 'waiting' AND volume = ?"
            f" UNION ALL SELECT {KNOWN_COLUMNS} FROM files INDEXED BY files_hash"
            " WHERE sha256 IS NULL AND status != 'waiting' AND volume = ?",
            (volume, volume),
        ).fetchall()
        # The status last, as one shared string: each row read has its own copy otherwise.
        return {r[0]: Known._make((*r[1:-1], sys.intern(r[-1]))) for r in rows}

    def known_file(self, volume: str, relpath: bytes) -> Known | None:
        """What was recorded for one file of the volume, if anything."""
        row = self._conn.execute(
            f"SELECT {KNOWN_COLUMNS} FROM files WHERE volume = ? AND relpath = ?",  # noqa: S608
            (volume, relpath),
        ).fetchone()
        return None if row is None else Known._make(row[1:])

    def file(self, file_id: int) -> FileRow:
        """The file with this id (IndexError if the journal has none)."""
        row = self.find_file(file_id)
        if row is None:
            raise IndexError(f"no file {file_id} in the journal")
        return row

    def find_file(self, file_id: int) -> FileRow | None:
        """The file with this id, or None once it is forgotten (it vanished unhashed)."""
        rows = self._rows(f"SELECT {FILE_COLUMNS} FROM files WHERE id = ?", (file_id,))  # noqa: S608
        return FileRow(*rows[0]) if rows else None

    def find_files(self, file_ids: list[int]) -> dict[int, FileRow]:
        """The files with these ids that the journal still has, in a few queries."""
        found: dict[int, FileRow] = {}
        for chunk in chunks(file_ids):
            marks = ", ".join("?" * len(chunk))
            for row in self._rows(
                f"SELECT {FILE_COLUMNS} FROM files WHERE id IN ({marks})",  # noqa: S608
                chunk,
            ):
                found[row[0]] = FileRow(*row)
        return found

    def files(self, dataset_id: int) -> list[FileRow]:
        """Every file of a dataset, in path order."""
        rows = self._rows(
            f"SELECT {FILE_COLUMNS} FROM files WHERE dataset_id = ? ORDER BY dspath",  # noqa: S608
            (dataset_id,),
        )
        return [FileRow(*r) for r in rows]

    def files_page(
        self, dataset_id: int, status: str | None, offset: int, limit: int
    ) -> list[FileRow]:
        """One page of a dataset's files (of one status, if given), in path order."""
        where = "dataset_id = ?" + (" AND status = ?" if status else "")
        params = (dataset_id, status) if status else (dataset_id,)
        rows = self._rows(
            f"SELECT {FILE_COLUMNS} FROM files WHERE {where}"  # noqa: S608
            " ORDER BY dspath LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [FileRow(*r) for r in rows]

    def oldest_waiting(self) -> float | None:
        """When the file waiting longest was found, or None when none waits."""
        row = self._conn.execute(
            "SELECT min(discovered_at) FROM files WHERE status = 'waiting'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def duplicate_bytes(self) -> dict[int, int]:
        """Bytes of the duplicate files, by dataset: what counts' done bytes hold but no upload."""
        rows = self._conn.execute(
            "SELECT dataset_id, sum(bytes) FROM file_counts"
            " WHERE status = 'duplicate' AND files > 0 GROUP BY dataset_id"
        ).fetchall()
        return {int(dataset_id): int(total) for dataset_id, total in rows}

    def add_file(
        self,
        *,
        dataset_id: int,
        volume: str,
        relpath: bytes,
        dspath: bytes,
        size: int,
        mtime_ns: int,
        now: float,
    ) -> int:
        """Record a newly seen file as waiting (not yet hashed); returns its id."""
        return self.add_files([NewFile(dataset_id, volume, relpath, dspath, size, mtime_ns)], now)[
            0
        ]

    def add_files(self, new: list[NewFile], now: float) -> list[int]:
        """:meth:`add_file` for many files, in a few statements (:data:`CHUNK_SIZES`).

        Returns their ids, in the order given. A scan of a card meets thousands of new files
        at once, and every statement is event-loop time taken from handing files to the
        hashing processes and uploads to their threads.
        """
        ids: dict[tuple[str, bytes], int] = {}
        for chunk in chunks(new):
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            params = [value for file in chunk for value in (*file, now)]
            _, rows = self._write_fetch(
                "INSERT INTO files (dataset_id, volume, relpath, dspath, size, mtime_ns,"  # noqa: S608
                f" discovered_at) VALUES {values} RETURNING id, volume, relpath",
                params,
            )
            # RETURNING gives the rows in no promised order: matched by their unique key.
            ids.update(((volume, relpath), file_id) for file_id, volume, relpath in rows)
        for dataset_id in {file.dataset_id for file in new}:
            self.touch_dataset(dataset_id, now)
        return [ids[file.volume, file.relpath] for file in new]

    def forget_unhashed(self, file_id: int) -> None:
        """Drop a file that vanished before it was ever hashed (it was never in any plan)."""
        self._write(
            "DELETE FROM files WHERE id = ? AND sha256 IS NULL AND status = 'waiting'",
            (file_id,),
        )

    def rehash(self, file_id: int, error: str) -> None:
        """The file changed under us: it goes back to the stability gate, not to failed."""
        self._write(
            "UPDATE files SET status = 'waiting', sha256 = NULL, seal = NULL, last_error = ?"
            " WHERE id = ?",
            (error, file_id),
        )

    def file_count(self, dataset_id: int) -> int:
        """How many files the dataset sends, at least: hashed, not duplicate, skipped or failed.

        A file not hashed yet may still turn out to be a duplicate: it is not counted.
        """
        row = self._conn.execute(
            "SELECT coalesce(sum(files), 0) FROM file_counts WHERE dataset_id = ?"
            " AND status IN ('waiting', 'uploading', 'uploaded')"
            " AND NOT (status = 'waiting' AND hashed = 0)",
            (dataset_id,),
        ).fetchone()
        return int(row[0])
