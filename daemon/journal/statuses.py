"""Upload statuses: a file's outcomes, retries, failures, and what was uploaded."""

from __future__ import annotations

from typing import Any

from daemon.journal.datasets import Datasets
from daemon.journal.db import chunks
from daemon.journal.rows import FileRow


class Statuses(Datasets):
    """A file's upload status after it was taken: uploaded, retrying, skipped or failed."""

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

    def parked(self, now: float) -> dict[int, tuple[int, float, float]]:
        """Files waiting out a backoff at ``now``, by dataset: how many, first and last due.

        What an ETA must wait for, however fast the other files go.
        """
        rows = self._rows(
            "SELECT dataset_id, count(*), min(next_attempt_at), max(next_attempt_at)"
            " FROM files WHERE status = 'waiting' AND next_attempt_at > ? GROUP BY dataset_id",
            (now,),
        )
        return {ds: (count, first, last) for ds, count, first, last in rows}

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

    def sent_files(self, dataset_id: int) -> list[tuple[bytes, int, int, str, bytes | None]]:
        """The dataset's uploaded and duplicate files, in path order, for a target's manifest.

        Each is (path in the dataset, size, mtime_ns, SHA-256, remote key); a duplicate's key
        is its original's, None while the original is not uploaded.
        """
        rows = self._conn.execute(
            "SELECT f.dspath, f.size, f.mtime_ns, f.sha256,"
            " CASE WHEN f.status = 'uploaded' THEN f.remote_key"
            "      WHEN o.status = 'uploaded' THEN o.remote_key END"
            " FROM files f LEFT JOIN files o ON o.id = f.duplicate_of"
            " WHERE f.dataset_id = ? AND f.status IN ('uploaded', 'duplicate') ORDER BY f.dspath",
            (dataset_id,),
        ).fetchall()
        return [
            (bytes(path), int(size), int(mtime), str(sha), None if key is None else bytes(key))
            for path, size, mtime, sha, key in rows
        ]

    def uploaded_since(self, since: float) -> list[tuple[int, float, int]]:
        """(dataset id, uploaded_at, size) of files uploaded after ``since``: for rates."""
        rows = self._conn.execute(
            "SELECT dataset_id, uploaded_at, size FROM files WHERE uploaded_at > ?"
            " AND status = 'uploaded'",
            (since,),
        ).fetchall()
        return [(int(a), float(b), int(c)) for a, b, c in rows]

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
