"""The journal: SQLite in WAL mode, the single source of truth for every status."""

from daemon.journal.store import DatasetRow, FileRow, Journal

__all__ = ["DatasetRow", "FileRow", "Journal"]
