"""The journal store: SQLite in WAL mode with numbered migrations and one writer.

The daemon owns the only writing connection and uses it from the event-loop thread. Other
processes (``dronesync status``) open it read-only; WAL lets them read while the daemon writes.
Commits do not fsync under ``synchronous=NORMAL`` in WAL mode, so a committed change survives a
killed process (only a power cut can lose the last moments); bulk work is grouped with
:meth:`Journal.transaction` so a scan of 100,000 files is a handful of commits.

The daemon also turns on *group commit* (:meth:`Journal.group_commits`): each file's status
changes (hashed, uploading, uploaded) join one open transaction that the service commits
every :data:`GROUP_COMMIT_S`, instead of a commit each. What a kill can lose is therefore the
last fraction of a second of status changes, and every one of those is safe to lose: a file
whose "uploaded" was lost is sent again, and every target recognises a file it already holds.
Writes that come before an action outside the daemon (a target's memo, a dataset's state, the
answer that a card can be removed) commit at once, and everything before them with them.
"""

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from daemon.journal.db import JournalBase, chunks
from daemon.journal.rows import (
    CLOSED_STATES,
    DATASET_COLUMNS,
    DONE_STATUSES,
    FILE_COLUMNS,
    FILE_STATUSES,
    KNOWN_COLUMNS,
    DatasetCounts,
    DatasetRow,
    FileRow,
    HashRecord,
    Known,
    NewFile,
)


class _Original(NamedTuple):
    """A file that a new file with the same hash could be a duplicate of."""

    id: int
    dataset_id: int
    target: str
    uploaded: bool


class Journal(JournalBase):
    """The SQLite journal. Not thread-safe: use it from one thread (the event loop)."""

    # -- datasets --------------------------------------------------------------------------

    @staticmethod
    def _dataset(row: tuple[Any, ...]) -> DatasetRow:
        dataset = DatasetRow(*row)
        return replace(dataset, auto_process=bool(dataset.auto_process))

    def datasets(self) -> list[DatasetRow]:
        """Every dataset, oldest first."""
        self._write_touches()
        rows = self._rows(f"SELECT {DATASET_COLUMNS} FROM datasets ORDER BY id")  # noqa: S608
        return [self._dataset(r) for r in rows]

    def dataset(self, dataset_id: int) -> DatasetRow:
        """The dataset with this id."""
        if self._datasets is not None and (cached := self._datasets.get(dataset_id)):
            return cached
        self._write_touches()
        rows = self._rows(f"SELECT {DATASET_COLUMNS} FROM datasets WHERE id = ?", (dataset_id,))  # noqa: S608
        dataset = self._dataset(rows[0])
        if self._datasets is not None:
            self._datasets[dataset_id] = dataset
        return dataset

    def dataset_by_name(self, name: str) -> DatasetRow | None:
        """The dataset with this name, if any."""
        self._write_touches()
        rows = self._rows(f"SELECT {DATASET_COLUMNS} FROM datasets WHERE name = ?", (name,))  # noqa: S608
        return self._dataset(rows[0]) if rows else None

    def _free_name(self, base: str, generation: int) -> str:
        candidate = base if generation == 1 else f"{base}-{generation}"
        suffix = 1
        while self.dataset_by_name(candidate) is not None:
            suffix += 1
            candidate = f"{base}-{generation}.{suffix}" if generation > 1 else f"{base}.{suffix}"
        return candidate

    def open_dataset(
        self,
        *,
        volume: str,
        folder: bytes,
        name: str,
        target: str,
        source: str,
        auto_process: bool,
        quiet_s: float,
        now: float,
    ) -> DatasetRow:
        """The dataset that takes new files of this folder, created when needed.

        Once a dataset's processing has started it takes no more files: a later file opens
        the next generation, named ``NAME-2``, ``NAME-3``, ... (see README "Datasets").
        """
        latest = self._latest_dataset(volume, folder)
        generation = 1
        base = name
        if latest is not None:
            closed = latest.state in CLOSED_STATES and latest.processing_started_at is not None
            if not closed:
                return latest
            generation = latest.generation + 1
            base = latest.name if latest.generation == 1 else latest.name.rsplit("-", 1)[0]
        cursor = self._write(
            "INSERT INTO datasets (name, target, source, volume, folder, generation,"
            " auto_process, quiet_s, created_at, last_activity_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._free_name(base, generation),
                target,
                source,
                volume,
                folder,
                generation,
                int(auto_process),
                quiet_s,
                now,
                now,
            ),
        )
        dataset_id = int(cursor.lastrowid or 0)
        if self._datasets is not None:
            self._latest[(volume, folder)] = dataset_id
        return self.dataset(dataset_id)

    def _latest_dataset(self, volume: str, folder: bytes) -> DatasetRow | None:
        """The newest generation of the folder's dataset, if it has one.

        The daemon asks for every file it meets; only :meth:`open_dataset` adds a generation,
        so the answer is kept (the row itself comes from the dataset cache).
        """
        known = self._latest.get((volume, folder))
        if known is not None and self._datasets is not None:
            return self.dataset(known)
        self._write_touches()
        rows = self._rows(
            f"SELECT {DATASET_COLUMNS} FROM datasets"  # noqa: S608
            " WHERE volume = ? AND folder = ? ORDER BY generation DESC LIMIT 1",
            (volume, folder),
        )
        if not rows:
            return None
        latest = self._dataset(rows[0])
        if self._datasets is not None:
            self._latest[(volume, folder)] = latest.id
        return latest

    def follow_up(self, dataset: DatasetRow, now: float) -> DatasetRow:
        """The dataset that takes the folder's files once ``dataset`` is processing."""
        return self.open_dataset(
            volume=dataset.volume,
            folder=dataset.folder,
            name=dataset.name,
            target=dataset.target,
            source=dataset.source,
            auto_process=dataset.auto_process,
            quiet_s=dataset.quiet_s,
            now=now,
        )

    def set_dataset_state(
        self, dataset_id: int, state: str, detail: str | None = None, **fields: Any
    ) -> None:
        """Move a dataset to ``state``; extra columns (timestamps, handle) may be set too."""
        assignments = ["state = ?", "detail = ?"]
        params: list[Any] = [state, detail]
        for column, value in fields.items():
            assignments.append(f"{column} = ?")
            params.append(value)
        params.append(dataset_id)
        self._write(f"UPDATE datasets SET {', '.join(assignments)} WHERE id = ?", params)  # noqa: S608 (columns are ours)
        self._forget_datasets(dataset_id)
        self.flush()  # processing starts (or an operator is told) right after this

    def set_dataset_detail(self, dataset_id: int, detail: str | None) -> None:
        """Record the latest operator-facing message of a dataset."""
        self._write("UPDATE datasets SET detail = ? WHERE id = ?", (detail, dataset_id))
        self._forget_datasets(dataset_id)

    def touch_dataset(self, dataset_id: int, now: float) -> None:
        """A file of this dataset was added or changed: the quiet period starts again."""
        if self._datasets is None:
            self._write(
                "UPDATE datasets SET last_activity_at = max(last_activity_at, ?) WHERE id = ?",
                (now, dataset_id),
            )
            return
        # Once per file added: the write waits for the group, the cached row changes now.
        self._touched[dataset_id] = max(self._touched.get(dataset_id, now), now)
        cached = self._datasets.get(dataset_id)
        if cached is not None and now > cached.last_activity_at:
            self._datasets[dataset_id] = replace(cached, last_activity_at=now)

    def set_dataset_settings(self, dataset_id: int, *, auto_process: bool, quiet_s: float) -> None:
        """Apply the current source settings (after a reload) to an open dataset."""
        self._write(
            "UPDATE datasets SET auto_process = ?, quiet_s = ? WHERE id = ?",
            (int(auto_process), quiet_s, dataset_id),
        )
        self._forget_datasets(dataset_id)

    def counts(self) -> dict[int, DatasetCounts]:
        """Per-status counts and bytes for every dataset."""
        result: dict[int, DatasetCounts] = {}
        # Two queries, each answered from an index alone (migration 0005): one table scan per
        # count cost 50 ms at 100,000 files, once a second.
        rows = self._conn.execute(
            "SELECT dataset_id, status, count(*), coalesce(sum(size), 0) FROM files"
            " GROUP BY dataset_id, status"
        ).fetchall()
        unhashed_of = dict(
            self._conn.execute(
                "SELECT dataset_id, count(*) FROM files INDEXED BY files_unhashed"
                " WHERE status = 'waiting' AND sha256 IS NULL GROUP BY dataset_id"
            ).fetchall()
        )
        for dataset_id, status, count, size in rows:
            unhashed = unhashed_of.get(dataset_id, 0) if status == "waiting" else 0
            entry = result.setdefault(
                dataset_id, DatasetCounts(dict.fromkeys(FILE_STATUSES, 0), 0, 0, 0)
            )
            entry.files[status] = count
            result[dataset_id] = DatasetCounts(
                entry.files,
                entry.bytes_total + (size if status != "skipped" else 0),
                entry.bytes_uploaded + (size if status in DONE_STATUSES else 0),
                entry.pending_hash + int(unhashed or 0),
            )
        return result

    # -- files -----------------------------------------------------------------------------

    def settled_files(self, volume: str) -> dict[bytes, tuple[int, int]]:
        """The hash cache of one volume, for files with nothing left to do: (size, mtime_ns).

        Hashed and no longer waiting (uploaded, duplicate, skipped, failed): a scan passes over
        such a file while its size and mtime are these. Three columns, not the whole record:
        at 100,000 files this is the larger part of a restart's scan.
        """
        rows = self._conn.execute(
            "SELECT relpath, size, mtime_ns FROM files"
            " WHERE volume = ? AND sha256 IS NOT NULL AND status != 'waiting'",
            (volume,),
        )
        return {relpath: (size, mtime_ns) for relpath, size, mtime_ns in rows}

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
    ) -> FileRow:
        """Store the content hash of a stable file and decide whether it is a duplicate.

        A file already uploaded with the same content only gets its new size and mtime (a FAT
        card's times shift with the time zone). Changed content re-opens it as waiting, in the
        dataset that now takes the folder's files. ``current`` is the file's row when the
        caller has just read it; ``spool_path``, the copy made while hashing, is kept when
        the file waits for upload (the caller deletes it otherwise).
        """
        record = HashRecord(
            current=self.file(file_id) if current is None else current,
            dataset_id=dataset_id,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha256,
            duplicate_scope=duplicate_scope,
            spool_path=spool_path,
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
        if current.sha256 == sha256 and current.status in DONE_STATUSES:
            return {"size": record.size, "mtime_ns": record.mtime_ns}
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

    def forget_unhashed(self, file_id: int) -> None:
        """Drop a file that vanished before it was ever hashed (it was never in any plan)."""
        self._write(
            "DELETE FROM files WHERE id = ? AND sha256 IS NULL AND status = 'waiting'",
            (file_id,),
        )

    def rehash(self, file_id: int, error: str) -> None:
        """The file changed under us: it goes back to the stability gate, not to failed."""
        self._write(
            "UPDATE files SET status = 'waiting', sha256 = NULL, last_error = ? WHERE id = ?",
            (error, file_id),
        )

    def take_uploads(
        self,
        now: float,
        limit: int,
        exclude: Iterable[int],
        busy: Mapping[int, int] | None = None,
    ) -> list[FileRow]:
        """Take up to ``limit`` files for upload: marked uploading (one attempt more) as read.

        The files are hashed, waiting, due, of datasets still collecting, and not in
        ``exclude``. The workers are shared fairly between datasets: each dataset's files
        go in the order they became due, and the next file taken is from the dataset with
        the fewest uploads going (``busy``: uploads in flight by dataset id), so a big card
        does not hold back a small one that arrived after it, and one dataset's files
        failing again and again cannot starve the others.
        """
        busy = busy or {}
        skip = set(exclude)
        due_of: dict[int, list[tuple[float, int]]] = {}
        # The files left out are few (those the workers hold between two quick retries):
        # asked for beyond the limit and dropped here, not in each dataset's query.
        for dataset_id, file_id, due in self._per_dataset(
            "SELECT dataset_id, id, next_attempt_at FROM files INDEXED BY files_due_dataset"
            " WHERE dataset_id = ? AND status = 'waiting' AND sha256 IS NOT NULL"
            " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (now, limit + len(skip)),
        ):
            if file_id not in skip:
                due_of.setdefault(dataset_id, []).append((due, file_id))
        candidates = [
            (busy.get(dataset_id, 0) + rank, due, file_id)
            for dataset_id, files in due_of.items()
            for rank, (due, file_id) in enumerate(sorted(files))
        ]
        chosen = [file_id for _, _, file_id in sorted(candidates)[:limit]]
        if not chosen:
            return []
        _, rows = self._write_fetch(
            "UPDATE files SET status = 'uploading', attempts = attempts + 1"  # noqa: S608
            # +status: a lookup by id, not a walk of every waiting file by the status index.
            " WHERE id IN (SELECT value FROM json_each(?)) AND +status = 'waiting'"
            f" RETURNING {FILE_COLUMNS}",
            (json.dumps(chosen),),
        )
        taken = [FileRow(*row) for row in rows]
        order = {file_id: n for n, file_id in enumerate(chosen)}
        # RETURNING gives the rows in no promised order: put them back in the order chosen.
        taken.sort(key=lambda row: order[row.id])
        return taken

    def next_due(self, exclude: Iterable[int] = ()) -> float | None:
        """When the earliest parked file not in ``exclude`` is due (None: nothing parked)."""
        skip = set(exclude)
        dues = [
            float(due)
            for _, file_id, due in self._per_dataset(
                "SELECT dataset_id, id, next_attempt_at FROM files INDEXED BY files_due_dataset"
                " WHERE dataset_id = ? AND status = 'waiting' AND sha256 IS NOT NULL"
                " ORDER BY next_attempt_at, id LIMIT ?",
                (1 + len(skip),),
            )
            if file_id not in skip
        ]
        return min(dues, default=None)

    def _per_dataset(self, select: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """``select`` (its first parameter a dataset id) for each dataset still collecting.

        One statement for all, each dataset's part answered from its own range of the index:
        one round trip however many datasets are open, and one statement shape per count.
        """
        ids = [
            row[0]
            for row in self._rows(
                "SELECT id FROM datasets WHERE state IN ('collecting', 'ready') ORDER BY id"
            )
        ]
        rows: list[tuple[Any, ...]] = []
        for chunk in chunks(ids):  # below SQLite's limit on a compound statement
            # ``select`` is one of this module's constant statements, never input.
            sql = " UNION ALL ".join([f"SELECT * FROM ({select})"] * len(chunk))  # noqa: S608
            rows.extend(self._rows(sql, [v for i in chunk for v in (i, *params)]))
        return rows

    def troubles(self) -> dict[int, dict[str, tuple[int, str]]]:
        """Files retrying or failed, by dataset: for each, how many and the latest error.

        What the dataset line of ``status`` shows ("6 retrying: ...", "2 failed: ...");
        "retrying" are the files waiting after a failed attempt.
        """
        rows = self._rows(
            "SELECT dataset_id, status, count(*), last_error, max(next_attempt_at) FROM files"
            " WHERE status IN ('waiting', 'failed') AND last_error IS NOT NULL"
            " AND (status = 'failed' OR attempts > 0)"
            " GROUP BY dataset_id, status"
        )
        result: dict[int, dict[str, tuple[int, str]]] = {}
        for dataset_id, status, count, error, _ in rows:
            kind = "retrying" if status == "waiting" else "failed"
            result.setdefault(dataset_id, {})[kind] = (count, error)
        return result

    def mark_uploading(self, file_id: int) -> None:
        """Another attempt of a file taken earlier (:meth:`take_uploads`) begins."""
        self._write(
            "UPDATE files SET status = 'uploading', attempts = attempts + 1 WHERE id = ?",
            (file_id,),
        )

    def mark_uploaded(self, file_id: int, remote_key: bytes, now: float) -> None:
        """The target confirmed the file (and made it durable): its copy is no longer needed.

        The copy in the spool or staging is forgotten here, in the same write; the caller
        deletes the file (a copy left by a crash is deleted at the next start).
        """
        self._write(
            "UPDATE files SET status = 'uploaded', remote_key = ?, uploaded_at = ?,"
            " last_error = NULL, spool_path = NULL WHERE id = ?",
            (remote_key, now, file_id),
        )

    def mark_all_uploaded(self, uploads: list[tuple[FileRow, bytes]], now: float) -> None:
        """:meth:`mark_uploaded` for a batch of (file, remote key), in few statements.

        Files stored under their own path (nearly all) take a few statements for all.
        """
        own = [row.id for row, key in uploads if key == row.dspath]
        for chunk in chunks(own):
            marks = ", ".join("?" * len(chunk))
            self._write(
                "UPDATE files SET status = 'uploaded', remote_key = dspath, uploaded_at = ?,"  # noqa: S608
                f" last_error = NULL, spool_path = NULL WHERE id IN ({marks})",
                (now, *chunk),
            )
        for row, key in uploads:
            if key != row.dspath:  # renamed on the target (NAME~2.JPG)
                self.mark_uploaded(row.id, key, now)

    def mark_retry(self, file_id: int, error: str, next_attempt_at: float) -> None:
        """A transient failure: park the file until ``next_attempt_at``."""
        self._write(
            "UPDATE files SET status = 'waiting', last_error = ?, next_attempt_at = ? WHERE id = ?",
            (error, next_attempt_at, file_id),
        )

    def mark_skipped(self, file_id: int, reason: str, sha256: str) -> None:
        """Not sent, on purpose (an empty file): the reason is shown as its last error."""
        self._write(
            "UPDATE files SET status = 'skipped', last_error = ?, sha256 = ?, spool_path = NULL"
            " WHERE id = ?",
            (reason, sha256, file_id),
        )

    def mark_failed(self, file_id: int, error: str) -> None:
        """Attempts exhausted or a permanent error; ``retry`` brings it back."""
        self._write(
            "UPDATE files SET status = 'failed', last_error = ? WHERE id = ?", (error, file_id)
        )

    def release(self, file_id: int) -> None:
        """An upload was interrupted (stop, cancel): back to waiting, attempt not counted."""
        self._write(
            "UPDATE files SET status = 'waiting', attempts = max(attempts - 1, 0)"
            " WHERE id = ? AND status = 'uploading'",
            (file_id,),
        )

    def recover(self) -> int:
        """After a crash: files left uploading go back to waiting. Returns how many.

        A crash or a power cut is not the file's fault: the attempt it was on is not counted.
        """
        return self._write(
            "UPDATE files SET status = 'waiting', attempts = max(attempts - 1, 0)"
            " WHERE status = 'uploading'"
        ).rowcount

    def make_due(self) -> int:
        """Parked files become due now (a start or reload often means "I fixed it")."""
        return self._write(
            "UPDATE files SET next_attempt_at = 0 WHERE status = 'waiting' AND next_attempt_at > 0"
        ).rowcount

    def retry_failed(self, dataset_id: int | None) -> int:
        """Failed files (of one dataset, or all) go back to waiting with fresh attempts."""
        sql = (
            "UPDATE files SET status = 'waiting', attempts = 0, next_attempt_at = 0,"
            " last_error = NULL WHERE status = 'failed'"
        )
        params: tuple[Any, ...] = ()
        if dataset_id is not None:
            sql += " AND dataset_id = ?"
            params = (dataset_id,)
        return self._write(sql, params).rowcount

    def move_unfinished(self, from_dataset: int, to_dataset: int) -> int:
        """Files not yet uploaded follow the folder into its next dataset."""
        return self._write(
            "UPDATE files SET dataset_id = ? WHERE dataset_id = ?"
            " AND status IN ('waiting', 'uploading', 'failed')",
            (to_dataset, from_dataset),
        ).rowcount

    def uploaded_keys(self, dataset_id: int) -> list[bytes]:
        """Remote keys of the dataset's uploaded files (what processing gets)."""
        rows = self._conn.execute(
            "SELECT remote_key FROM files WHERE dataset_id = ? AND status = 'uploaded' ORDER BY id",
            (dataset_id,),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def uploaded_since(self, since: float) -> list[tuple[int, float, int]]:
        """(dataset id, uploaded_at, size) of files uploaded after ``since``: for rates."""
        rows = self._conn.execute(
            "SELECT dataset_id, uploaded_at, size FROM files WHERE uploaded_at > ?"
            " AND status = 'uploaded'",
            (since,),
        ).fetchall()
        return [(int(a), float(b), int(c)) for a, b, c in rows]

    # -- what targets remember ---------------------------------------------------------------

    def get_memo(self, dataset_id: int, key: str) -> str | None:
        """A value a target stored for the dataset (a project id, a task uuid), or None."""
        row = self._conn.execute(
            "SELECT value FROM target_memos WHERE dataset_id = ? AND key = ?", (dataset_id, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def put_memo(self, dataset_id: int, key: str, value: str | None) -> None:
        """Store (or with None, forget) a target's value for the dataset; committed at once."""
        if value is None:
            self._write(
                "DELETE FROM target_memos WHERE dataset_id = ? AND key = ?", (dataset_id, key)
            )
        else:
            self._write(
                "INSERT INTO target_memos (dataset_id, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (dataset_id, key) DO UPDATE SET value = excluded.value",
                (dataset_id, key, value),
            )
        self.flush()  # the target acts on the remote side right after this

    def memos(self, dataset_id: int, prefix: str) -> dict[str, str]:
        """Every stored value of the dataset whose key starts with ``prefix``."""
        rows = self._conn.execute(
            "SELECT key, value FROM target_memos WHERE dataset_id = ? AND substr(key, 1, ?) = ?",
            (dataset_id, len(prefix), prefix),
        ).fetchall()
        return {str(k): str(v) for k, v in rows}

    def memo_of_every_dataset(self, key: str) -> dict[int, str]:
        """The value stored under ``key``, by dataset, for every dataset that has one."""
        rows = self._conn.execute(
            "SELECT dataset_id, value FROM target_memos WHERE key = ?", (key,)
        ).fetchall()
        return {int(dataset_id): str(value) for dataset_id, value in rows}

    def requeue_uploaded(self, dataset_id: int, reason: str) -> int:
        """The target lost the dataset: its uploaded files go back to waiting, due at once.

        The reason becomes each file's last error and the dataset's detail, so the operator
        sees why files that were uploaded are being sent again.
        """
        with self.transaction():
            count = self._write(
                "UPDATE files SET status = 'waiting', remote_key = NULL, uploaded_at = NULL,"
                " attempts = 0, next_attempt_at = 0, last_error = ?"
                " WHERE dataset_id = ? AND status IN ('uploaded', 'uploading')",
                (reason, dataset_id),
            ).rowcount
            self.set_dataset_detail(dataset_id, f"{reason}; {count} file(s) are sent again")
        return count

    def file_count(self, dataset_id: int) -> int:
        """How many files the dataset sends, at least: hashed, not duplicate, skipped or failed.

        A file not hashed yet may still turn out to be a duplicate: it is not counted. Both
        counts come from indexes alone.
        """
        row = self._conn.execute(
            "SELECT (SELECT count(*) FROM files INDEXED BY files_counts WHERE dataset_id = ?"
            "        AND status IN ('waiting', 'uploading', 'uploaded'))"
            " - (SELECT count(*) FROM files INDEXED BY files_unhashed WHERE dataset_id = ?"
            "    AND status = 'waiting' AND sha256 IS NULL)",
            (dataset_id, dataset_id),
        ).fetchone()
        return int(row[0])

    # -- spool ---------------------------------------------------------------------------------

    def set_spool(self, file_id: int, path: bytes | None) -> None:
        """Record (or with None, forget) the file's verified copy in the spool."""
        self._write("UPDATE files SET spool_path = ? WHERE id = ?", (path, file_id))

    def spooled(self) -> list[tuple[int, bytes, int, str]]:
        """(id, spool path, size, status) of every file with a copy in the spool."""
        rows = self._conn.execute(
            "SELECT id, spool_path, size, status FROM files WHERE spool_path IS NOT NULL"
        ).fetchall()
        return [(int(a), bytes(b), int(c), str(d)) for a, b, c, d in rows]

    def left_on(self, volume: str, *, failed: bool = True) -> dict[int, int]:
        """Files still needed from ``volume`` (not sent, not spooled), by dataset.

        ``failed``: count failed files too (a retry reads them from the card again).
        """
        statuses = "('waiting', 'uploading', 'failed')" if failed else "('waiting', 'uploading')"
        rows = self._conn.execute(
            f"SELECT dataset_id, count(*) FROM files WHERE volume = ? AND status IN {statuses}"  # noqa: S608 (constant)
            " AND spool_path IS NULL GROUP BY dataset_id",
            (volume,),
        ).fetchall()
        return {int(a): int(b) for a, b in rows}
