"""The journal: SQLite in WAL mode, the single source of truth for every status."""

from daemon.journal.db import GROUP_COMMIT_S, SCHEMA_VERSION
from daemon.journal.rows import (
    CLOSED_STATES,
    DONE_STATUSES,
    FILE_COLUMNS,
    FILE_STATUSES,
    DatasetCounts,
    DatasetRow,
    FileRow,
    HashRecord,
    Known,
    NewFile,
)
from daemon.journal.store import Journal

__all__ = [
    "CLOSED_STATES",
    "DONE_STATUSES",
    "FILE_COLUMNS",
    "FILE_STATUSES",
    "GROUP_COMMIT_S",
    "SCHEMA_VERSION",
    "DatasetCounts",
    "DatasetRow",
    "FileRow",
    "HashRecord",
    "Journal",
    "Known",
    "NewFile",
]
