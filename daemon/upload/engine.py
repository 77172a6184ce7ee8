"""The upload engine: a dispatcher and ``concurrency`` workers around any target.

The dispatcher takes due files from the journal, sharing the workers fairly between datasets
(the next file comes from the dataset with the fewest uploads going). Each worker uploads one
file at a time with a few quick in-process retries (tier 1), then parks it in the journal with
``next_attempt_at`` (tier 2) or marks it failed when attempts are spent or the error is
permanent. A file taken up again from parking gets one attempt and parks again with its next
delay: a worker never sleeps longer than a quick retry, so a long outage holds no worker. A
transfer with no progress for ``stall_s`` is aborted and counts as a transient failure.
Stopping (or cancelling a dataset) puts in-flight files back to waiting without counting the
attempt. The first failed file of a dataset asks for attention (``on_attention``).

An upload the target has returned *lands*: its worker goes on to the next file, and the files
that landed meanwhile are made durable together (:meth:`Target.make_durable`, one ``syncfs``
for the directory target) before any of them is recorded as uploaded. A file is therefore
never called uploaded before it is safe, and small images do not each wait for a sync of
their own while holding one of the ``concurrency`` slots.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.clock import Clock, wait_event
from daemon.config import UploadSettings
from daemon.durable import GATHER_FILES, GATHER_S
from daemon.errors import (
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TargetError,
    TargetPausedError,
    TargetWaitError,
    TransientTargetError,
)
from daemon.journal import DatasetRow, FileRow, Journal
from daemon.targets.base import DatasetRef, Target, Transfer, UploadItem
from daemon.upload.ratelimit import TokenBucket
from daemon.upload.retry import Backoff

log = structlog.get_logger("dronesync.upload")

IDLE_WAIT_S = 5.0
# A paused target (sign-in needed) is tried again this often, or at once after a reload.
PAUSE_S = 60.0
# The journal memo that says a dataset's detail is a pause's message: the first upload after
# it clears the message, even in an engine built later (a reload, a restart).
PAUSED_MEMO = "upload.paused"
# The most uploads that may wait for durability at once: the dispatcher hands out no more.
LANDED_MAX = 256


@dataclass(slots=True)
class _Landed:
    """An upload the target returned, waiting for the next durability batch to be recorded."""

    row: FileRow
    dataset: DatasetRow
    item: UploadItem
    target: Target
    key: bytes
    attempts: int


@dataclass(slots=True)
class _Flight:
    row: FileRow
    transfer: Transfer
    task: asyncio.Task[bytes] | None = None
    stalled: bool = False  # aborted by _watch_stalls


class RateMeter:
    """Bytes sent per dataset, smoothed into a rate for ``status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self.rates: dict[int, float] = {}

    def add(self, dataset_id: int, nbytes: int) -> None:
        """Count bytes sent (called from worker threads, the parts of one file from several)."""
        with self._lock:
            self.sent[dataset_id] = self.sent.get(dataset_id, 0) + nbytes

    def sample(self, interval: float) -> None:
        """Fold the bytes sent since the last sample into each dataset's rate."""
        for dataset_id, total in list(self.sent.items()):
            delta = total - self._last.get(dataset_id, 0)
            self._last[dataset_id] = total
            rate = delta / interval if interval > 0 else 0.0
            previous = self.rates.get(dataset_id, rate)
            self.rates[dataset_id] = 0.7 * previous + 0.3 * rate


class UploadEngine:
    """Moves waiting files to their targets."""

    def __init__(
        self,
        journal: Journal,
        targets: dict[str, Target],
        settings: UploadSettings,
        clock: Clock,
        *,
        locate: Callable[[FileRow], Path],
        source_online: Callable[[str], bool],
        on_changed: Callable[[FileRow], None],
        backoff: Backoff | None = None,
        on_attention: Callable[[DatasetRow, str], None] | None = None,
        on_uploaded: Callable[[list[FileRow]], None] | None = None,
    ) -> None:
        self._journal = journal
        self._targets = targets
        self._settings = settings
        self._clock = clock
        self._locate = locate
        self._source_online = source_online
        self._on_changed = on_changed
        self._on_attention = on_attention or (lambda dataset, message: None)
        self._on_uploaded = on_uploaded or (lambda rows: None)
        self._backoff = backoff or Backoff.from_settings(settings)
        self._throttle = TokenBucket(settings.bandwidth_limit) if settings.bandwidth_limit else None
        # Files taken from the journal, each for a worker waiting for one (``_idle``).
        self._queue: asyncio.Queue[FileRow] = asyncio.Queue()
        self._idle = 0
        self._claimed: dict[int, int] = {}  # file id -> dataset id, taken until its worker ends
        self._flights: dict[int, _Flight] = {}
        self._landed: list[_Landed] = []
        self._landing = asyncio.Event()
        # One query, not one per dataset the journal has known in a year of cards.
        self._paused = journal.memo_of_every_dataset(PAUSED_MEMO)
        # Datasets whose failed files were told (needs_attention), until its failed files
        # are retried: one notification per dataset, not one per file.
        self._told_failed: set[int] = set()
        self.last_tick = clock.monotonic()  # the watchdog's proof that this loop turns
        self._ensured: set[int] = set()
        self._wake = asyncio.Event()
        self.meter = RateMeter()

    def wake(self) -> None:
        """New work may be due (a file was hashed, a retry was asked for)."""
        self._wake.set()

    def retried(self, dataset_id: int | None) -> None:
        """Failed files were put back (one dataset's, or all): a new failure is told again."""
        if dataset_id is None:
            self._told_failed.clear()
        else:
            self._told_failed.discard(dataset_id)
        self._wake.set()

    def in_flight(self) -> dict[int, int]:
        """Bytes sent so far of each in-flight file, by dataset id."""
        result: dict[int, int] = {}
        for flight in self._flights.values():
            ds = flight.row.dataset_id
            result[ds] = result.get(ds, 0) + flight.transfer.sent
        for landed in self._landed:
            ds = landed.row.dataset_id
            result[ds] = result.get(ds, 0) + landed.item.size
        return result

    def cancel_dataset(self, dataset_id: int, reason: str) -> None:
        """Abort the dataset's in-flight transfers (they go back to waiting)."""
        for flight in list(self._flights.values()):
            if flight.row.dataset_id == dataset_id:
                flight.transfer.abort(reason)
                if flight.task is not None:
                    flight.task.cancel(reason)

    async def run(self) -> None:
        """Dispatch and upload until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._dispatch())
                group.create_task(self._settle_landed())
                group.create_task(self._watch_stalls())
                for _ in range(self._settings.concurrency):
                    group.create_task(self._worker())
        finally:
            while not self._queue.empty():  # taken, but no worker began them
                self._journal.release(self._queue.get_nowait().id)

    async def _dispatch(self) -> None:
        while True:
            self.last_tick = self._clock.monotonic()
            self._wake.clear()
            # Files are taken (marked uploading) only for workers free to begin them, so a file
            # is never called uploading while it waits for a worker; the workers that a batch
            # of small images frees together are given their next files in one statement.
            room = self._idle - self._queue.qsize()
            rows = []
            if room > 0 and len(self._landed) < LANDED_MAX:
                busy: dict[int, int] = {}
                for dataset_id in self._claimed.values():
                    busy[dataset_id] = busy.get(dataset_id, 0) + 1
                rows = self._journal.take_uploads(self._clock.time(), room, self._claimed, busy)
            for row in rows:
                self._claimed[row.id] = row.dataset_id
                self._queue.put_nowait(row)
            if rows:
                await asyncio.sleep(0)  # the workers begin them before the next look
                continue
            # With no worker free, a worker that frees up wakes this loop: no need to look
            # for when parked files are due. Files the workers hold (a quick retry's wait)
            # are not what this loop waits for.
            due = self._journal.next_due(self._claimed) if room > 0 else None
            wait = (
                IDLE_WAIT_S
                if due is None
                else max(0.05, min(IDLE_WAIT_S, due - self._clock.time()))
            )
            await wait_event(self._wake, wait)

    async def _worker(self) -> None:
        while True:
            self._idle += 1
            self._wake.set()  # the dispatcher has a worker to give a file to
            try:
                row = await self._queue.get()
            finally:
                self._idle -= 1
            try:
                await self._upload(row)
            finally:
                # A landed file is 'uploading' in the journal until it is recorded: the
                # dispatcher does not meet it again.
                self._claimed.pop(row.id, None)
                self._flights.pop(row.id, None)
                self._wake.set()

    async def _upload(self, row: FileRow) -> None:
        dataset = self._journal.dataset(row.dataset_id)
        if dataset.state not in ("collecting", "ready"):  # cancelled since it was taken
            self._journal.release(row.id)
            return
        target = self._targets.get(dataset.target)
        if target is None:
            # The configuration no longer names this dataset's target: wait for it to return.
            self._journal.release(row.id)
            self._journal.mark_retry(
                row.id,
                f"target {dataset.target!r} is not in the configuration",
                self._clock.time() + 60,
            )
            return
        ref = DatasetRef(dataset.id, dataset.name)
        item = UploadItem(
            path=self._locate(row),
            key=row.dspath,
            size=row.size,
            mtime_ns=row.mtime_ns,
            sha256=row.sha256 or "",
            spooled=row.spool_path is not None,
        )
        await self._upload_loop(row, dataset, target, ref, item)

    async def _upload_loop(
        self, row: FileRow, dataset: DatasetRow, target: Target, ref: DatasetRef, item: UploadItem
    ) -> None:
        """Attempts of one file: quick retries here, then parked in the journal.

        A file that failed before (taken up again from parking) gets one attempt here, then
        parks again with its next delay. A quick retry never waits longer than its own short
        backoff: a ``Retry-After`` beyond that parks the file instead of holding the worker.
        A file the target returned lands: :meth:`_settle_landed` records it.
        """
        failures = 0
        attempts = row.attempts  # the first one counted when the dispatcher took the file
        quick = self._settings.quick_retries if attempts <= 1 else 0
        while True:
            if failures:
                attempts += 1
                self._journal.mark_uploading(row.id)
            try:
                key = await self._attempt(target, ref, row, item)
            except asyncio.CancelledError:
                self._journal.release(row.id)
                raise
            except (
                SourceError,
                PermanentTargetError,
                TargetPausedError,
                TargetWaitError,
                _CancelledError,
            ) as exc:
                self._settle(row, dataset, item, exc, attempts)
                return
            except TargetError as exc:
                failures += 1
                if attempts >= self._settings.attempts:
                    self._fail(row, dataset, item, str(exc), attempts)
                    return
                delay = self._backoff.delay(failures, exc.retry_after)
                if failures > quick or delay > self._backoff.ceiling(failures):
                    delay = self._backoff.delay(max(attempts, 1), exc.retry_after)
                    self._park(row, dataset.name, item, exc, attempts, delay)
                    return
                self._journal.mark_retry(row.id, str(exc), 0)
                await asyncio.sleep(delay)
                if not self._still_wanted(row):
                    return  # cancelled, or moved to the folder's next dataset, meanwhile
                continue
            self._landed.append(_Landed(row, dataset, item, target, key, attempts))
            self._landing.set()
            return

    def _still_wanted(self, row: FileRow) -> bool:
        """Whether a file waiting between quick retries is still to go as it was taken."""
        current = self._journal.find_file(row.id)
        return (
            current is not None
            and current.status == "waiting"
            and current.dataset_id == row.dataset_id
            and self._journal.dataset(row.dataset_id).state in ("collecting", "ready")
        )

    async def _settle_landed(self) -> None:
        """Make the files that landed durable, a batch at a time, then record them uploaded.

        Files landing while a batch is made durable wait for the next one, so under load a
        batch holds as many files as the workers finish in one sync.
        """
        try:
            while True:
                await self._landing.wait()
                if len(self._landed) < GATHER_FILES:
                    await asyncio.sleep(GATHER_S)
                self._landing.clear()
                while self._landed:
                    await self._settle_batch(list(self._landed))
        except asyncio.CancelledError:
            for landed in self._landed:  # stopping: the next start sends them again
                self._journal.release(landed.row.id)
            raise

    async def _settle_batch(self, batch: list[_Landed]) -> None:
        """One durability batch: every file in it returned before make_durable was called."""
        errors: dict[str, TargetError] = {}
        stall = self._settings.stall_s
        for target in {landed.target.name: landed.target for landed in batch}.values():
            try:
                # A share that hangs in its sync stalls the batch as a transfer would.
                await asyncio.wait_for(target.make_durable(), stall)
            except TargetError as exc:
                errors[target.name] = exc
            except TimeoutError:
                errors[target.name] = _StalledError(
                    f"stalled: {target.name} did not confirm the files were stored"
                    f" within {stall:g} s"
                )
        del self._landed[: len(batch)]
        uploaded = [landed for landed in batch if landed.target.name not in errors]
        self._journal.mark_all_uploaded(
            [(landed.row, landed.key) for landed in uploaded], self._clock.time()
        )
        for landed in batch:
            error = errors.get(landed.target.name)
            if error is None:
                self._uploaded(landed)
            else:
                self._not_durable(landed, error)
        if uploaded:
            self._on_uploaded([landed.row for landed in uploaded])
        self._wake.set()

    def _uploaded(self, landed: _Landed) -> None:
        """Say that a file recorded as uploaded is; a paused dataset is signed in again."""
        dataset, item = landed.dataset, landed.item
        message = self._paused.pop(dataset.id, None)
        if message is not None:  # signed in again
            if self._journal.dataset(dataset.id).detail == message:
                self._journal.set_dataset_detail(dataset.id, None)
            self._journal.put_memo(dataset.id, PAUSED_MEMO, None)
            log.info("target resumed", dataset=dataset.name, target=dataset.target)
        log.info(
            "file uploaded",
            dataset=dataset.name,
            **_where(landed.row, item),
            sha256=item.sha256,
            bytes=item.size,
            attempt=landed.attempts,
            key=os.fsdecode(landed.key),
        )

    def _not_durable(self, landed: _Landed, exc: TargetError) -> None:
        """The target could not make a batch durable: its files count a failed attempt."""
        row, dataset, item = landed.row, landed.dataset, landed.item
        if isinstance(exc, PermanentTargetError) or landed.attempts >= self._settings.attempts:
            self._fail(row, dataset, item, str(exc), landed.attempts)
            return
        delay = self._backoff.delay(max(landed.attempts, 1), exc.retry_after)
        self._park(row, dataset.name, item, exc, landed.attempts, delay)

    def _park(
        self,
        row: FileRow,
        dataset: str,
        item: UploadItem,
        exc: TargetError,
        attempts: int,
        delay: float,
    ) -> None:
        """A transient failure: the file waits in the journal for ``delay`` seconds."""
        self._journal.mark_retry(row.id, str(exc), self._clock.time() + delay)
        log.info(
            "upload parked",
            dataset=dataset,
            **_where(row, item),
            attempt=attempts,
            retry_in_s=round(delay, 1),
            error=str(exc),
        )

    def _settle(
        self,
        row: FileRow,
        dataset: DatasetRow,
        item: UploadItem,
        exc: SourceError | TargetError,
        attempts: int,
    ) -> None:
        """An attempt that ended in a way retrying at once cannot help."""
        if isinstance(exc, FileChangedError):
            self._journal.rehash(row.id, str(exc))
            self._on_changed(row)
            log.info("file changed; waiting for it to settle", **_where(row, item))
        elif isinstance(exc, SourceError):
            self._source_failed(row, dataset, item, exc, attempts)
        elif isinstance(exc, PermanentTargetError):
            self._fail(row, dataset, item, str(exc), attempts)
        elif isinstance(exc, TargetWaitError):
            # The target holds the dataset back a while (nothing was sent): no attempt spent.
            self._journal.release(row.id)
            wait = max(exc.retry_after or 0.0, 1.0)
            self._journal.mark_retry(row.id, str(exc), self._clock.time() + wait)
        elif isinstance(exc, TargetPausedError):
            # Nothing can go until the operator acts: wait without using up attempts.
            self._journal.release(row.id)
            self._journal.mark_retry(row.id, str(exc), self._clock.time() + PAUSE_S)
            if self._paused.get(dataset.id) != str(exc):
                self._paused[dataset.id] = str(exc)
                self._journal.put_memo(dataset.id, PAUSED_MEMO, str(exc))
                self._journal.set_dataset_detail(dataset.id, str(exc))
                log.warning("target paused", dataset=dataset.name, reason=str(exc))
                self._on_attention(dataset, str(exc))
        else:  # the engine aborted the transfer (cancel): not the file's fault
            self._journal.release(row.id)

    async def _attempt(
        self, target: Target, ref: DatasetRef, row: FileRow, item: UploadItem
    ) -> bytes:
        transfer = Transfer(
            throttle=self._throttle,
            on_bytes=lambda n: self.meter.add(ref.id, n),
            clock=self._clock.monotonic,
        )
        self._flights[row.id] = flight = _Flight(row, transfer)
        if ref.id not in self._ensured:
            await target.ensure_dataset(ref)
            self._ensured.add(ref.id)
        task = asyncio.create_task(target.upload(ref, item, transfer))
        flight.task = task
        try:
            key = await task
        except asyncio.CancelledError:
            this = asyncio.current_task()
            if (this is not None and this.cancelling()) or not transfer.aborted:
                transfer.abort("daemon stopping")
                task.cancel()
                raise
            key = b""  # the engine cancelled the upload itself (_watch_stalls, cancel_dataset)
        if flight.stalled:
            raise _StalledError(transfer.abort_reason)
        if transfer.aborted:
            raise _CancelledError(transfer.abort_reason)
        return key

    async def _watch_stalls(self) -> None:
        """Abort every upload that made no progress for ``stall_s``: one watch for all.

        (A timed wait per upload cost each small image a timer and a second future.)
        """
        while True:
            stall = self._settings.stall_s
            await asyncio.sleep(min(1.0, stall / 4))
            now = self._clock.monotonic()
            for flight in list(self._flights.values()):
                task = flight.task
                if task is None or task.done() or now - flight.transfer.last_progress <= stall:
                    continue
                flight.stalled = True
                flight.transfer.abort(f"stalled: no progress for {stall:g} s")
                task.cancel()

    def _source_failed(
        self, row: FileRow, dataset: DatasetRow, item: UploadItem, exc: SourceError, attempts: int
    ) -> None:
        if row.spool_path is not None:
            # The spool's copy is unreadable (deleted, a disk error): the card has the file.
            self._journal.set_spool(row.id, None)
            self._fail(row, dataset, item, f"{exc}; `dronesync retry` reads it from the card", 1)
            return
        if not self._source_online(row.volume):
            # The card was pulled or the share went away: not the file's fault.
            self._journal.release(row.id)
            log.info("upload paused: source offline", dataset=dataset.name, **_where(row, item))
            return
        self._fail(row, dataset, item, str(exc), attempts)

    def _fail(
        self, row: FileRow, dataset: DatasetRow, item: UploadItem, error: str, attempts: int
    ) -> None:
        """The file is failed; the first failure of a dataset sends ``needs_attention``."""
        self._journal.mark_failed(row.id, error)
        log.warning(
            "file failed", dataset=dataset.name, **_where(row, item), attempt=attempts, error=error
        )
        if dataset.id not in self._told_failed:
            self._told_failed.add(dataset.id)
            self._on_attention(
                dataset, f"{_text(row.dspath)} failed: {error}; `dronesync retry` it"
            )


def _text(raw: bytes) -> str:
    """A path for people: undecodable bytes shown as escapes, never an error."""
    return raw.decode("utf-8", "backslashreplace")


def _where(row: FileRow, item: UploadItem) -> dict[str, str]:
    """A file as log events name it: its source path, and the copy read when it is one."""
    fields = {"file": _text(os.fsencode(row.volume) + b"/" + row.relpath)}
    if item.spooled:
        fields["copy"] = str(item.path)
    return fields


class _StalledError(TransientTargetError):
    """A transfer made no progress for ``stall_s``: transient."""


class _CancelledError(TargetError):
    """The engine aborted the transfer (dataset cancelled): not the file's fault."""
