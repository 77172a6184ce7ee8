"""The spool: verified local copies of files, and what a volume still has to give."""

from __future__ import annotations

from daemon.journal.db import JournalBase


class Spool(JournalBase):
    """Files' copies in the spool, and the files a card must still be read for."""

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
        # By status, named: the planner would rather take the volume's index and read every
        # file ever seen in that card slot (a year of them), a few times a second.
        rows = self._conn.execute(
            "SELECT dataset_id, count(*) FROM files INDEXED BY files_queue"  # noqa: S608 (constant)
            f" WHERE volume = ? AND status IN {statuses}"
            " AND spool_path IS NULL GROUP BY dataset_id",
            (volume,),
        ).fetchall()
        return {int(a): int(b) for a, b in rows}
