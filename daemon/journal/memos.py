"""What targets remember: values a target stores for a dataset (a project id, a task uuid)."""

from __future__ import annotations

from daemon.journal.db import JournalBase


class Memos(JournalBase):
    """A target's values by dataset and key; a stored value is committed at once."""

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
