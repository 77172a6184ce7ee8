"""The hasher: stable files are hashed in hashing processes and recorded in the journal.

Recording decides the file's fate: a duplicate of content already sent (pointer to the
original), or waiting for upload. A file that moved while being read goes back to the gate.
In spool mode the same read also copies the file into the spool; when the spool has no room,
the file waits (on the card) until uploads free some. Copies are made durable together: a
hashing process goes on to the next file, and one ``syncfs`` covers every copy finished
meanwhile before any of them is recorded.

Files are read in hashing processes (:mod:`daemon.hashworker`), a few at a time (a *batch*):
each hand-over to a process and each answer back costs the event loop a wake-up, and for an
image of a few hundred KiB that costs as much as reading it.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import Protocol

import structlog

from daemon.clock import Clock
from daemon.durable import GATHER_FILES, GATHER_S
from daemon.errors import (
    DronesyncError,
    FileChangedError,
    HashingError,
    SourceError,
    SpoolError,
)
from daemon.hashing import Hashed
from daemon.hashworker import Job, Outcome
from daemon.journal import CLOSED_STATES, DONE_STATUSES, FileRow, HashRecord, Journal
from daemon.sources.gate import Candidate
from daemon.sources.hashpool import HashPool
from daemon.sources.spool import Spool

log = structlog.get_logger("dronesync.hasher")

# A batch holds at most this many files, and at most this many bytes (a larger file goes alone).
BATCH_FILES = 16
BATCH_BYTES = 8 * 1024 * 1024


class Sources(Protocol):
    """What the hasher tells the sources its files came from, and asks them."""

    def note_hashed(self, candidate: Candidate, status: str) -> None:
        """The file's hash is recorded, with this status: its hash cache entry is current."""

    def offer_again(self, file_id: int, volume: str, relpath: bytes) -> None:
        """The file changed while it was read: watch it until it is stable again."""

    def is_online(self, volume: str) -> bool:
        """Whether the folder or card holding ``volume`` is present now."""

    def open_dataset_for(self, candidate: Candidate) -> int:
        """The dataset that takes this file now (a later generation once processing began)."""


class _Batch:
    """Files handed to a hashing process in one message; ``future`` once it was handed over."""

    __slots__ = ("future", "jobs", "size")

    def __init__(self) -> None:
        self.jobs: list[tuple[Candidate, Spool | None]] = []
        self.size = 0
        self.future: asyncio.Future[list[Outcome]] | None = None


class Hasher:
    """Hashes released files in a few hashing processes; results are applied on the loop."""

    def __init__(
        self,
        journal: Journal,
        sources: Sources,
        clock: Clock,
        workers: int,
        scope_of: Callable[[str], str],
        on_recorded: Callable[[], None],
        spool: Spool | None = None,
        staging: Callable[[int], Spool | None] = lambda dataset_id: None,
    ) -> None:
        self._journal = journal
        self._sources = sources
        self._clock = clock
        self._pool = HashPool(workers)
        self._scope_of = scope_of
        self._on_recorded = on_recorded
        self._inflight: dict[int, _Batch] = {}  # files being read, by file id
        self._forming: _Batch | None = None  # the next batch, handed over at the end of the turn
        self._spool = spool
        self._staging = staging  # a dataset's target's staging spool, if it has one
        self._unstaged: set[int] = set()  # files whose staging copy failed: hashed without
        self._deferred: dict[int, Candidate] = {}
        # Waiting for room, first in first out: ``_order`` keeps the order (a dict's first key
        # costs a walk over every entry popped before it, quadratic on a big card; an
        # OrderedDict costs a link per file), ``_queued`` the latest candidate of each file.
        self._queued: dict[int, Candidate] = {}
        self._order: deque[int] = deque()
        self._limit = workers * 2 * BATCH_FILES  # a batch running and one waiting, per process
        # Copied into the spool, not yet durable (nor recorded), by file id.
        self._unsynced: dict[int, tuple[Candidate, Hashed, Spool]] = {}
        self._after_sync: dict[int, Candidate] = {}  # changed while its copy was unsynced
        self._syncing: asyncio.Task[None] | None = None
        self.files_read = 0  # files hashed (or copied into the spool) by this session

    @property
    def pending(self) -> int:
        """Files given to the hasher and not recorded yet: waiting, being read, or syncing."""
        return len(self._queued) + len(self._inflight) + len(self._unsynced)

    def busy_datasets(self) -> set[int]:
        """Datasets with a file being hashed right now, or waiting for a hashing process."""
        waiting = {c.dataset_id for c in self._queued.values()}
        waiting |= {c.dataset_id for c, _, _ in self._unsynced.values()}
        return waiting | {self._journal.file(i).dataset_id for i in self._inflight}

    def submit(self, candidate: Candidate) -> None:
        """Hash a file the gate released (ignored if it is already being hashed).

        At most a few files per thread are handed to the pool; the rest wait here, so a card
        of 100,000 files costs 100,000 small records, not 100,000 pending futures.
        """
        if candidate.file_id in self._inflight:
            return
        copied = self._unsynced.get(candidate.file_id)
        if copied is not None:
            # Its copy waits for the spool's sync (a rescan met it meanwhile): the same file
            # is not read twice; a changed one is read again once that copy is recorded.
            seen = copied[0]
            if (seen.size, seen.mtime_ns) != (candidate.size, candidate.mtime_ns):
                self._after_sync[candidate.file_id] = candidate
            return
        if len(self._inflight) >= self._limit:
            if candidate.file_id not in self._queued:
                self._order.append(candidate.file_id)
            self._queued[candidate.file_id] = candidate
            return
        self._start(candidate)

    def _next(self) -> None:
        while self._order and len(self._inflight) < self._limit:
            self._start(self._queued.pop(self._order.popleft()))

    def _start(self, candidate: Candidate) -> None:
        # A second candidate for a file being read waits in the gate; recording the first
        # one drops it there (Sources.note_hashed): the same file is not read twice.
        loop = asyncio.get_running_loop()
        if candidate.spool:
            spool = self._spool
            if spool is not None and not spool.reserve(candidate.size):
                self._deferred[candidate.file_id] = candidate  # stays on the card, waiting
                return
        else:
            spool = None
            if candidate.file_id not in self._unstaged:
                spool = self._staging(candidate.dataset_id)
            if spool is not None and not (spool.accepting and spool.reserve(candidate.size)):
                spool = None  # staging off, or the disk short of room: hashed without a copy
        self._deferred.pop(candidate.file_id, None)
        batch = self._forming
        if batch is not None and (
            len(batch.jobs) >= BATCH_FILES or batch.size + candidate.size > BATCH_BYTES
        ):
            self._hand_over()
            batch = None
        if batch is None:
            batch = self._forming = _Batch()
            loop.call_soon(self._hand_over, batch)  # once this turn has added what it has
        batch.jobs.append((candidate, spool))
        batch.size += candidate.size
        self._inflight[candidate.file_id] = batch

    def _hand_over(self, batch: _Batch | None = None) -> None:
        """Give the forming batch to a hashing process (``batch``: only if it is still that one)."""
        forming = self._forming
        if forming is None or (batch is not None and batch is not forming):
            return
        self._forming = None
        jobs: list[Job] = [
            (
                os.fsdecode(candidate.path),
                candidate.size,
                candidate.mtime_ns,
                None if spool is None else os.fsdecode(spool.copy_path(candidate.file_id)),
            )
            for candidate, spool in forming.jobs
        ]
        future = self._pool.submit(jobs)
        forming.future = future
        future.add_done_callback(lambda f: self._batch_done(forming, f))

    def _batch_done(self, batch: _Batch, future: asyncio.Future[list[Outcome]]) -> None:
        if future.cancelled():
            for candidate, spool in batch.jobs:
                self._inflight.pop(candidate.file_id, None)
                if spool is not None:
                    spool.unreserve(candidate.size)
            return
        for (candidate, spool), outcome in zip(batch.jobs, future.result(), strict=True):
            self._done(candidate, outcome, spool)

    def space_freed(self) -> None:
        """The spool has room again (an upload finished): retry the files that waited."""
        for candidate in list(self._deferred.values()):
            self.submit(candidate)
            if candidate.file_id in self._deferred:
                break  # still full: the rest wait too

    @property
    def deferred(self) -> int:
        """Files waiting for room in the spool."""
        return len(self._deferred)

    def _done(self, candidate: Candidate, outcome: Outcome, spool: Spool | None) -> None:
        self._inflight.pop(candidate.file_id, None)
        self._next()
        self.files_read += 1
        if spool is not None and isinstance(outcome, Hashed):
            self._unsynced[candidate.file_id] = (candidate, outcome, spool)
            if self._syncing is None or self._syncing.done():
                self._syncing = asyncio.get_running_loop().create_task(self._sync())
            return
        try:
            self._record(candidate, outcome, spool)
        except DronesyncError as exc:
            self._cannot_record(candidate, exc)

    async def _sync(self) -> None:
        """Make the spool's new copies durable, one ``syncfs`` for all, then record them."""
        while self._unsynced:
            if len(self._unsynced) < GATHER_FILES:
                await self._clock.sleep(GATHER_S)  # let more copies join this sync
            batch = list(self._unsynced.values())  # stay there until recorded: see submit
            errors: dict[Spool, SpoolError] = {}
            for spool in {spool for _, _, spool in batch}:  # the spool, staging folders
                try:
                    await asyncio.to_thread(spool.make_durable)
                except OSError as exc:
                    errors[spool] = SpoolError(
                        f"{spool.folder}: cannot write the spool: {exc.strerror}"
                    )
            rows = self._journal.find_files([candidate.file_id for candidate, _, _ in batch])
            synced: list[tuple[Candidate, FileRow, Hashed, Spool | None]] = []
            for candidate, hashed, spool in batch:
                del self._unsynced[candidate.file_id]
                error = errors.get(spool)
                try:
                    row = rows.get(candidate.file_id)
                    if row is None:
                        self._vanished(candidate, spool)
                    elif error is None:
                        synced.append((candidate, row, hashed, spool))
                    else:
                        spool.unreserve(candidate.size)
                        self._not_hashed(candidate, row, error, spool)
                except DronesyncError as exc:
                    self._cannot_record(candidate, exc)
            self._apply(synced)
            for candidate, _, _ in batch:
                changed = self._after_sync.pop(candidate.file_id, None)
                if changed is not None:
                    self.submit(changed)

    @staticmethod
    def _vanished(candidate: Candidate, spool: Spool | None) -> None:
        """The file left the source while it was read, and the journal forgot it."""
        if spool is not None:
            copy = spool.copy_path(candidate.file_id)
            spool.remove(candidate.file_id, copy, candidate.size)

    @staticmethod
    def _cannot_record(candidate: Candidate, exc: DronesyncError) -> None:
        # A callback has nobody to raise to: say it, and let the next scan retry.
        log.error("cannot record hash", file=os.fsdecode(candidate.path), error=str(exc))

    def _record(self, candidate: Candidate, outcome: Outcome, spool: Spool | None) -> None:
        row = self._journal.find_file(candidate.file_id)
        if row is None:
            self._vanished(candidate, spool)
            return
        if isinstance(outcome, FileChangedError | SourceError | SpoolError | HashingError):
            if spool is not None:
                spool.unreserve(candidate.size)
            self._not_hashed(candidate, row, outcome, spool)
            return
        if isinstance(outcome, BaseException):
            # Not a file's doing (a bug): said in one line; the rest of its batch goes on, and
            # the file, still waiting in the journal, is read again at the next scan.
            if spool is not None:
                spool.unreserve(candidate.size)
            log.error("cannot hash", file=os.fsdecode(candidate.path), error=str(outcome))
            return
        self._apply([(candidate, row, outcome, spool)])

    def _not_hashed(
        self,
        candidate: Candidate,
        row: FileRow,
        exc: FileChangedError | SourceError | SpoolError | HashingError,
        spool: Spool | None,
    ) -> None:
        if isinstance(exc, FileChangedError | HashingError):
            # Through the gate again, so a process that keeps ending is not restarted in a
            # tight loop: the pool has said it ended.
            self._sources.offer_again(row.id, row.volume, row.relpath)
        elif isinstance(exc, SpoolError) and spool is not None and spool.staging:
            # Staging is a shortcut, not a promise: the file is hashed without a copy.
            log.warning("cannot stage a copy; hashing without one", error=str(exc))
            self._unstaged.add(candidate.file_id)
            self.submit(candidate)
        elif isinstance(exc, SpoolError):
            log.warning(
                "cannot copy into the spool; waiting",
                file=os.fsdecode(candidate.path),
                error=str(exc),
            )
            self._deferred[candidate.file_id] = candidate
        elif self._sources.is_online(row.volume):
            self._journal.mark_failed(row.id, str(exc))
            log.warning("file failed", file=os.fsdecode(candidate.path), error=str(exc))

    def _apply(self, hashed: list[tuple[Candidate, FileRow, Hashed, Spool | None]]) -> None:
        """Record the hashes of files read whole: in the journal together, in a few statements.

        If the journal cannot take them, each file says so and stays waiting: the next scan
        offers it again.
        """
        records: list[HashRecord] = []
        kept: list[tuple[Candidate, FileRow, Spool | None]] = []
        for candidate, row, outcome, spool in hashed:
            try:
                record = self._hash_record(candidate, row, outcome, spool)
            except DronesyncError as exc:
                self._cannot_record(candidate, exc)
                continue
            if record is not None:
                records.append(record)
                kept.append((candidate, row, spool))
        if not records:
            return
        try:
            recorded = self._journal.record_hashes(records, self._clock.time())
        except DronesyncError as exc:
            for candidate, _, _ in kept:
                self._cannot_record(candidate, exc)
            return
        for (candidate, row, spool), now in zip(kept, recorded, strict=True):
            self._recorded(candidate, row, now, spool)
        self._on_recorded()

    def _hash_record(
        self, candidate: Candidate, row: FileRow, hashed: Hashed, spool: Spool | None
    ) -> HashRecord | None:
        """What to record for a file read whole; None for an empty one (skipped here)."""
        if hashed.size == 0:
            # No image is empty: processing would choke on it, and there is nothing to send.
            if spool is not None:
                spool.remove(row.id, spool.copy_path(row.id), 0)
            if row.status != "skipped":
                self._journal.mark_skipped(
                    row.id, "empty file (0 bytes): nothing to send", hashed.sha256
                )
                log.info("file skipped", file=os.fsdecode(candidate.path), reason="empty file")
            self._sources.note_hashed(candidate, "skipped")
            return None
        dataset_id = row.dataset_id
        unchanged = row.sha256 == hashed.sha256 and row.status in DONE_STATUSES
        if not unchanged and self._journal.dataset(dataset_id).state in CLOSED_STATES:
            dataset_id = self._sources.open_dataset_for(candidate)
        target = self._journal.dataset(dataset_id).target
        return HashRecord(
            current=row,
            dataset_id=dataset_id,
            size=hashed.size,
            mtime_ns=hashed.mtime_ns,
            sha256=hashed.sha256,
            duplicate_scope=self._scope_of(target),
            spool_path=None if spool is None else spool.copy_path(row.id),
            seal=hashed.seal,
        )

    def _recorded(
        self, candidate: Candidate, before: FileRow, recorded: FileRow, spool: Spool | None
    ) -> None:
        """A file's hash is in the journal: drop a copy not needed, and say a new duplicate."""
        if spool is not None and recorded.status != "waiting":
            # Nothing to send: no copy kept.
            spool.discard(spool.copy_path(recorded.id), candidate.size)
        self._sources.note_hashed(candidate, recorded.status)
        unchanged = before.sha256 == recorded.sha256 and before.status in DONE_STATUSES
        if recorded.status == "duplicate" and not unchanged:
            original = self._journal.file(recorded.duplicate_of or 0)
            log.info(
                "file duplicate",
                file=os.fsdecode(candidate.path),
                sha256=recorded.sha256,
                original=os.fsdecode(original.volume.encode() + b"/" + original.relpath),
            )

    async def aclose(self) -> None:
        """Stop taking work and end the hashing processes.

        A copy being written is dropped by the spool's next start, as are copies not yet
        recorded.
        """
        self._forming = None  # never handed over: dropped with the rest
        if self._syncing is not None:
            self._syncing.cancel()
        await self._pool.aclose()
