"""The one exception tree of dronesync, and the exit codes the service manager knows.

::

    DronesyncError                 base; ``exit_code`` says how the CLI ends
    ├── ConfigError                78 (EX_CONFIG): the unit does not restart on it
    ├── UsageError                  2: a CLI call that cannot be carried out as asked
    ├── JournalError                1: the SQLite journal cannot be opened or written
    ├── SpoolError                  1: the spool folder cannot take a copy (full, unwritable)
    ├── HashingError                1: a hashing process ended before it answered
    ├── SourceError                 1: a source file or folder cannot be read
    │   └── FileChangedError           the file moved under us (size, mtime or content)
    └── TargetError                 1: a target refused or failed an operation
        ├── TransientTargetError       worth retrying (network, timeouts, 408/429/5xx)
        │   ├── DatasetResetError          the target dropped the dataset: send it all again
        │   ├── TargetWaitError            the dataset's files wait a while, costing no attempt
        │   └── TargetPausedError          nothing can go until the operator acts (sign-in)
        └── PermanentTargetError       retrying will not help (other 4xx, bad config)

Third-party errors (OSError, sqlite3, httpx) are translated at the edge with
``raise ... from exc`` so that messages carry the file or URL they concern.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


class DronesyncError(Exception):
    """Base of every error dronesync raises on purpose; its message is for operators."""

    exit_code = EXIT_FAILURE


class ConfigError(DronesyncError):
    """The configuration is invalid; each entry of ``problems`` is one complete line."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UsageError(DronesyncError):
    """A CLI request names something that does not exist or cannot be done now."""

    exit_code = EXIT_USAGE


class JournalError(DronesyncError):
    """The journal (SQLite) cannot be opened, migrated or written."""


class SpoolError(DronesyncError):
    """The spool cannot take a file's copy (disk full, unwritable): copying waits."""


class HashingError(DronesyncError):
    """A hashing process ended (killed, out of memory) before it answered for a file.

    Not the file's doing: it goes back to the stability gate and is read again.
    """


class SourceError(DronesyncError):
    """A source file or folder could not be read."""


class FileChangedError(SourceError):
    """A file changed while it was being hashed or uploaded; it goes back to the stability gate."""


class TargetError(DronesyncError):
    """A target operation failed.

    ``retry_after`` is the server's requested wait in seconds, when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientTargetError(TargetError):
    """A failure that may go away: connection errors, timeouts, 408, 429, 5xx, a stall."""


class DatasetResetError(TransientTargetError):
    """The target had to start the dataset afresh (a new processing task, say).

    Raised when an upload ended ambiguously on a target that cannot tell what it holds: the
    only safe recovery is an empty remote container. Every file of the dataset already
    uploaded goes back to waiting and is sent again; nothing is lost or stored twice.
    """


class TargetWaitError(TransientTargetError):
    """The target asks the dataset's files to wait ``retry_after`` seconds; not their fault.

    Raised before anything is sent (the dataset's remote task being replaced after a backoff,
    say): the file is parked for that long without using up an attempt.
    """


class TargetPausedError(TransientTargetError):
    """The target takes nothing until the operator acts: a refused sign-in, say.

    Files wait without using up their attempts, and the dataset shows the message.
    """


class PermanentTargetError(TargetError):
    """A failure that retrying will not fix: the file is marked failed with this message."""
