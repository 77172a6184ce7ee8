"""Datasets: the files of one folder that are processed together, and their generations."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from daemon.journal.db import JournalBase, chunks
from daemon.journal.rows import (
    CLOSED_STATES,
    DATASET_COLUMNS,
    DONE_STATUSES,
    FILE_STATUSES,
    DatasetCounts,
    DatasetRow,
)


class Datasets(JournalBase):
    """Reading, opening and moving datasets; the rows are cached by the one writer."""

    @staticmethod
    def _dataset(row: tuple[Any, ...]) -> DatasetRow:
        dataset = DatasetRow(*row)
        return replace(dataset, auto_process=bool(dataset.auto_process))

    def datasets(self, states: Sequence[str] | None = None) -> list[DatasetRow]:
        """Every dataset (or those in these states), oldest first."""
        self._write_touches()
        if states is None:
            rows = self._rows(f"SELECT {DATASET_COLUMNS} FROM datasets ORDER BY id")  # noqa: S608
        else:
            marks = ", ".join("?" * len(states))
            rows = self._rows(
                f"SELECT {DATASET_COLUMNS} FROM datasets"  # noqa: S608
                f" WHERE state IN ({marks}) ORDER BY id",
                states,
            )
        return [self._dataset(r) for r in rows]

    def current_datasets(self, since: float) -> list[DatasetRow]:
        """The datasets ``status`` lists without ``--all``, oldest first.

        Those in an active state, failed, holding failed files, or changed after ``since``:
        history (processed or cancelled long ago) is not read.
        """
        self._write_touches()
        rows = self._rows(
            f"SELECT {DATASET_COLUMNS} FROM datasets"  # noqa: S608
            " WHERE state IN ('collecting', 'ready', 'processing', 'paused', 'failed')"
            " OR max(created_at, last_activity_at, coalesce(processing_started_at, 0),"
            "        coalesce(processing_finished_at, 0)) > ?"
            " OR id IN (SELECT dataset_id FROM file_counts WHERE status = 'failed' AND files > 0)"
            " ORDER BY id",
            (since,),
        )
        return [self._dataset(r) for r in rows]

    def states(self) -> dict[str, int]:
        """How many datasets are in each state."""
        return {str(state): int(n) for state, n in self._rows(
            "SELECT state, count(*) FROM datasets GROUP BY state"
        )}  # fmt: skip

    def uploaded_bytes(self) -> dict[str, int]:
        """Bytes of the files uploaded (duplicates not), by target, from the kept counts."""
        rows = self._rows(
            "SELECT d.target, coalesce(sum(c.bytes), 0) FROM datasets d"
            " LEFT JOIN file_counts c ON c.dataset_id = d.id AND c.status = 'uploaded'"
            " GROUP BY d.target"
        )
        return {str(target): int(total) for target, total in rows}

    def dataset_total(self) -> int:
        """How many datasets the journal holds."""
        return int(self._rows("SELECT count(*) FROM datasets")[0][0])

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

    def find_dataset(self, dataset_id: int) -> DatasetRow | None:
        """The dataset with this id, if the journal has it."""
        rows = self._rows(f"SELECT {DATASET_COLUMNS} FROM datasets WHERE id = ?", (dataset_id,))  # noqa: S608
        return self._dataset(rows[0]) if rows else None

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

    def counts(self, dataset_ids: Iterable[int] | None = None) -> dict[int, DatasetCounts]:
        """Per-status counts and bytes for every dataset with files (or these datasets only).

        Read from the counts the journal keeps as files change (migration 0008), not counted
        over the files: a year of history is a million of them.
        """
        sql = "SELECT dataset_id, status, hashed, files, bytes FROM file_counts WHERE files > 0"
        rows: list[tuple[Any, ...]] = []
        if dataset_ids is None:
            rows = self._rows(sql)
        else:
            for chunk in chunks(list(dataset_ids)):
                marks = ", ".join("?" * len(chunk))
                rows.extend(self._rows(f"{sql} AND dataset_id IN ({marks})", chunk))
        files_of: dict[int, dict[str, int]] = {}
        sums: dict[int, list[int]] = {}  # bytes total, bytes done, files not hashed yet
        for dataset_id, status, hashed, count, size in rows:
            files = files_of.get(dataset_id)
            if files is None:
                files = files_of[dataset_id] = dict.fromkeys(FILE_STATUSES, 0)
                sums[dataset_id] = [0, 0, 0]
            files[status] += count
            acc = sums[dataset_id]
            if status != "skipped":
                acc[0] += size
            if status in DONE_STATUSES:
                acc[1] += size
            if status == "waiting" and not hashed:
                acc[2] += count
        return {ds: DatasetCounts(files_of[ds], *sums[ds]) for ds in files_of}

    def totals(self) -> dict[str, int]:
        """Files in each status over every dataset, from the kept counts."""
        totals = dict.fromkeys(FILE_STATUSES, 0)
        for status, count in self._rows(
            "SELECT status, sum(files) FROM file_counts GROUP BY status"
        ):
            totals[status] = int(count)
        return totals

    def size_on_disk(self) -> int:
        """Bytes the journal takes on disk: the database, its write-ahead log and index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_blocks * 512
        return total
