"""The upload queue: the fair take of due files, when the next one is due, and recovery."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from daemon.journal.db import JournalBase, chunks
from daemon.journal.rows import FILE_COLUMNS, FileRow


class UploadQueue(JournalBase):
    """Files taken for upload, shared fairly between the datasets still collecting."""

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
