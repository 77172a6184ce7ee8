"""The journal: SQLite in WAL mode with numbered migrations and one writer.

It is the single source of truth for every status. The daemon owns the only writing
connection and uses it from the event-loop thread. Other processes (``dronesync status``)
open it read-only; WAL lets them read while the daemon writes. Commits do not fsync under
``synchronous=NORMAL`` in WAL mode, so a committed change survives a killed process (only a
power cut can lose the last moments); bulk work is grouped with :meth:`Journal.transaction`
so a scan of 100,000 files is a handful of commits.

The daemon also turns on *group commit* (:meth:`Journal.group_commits`): each file's status
changes (hashed, uploading, uploaded) join one open transaction that the service commits
every :data:`GROUP_COMMIT_S`, instead of a commit each. What a kill can lose is therefore the
last fraction of a second of status changes, and every one of those is safe to lose: a file
whose "uploaded" was lost is sent again, and every target recognises a file it already holds.
Writes that come before an action outside the daemon (a target's memo, a dataset's state, the
answer that a card can be removed) commit at once, and everything before them with them.

:class:`Journal` is one class made of one part per concern, each over the shared connection
of :mod:`daemon.journal.db`: datasets, files, hashes and duplicates, upload statuses, the
upload queue, target memos and the spool. This package is the only import surface.
"""

from daemon.journal.db import GROUP_COMMIT_S, JOURNAL_NAME, SCHEMA_VERSION
from daemon.journal.hashes import Hashes
from daemon.journal.memos import Memos
from daemon.journal.queue import UploadQueue
from daemon.journal.rows import (
    CLOSED_STATES,
    DATASET_STATES,
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
from daemon.journal.spool import Spool
from daemon.journal.statuses import Statuses


class Journal(Hashes, Statuses, UploadQueue, Memos, Spool):
    """The SQLite journal. Not thread-safe: use it from one thread (the event loop)."""


__all__ = [
    "CLOSED_STATES",
    "DATASET_STATES",
    "DONE_STATUSES",
    "FILE_COLUMNS",
    "FILE_STATUSES",
    "GROUP_COMMIT_S",
    "JOURNAL_NAME",
    "SCHEMA_VERSION",
    "DatasetCounts",
    "DatasetRow",
    "FileRow",
    "HashRecord",
    "Journal",
    "Known",
    "NewFile",
]
