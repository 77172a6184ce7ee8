"""Hashes: recording a file's content hash, and deciding whether it is a duplicate."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from daemon.journal.db import chunks
from daemon.journal.files import Files
from daemon.journal.rows import DONE_STATUSES, FileRow, HashRecord


class _Original(NamedTuple):
    """A file that a new file with the same hash could be a duplicate of."""

    id: int
    dataset_id: int
    target: str
    uploaded: bool


class Hashes(Files):
    """Hashes recorded a batch at a time, each file checked against the possible originals."""

    def record_hash(
        self,
        file_id: int,
        *,
        dataset_id: int,
        size: int,
        mtime_ns: int,
        sha256: str,
        duplicate_scope: str,
        now: float,
        current: FileRow | None = None,
        spool_path: bytes | None = None,
        seal: int | None = None,
    ) -> FileRow:
        """Store the content hash of a stable file and decide whether it is a duplicate.

        A file already uploaded with the same content only gets its new size and mtime (a FAT
        card's times shift with the time zone). Changed content re-opens it as waiting, in the
        dataset that now takes the folder's files. ``current`` is the file's row when the
        caller has just read it; ``spool_path``, the copy made while hashing, is kept when
        the file waits for upload (the caller deletes it otherwise). ``seal`` is the read
        file's (:func:`daemon.hashing.seal_of`); without one, the recorded one stays.
        """
        record = HashRecord(
            current=self.file(file_id) if current is None else current,
            dataset_id=dataset_id,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha256,
            duplicate_scope=duplicate_scope,
            spool_path=spool_path,
            seal=seal,
        )
        return self.record_hashes([record], now)[0]

    def record_hashes(self, records: list[HashRecord], now: float) -> list[FileRow]:
        """:meth:`record_hash` for a batch of files: the rows as they are now, in order.

        Each file is decided as one call of ``record_hash`` after another would decide it (a
        file can be the duplicate of one recorded before it in the same batch), but the
        originals are looked up in one query and the rows written in a few statements for the
        whole batch, not two statements per file.
        """
        originals = self._originals([record.sha256 for record in records])
        changes: list[tuple[int, dict[str, Any]]] = []
        recorded: list[FileRow] = []
        with self.transaction():
            for record in records:
                current = record.current
                values = self._hash_values(record, originals, now)
                changed = {k: v for k, v in values.items() if getattr(current, k) != v}
                if changed:
                    changes.append((current.id, changed))
                recorded.append(replace(current, **changed))
            self._update_files(changes)
        return recorded

    def _hash_values(
        self, record: HashRecord, originals: dict[str, list[_Original]], now: float
    ) -> dict[str, Any]:
        """What recording ``record`` sets; keeps ``originals`` true for the records after it."""
        current, sha256 = record.current, record.sha256
        # A seal proves itself against the file when an upload opens it: the recorded one
        # stays, for the same content, until a read gives a new one.
        seal = record.seal
        if seal is None and current.sha256 == sha256:
            seal = current.seal
        if current.sha256 == sha256 and current.status in DONE_STATUSES:
            return {"size": record.size, "mtime_ns": record.mtime_ns, "seal": seal}
        dataset = self.dataset(record.dataset_id)
        in_scope = [
            found
            for found in originals.get(sha256, ())
            if found.id != current.id
            and (
                found.target == dataset.target
                if record.duplicate_scope == "target"
                else found.dataset_id == dataset.id
            )
        ]
        # As _original_of's ORDER BY: an uploaded original first, then the oldest.
        best = min(in_scope, key=lambda found: (not found.uploaded, found.id), default=None)
        original = None if best is None else best.id
        if current.sha256 is not None and current.sha256 != sha256:
            self.touch_dataset(dataset.id, now)
        if current.sha256 is not None:  # its old content can no longer be anyone's original
            kept = originals.get(current.sha256, [])
            kept[:] = [found for found in kept if found.id != current.id]
        if original is None and dataset.state != "cancelled":
            originals.setdefault(sha256, []).append(
                _Original(current.id, dataset.id, dataset.target, uploaded=False)
            )
        return {
            "dataset_id": dataset.id,
            "size": record.size,
            "mtime_ns": record.mtime_ns,
            "sha256": sha256,
            "status": "duplicate" if original else "waiting",
            "spool_path": record.spool_path
            if record.spool_path and not original
            else current.spool_path,
            "duplicate_of": original,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": 0,
            "remote_key": None,
            "uploaded_at": None,
            "seal": seal,
        }

    def _originals(self, hashes: list[str]) -> dict[str, list[_Original]]:
        """The files each of these hashes could be a duplicate of, whatever the scope."""
        found: dict[str, list[_Original]] = {}
        unique = list(dict.fromkeys(hashes))
        for chunk in chunks(unique):
            marks = ", ".join("?" * len(chunk))
            # Through the hash's index, named: with a dataset's scope the planner would rather
            # take files_counts (dataset, status), and read every file of the dataset for each
            # hash recorded: 5 ms a file at 20,000 files, a card's ingest quadratic in its size.
            for file_id, sha256, dataset_id, target, uploaded in self._rows(
                "SELECT f.id, f.sha256, f.dataset_id, d.target, f.status = 'uploaded'"  # noqa: S608
                " FROM files f INDEXED BY files_hash JOIN datasets d ON d.id = f.dataset_id"
                f" WHERE f.sha256 IN ({marks}) AND f.duplicate_of IS NULL"
                " AND f.status IN ('waiting', 'uploading', 'uploaded') AND d.state != 'cancelled'",
                chunk,
            ):
                found.setdefault(sha256, []).append(
                    _Original(file_id, dataset_id, target, bool(uploaded))
                )
        return found

    def _update_files(self, changes: list[tuple[int, dict[str, Any]]]) -> None:
        """Set each file's changed columns: a few statements per set of columns changed.

        Only changed columns are named: SQLite rewrites every index over a column in the SET
        list, changed or not, and the files table has six (a hash's update touched them all).
        """
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for file_id, changed in changes:
            groups.setdefault(tuple(changed), []).append((file_id, *changed.values()))
        for columns, rows in groups.items():
            single = ", ".join(f"{column} = ?" for column in columns)
            marks = "(" + ", ".join("?" * (len(columns) + 1)) + ")"
            assignments = ", ".join(
                f"{column} = v.column{n}" for n, column in enumerate(columns, start=2)
            )
            for chunk in chunks(rows):
                if len(chunk) == 1:  # the plain form: a VALUES table costs more for one row
                    file_id, *values = chunk[0]
                    self._write(
                        f"UPDATE files SET {single} WHERE id = ?",  # noqa: S608 (columns are ours)
                        (*values, file_id),
                    )
                    continue
                self._write(
                    f"UPDATE files SET {assignments}"  # noqa: S608 (columns are ours)
                    f" FROM (VALUES {', '.join([marks] * len(chunk))}) AS v"
                    " WHERE files.id = v.column1",
                    [value for row in chunk for value in row],
                )
