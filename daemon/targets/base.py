"""The target protocol: the small surface every upload target implements.

A target knows how to put one file somewhere and how to start and follow processing; it does
not retry, throttle or schedule. Retry tiers, the bandwidth limit, stall detection and
concurrency wrap every target the same way (``daemon.upload``). A target tells transient from
permanent failures by the class of error it raises (``daemon.errors``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    NamedTuple,
    Protocol,
    Self,
    TypeVar,
)

from daemon.configmodel import Model
from daemon.errors import TransientTargetError
from daemon.hashing import StableRead

DuplicateScope = Literal["target", "dataset"]
# One file of a dataset as sent: path inside the dataset, size, mtime (ns), SHA-256 and the
# remote key its bytes are under (a duplicate's is its original's; None until that is sent).
SentFile = tuple[bytes, int, int, str, bytes | None]


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """The dataset an operation concerns, as the target needs to know it."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class UploadItem:
    """One file to upload: where it is read from and what it must be once stored."""

    path: Path
    key: bytes  # path inside the dataset folder, '/'-separated, may be non-UTF-8
    size: int
    mtime_ns: int
    sha256: str
    # ``path`` is the daemon's own copy in the spool: written from the read that hashed it,
    # never changed afterwards, so a target may link it instead of reading it again.
    spooled: bool = False
    # daemon.hashing.seal_of the file when it was hashed (None: no seal was taken).
    seal: int | None = None

    def reading(self, *, store_checks: bool = False) -> StableRead:
        """A read of the file that must be the recorded one (a context manager).

        Size and mtime are always checked. The content is hashed as it is read unless
        something else vouches for it: the file still has the seal it had when it was hashed
        (the very file, unchanged since), it is the spool's copy (no one else writes it), or
        ``store_checks`` (the store refuses bytes that do not match the recorded SHA-256 sent
        with them). :attr:`StableRead.hashes` tells which, once open.
        """
        return StableRead(
            self.path,
            self.size,
            self.mtime_ns,
            expect=self.sha256,
            seen="hashed",
            doing="uploaded",
            hash_content=not (self.spooled or store_checks),
            seal=self.seal,
        )


@dataclass(frozen=True, slots=True)
class ProcessingStatus:
    """Where a dataset's processing stands, as the target reports it."""

    state: Literal["running", "done", "failed"]
    detail: str | None = None
    progress: float | None = None  # 0-100 where the target knows it


class TargetState(Protocol):
    """What a target may keep and change in the journal about a dataset.

    The journal implements it, so a project id or a task uuid is committed with the same
    durability as the file statuses it goes with.
    """

    def get_memo(self, dataset_id: int, key: str) -> str | None:
        """The stored value, or None."""

    def put_memo(self, dataset_id: int, key: str, value: str | None) -> None:
        """Store ``value`` (None forgets it)."""

    def memos(self, dataset_id: int, prefix: str) -> dict[str, str]:
        """Every stored value of the dataset whose key starts with ``prefix``."""

    def requeue_uploaded(self, dataset_id: int, reason: str) -> int:
        """The target lost the dataset: its uploaded files are sent again. Returns how many."""

    def file_count(self, dataset_id: int) -> int:
        """How many files the dataset sends, at least (hashed; no duplicate, skipped, failed)."""

    def sent_files(self, dataset_id: int) -> Sequence[SentFile]:
        """Every uploaded or duplicate file of the dataset, in path order (a manifest)."""


class MemoryState:
    """A TargetState in memory, for targets used outside the daemon (tests, benchmarks)."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, str], str] = {}
        self.requeued: dict[int, int] = {}
        self.files: dict[int, int] = {}  # file_count's answers, set by tests
        self.sent: dict[int, list[SentFile]] = {}  # sent_files' answers, set by tests

    def get_memo(self, dataset_id: int, key: str) -> str | None:
        """The stored value, or None."""
        return self._values.get((dataset_id, key))

    def put_memo(self, dataset_id: int, key: str, value: str | None) -> None:
        """Store ``value`` (None forgets it)."""
        if value is None:
            self._values.pop((dataset_id, key), None)
        else:
            self._values[(dataset_id, key)] = value

    def memos(self, dataset_id: int, prefix: str) -> dict[str, str]:
        """Every stored value of the dataset whose key starts with ``prefix``."""
        return {
            key: value
            for (ds, key), value in self._values.items()
            if ds == dataset_id and key.startswith(prefix)
        }

    def requeue_uploaded(self, dataset_id: int, reason: str) -> int:
        """Nothing to requeue without a journal; the count is kept for tests."""
        del reason
        self.requeued[dataset_id] = self.requeued.get(dataset_id, 0) + 1
        return 0

    def file_count(self, dataset_id: int) -> int:
        """The count a test set in :attr:`files` (0 without one)."""
        return self.files.get(dataset_id, 0)

    def sent_files(self, dataset_id: int) -> list[SentFile]:
        """The files a test set in :attr:`sent` (none without them)."""
        return list(self.sent.get(dataset_id, []))


class Throttle(Protocol):
    """A shared bandwidth limit; blocks the calling (worker) thread as needed."""

    def consume(self, nbytes: int) -> None:
        """Account for ``nbytes`` sent, sleeping if the limit is exceeded."""


@dataclass(slots=True)
class Transfer:
    """Progress of one upload, shared between the worker thread and the engine.

    Targets call :meth:`progress` after every chunk; it applies the bandwidth limit and raises
    when the engine aborted the transfer (stall, cancel, stop), so a copy running in a thread
    stops at its next chunk.
    """

    throttle: Throttle | None = None
    on_bytes: Callable[[int], None] | None = None
    clock: Callable[[], float] = time.monotonic
    sent: int = 0
    last_progress: float = -1.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    abort_reason: str = ""
    # A plain flag, not a threading.Event: nothing waits on it, threads only read it (a
    # single attribute is read whole under the GIL), and an Event per small image was a
    # Condition and two locks made and dropped.
    _aborted: bool = False

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def progress(self, nbytes: int) -> None:
        """Record ``nbytes`` more sent; raise if the transfer was aborted."""
        if self._aborted:
            raise TransientTargetError(self.abort_reason or "transfer aborted")
        with self._lock:  # the parts of one file are sent from several threads
            self.sent += nbytes
        self.last_progress = self.clock()
        if self.on_bytes is not None:
            self.on_bytes(nbytes)
        if self.throttle is not None:
            self.throttle.consume(nbytes)

    def keep_alive(self) -> None:
        """The transfer waits its turn (for a place shared with other uploads): not a stall."""
        self.last_progress = self.clock()

    def abort(self, reason: str) -> None:
        """Make the next :meth:`progress` call raise."""
        self.abort_reason = reason
        self._aborted = True

    @property
    def aborted(self) -> bool:
        """Whether :meth:`abort` was called."""
        return self._aborted


@dataclass(frozen=True, slots=True)
class Staging:
    """A folder where the hasher may copy new files for the target to link instead of copy.

    It must be on the target's own filesystem. With ``accept`` false (staging turned off) it
    only serves the copies already there.
    """

    folder: Path
    accept: bool


class Target(Protocol):
    """What every target implements. Errors: TransientTargetError / PermanentTargetError."""

    name: str
    poll_interval_s: float
    staging: Staging | None

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Create what the dataset needs on the target (idempotent)."""

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Store one file and return its remote key; verified before returning.

        Uploading the same content under the same key again returns the same key without
        storing a second copy.
        """

    async def make_durable(self) -> None:
        """Make every upload that has returned so far safe from a crash or a power cut.

        The engine calls it for each batch of returned uploads before it records any of them
        as uploaded, so a target that writes to a disk syncs once per batch, not per file. A
        target whose server stored each file before answering has nothing to do.
        """

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Register ``keys`` and start processing; returns a handle for polling."""

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """Where the processing started under ``handle`` stands."""

    async def aclose(self) -> None:
        """Release connections and processes."""


class SecretRef(NamedTuple):
    """Where a target's secret is configured: the key stem (``token``) and its two keys."""

    stem: str
    file: Path | None
    credential: str | None
    required: bool


class TargetConfig(Model):
    """The ``[targets.NAME]`` table of one target type: its own model, plus these hooks.

    The hooks let the configuration check what is generic (secrets, folders written,
    programs run, relative paths) without knowing the type.
    """

    if TYPE_CHECKING:  # declared by every type, with its own default and description
        type: str
        duplicate_scope: DuplicateScope

    # Files a source feeding this target takes beside the images unless its include is set.
    companions: ClassVar[tuple[str, ...]] = ()

    def secret(self) -> SecretRef | None:
        """The secret this target reads at start, if it has one."""
        return None

    def written_folder(self) -> Path | None:
        """A local folder the daemon writes into for this target (checked against sources)."""
        return None

    def programs(self) -> dict[str, list[str] | None]:
        """Commands the target runs, by key (checked for a program that can run)."""
        return {}

    def anchored(self, base: Path) -> Self:
        """The table with its relative paths taken from ``base`` (the config file's folder)."""
        update: dict[str, Any] = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            if isinstance(value, Path) and not value.is_absolute():
                update[key] = Path(os.path.normpath(base / value))
        return self.model_copy(update=update) if update else self


C = TypeVar("C", bound=TargetConfig)


@dataclass(frozen=True, slots=True)
class TargetEnv:
    """What the daemon hands a target it builds, beside its own table."""

    state: TargetState
    state_dir: Path
    secret: str | None  # read from the file or credential its table names


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One dataset of one box of a fleet, as the store the boxes share records it."""

    box: str
    dataset: str
    files: int
    bytes: int
    finished: str | None  # ISO 8601, UTC, as the record says; None: it says none
    manifest: str  # where the record is (a URL, never with credentials in it)
    problem: str | None = None  # the record could not be read: why (files and bytes are 0)


@dataclass(frozen=True, slots=True)
class TargetType(Generic[C]):
    """One entry of the registry: the ``type`` value, its table and how to build the target.

    ``fleet`` is optional: for a type whose store many boxes share and that records each
    dataset there, it lists every box's datasets (``dronesync fleet``), only reading.
    Called with the target's table and its secret, it returns a row per record (one that
    cannot be read is a row with its ``problem``) and raises TargetError when the store
    cannot be listed.
    """

    name: str
    config: type[C]
    build: Callable[[str, C, TargetEnv], Target]
    fleet: Callable[[C, str | None], list[FleetRow]] | None = None
