"""One file's upload: its attempts, a few quick retries, and the watch for stalled transfers.

A file gets a few quick in-process retries (tier 1), then is parked in the journal with
``next_attempt_at`` (tier 2) or failed when attempts are spent or the error is permanent. A
file taken up again from parking gets one attempt and parks again with its next delay: a
worker never sleeps longer than a quick retry, so a long outage holds no worker. A transfer
with no progress for ``stall_s`` is aborted and counts as a transient failure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.clock import Clock
from daemon.config import UploadSettings
from daemon.errors import (
    PermanentTargetError,
    SourceError,
    TargetError,
    TargetPausedError,
    TargetWaitError,
)
from daemon.journal import DatasetRow, FileRow, Journal
from daemon.targets.base import DatasetRef, Target, Transfer, UploadItem
from daemon.upload.landing import Landed, Landing
from daemon.upload.meter import RateMeter
from daemon.upload.outcomes import AbortedError, Outcomes, StalledError
from daemon.upload.ratelimit import TokenBucket

# A file's refusals in a row are bad luck while the target is up and the target's recent
# refusal rate makes such a run expected of at least this share of a file among its recent
# attempts: at 30 % refused over 256 attempts, up to seven in a row; for a file refused
# among files that go through, two or three.
SURPRISE = 0.05
_RECENT = 256  # a target's attempts its refusal rate is taken over
# The highest refusal rate a target's run of refusals is judged by: an earlier outage's
# refusals must not make the next outage's run look likely. At most twelve in a row.
_RATE_CAP = 0.5
# Files whose last failure is remembered; beyond, the oldest are forgotten (they then count
# as failing first in this process).
_FAILURES_KEPT = 4096


@dataclass(slots=True)
class _Flight:
    row: FileRow
    transfer: Transfer
    task: asyncio.Task[bytes] | None = None
    stalled: bool = False  # aborted by watch_stalls


class Uploader:
    """Uploads one file at a time per worker; what lands goes to :class:`Landing`."""

    def __init__(
        self,
        journal: Journal,
        targets: dict[str, Target],
        settings: UploadSettings,
        clock: Clock,
        outcomes: Outcomes,
        landing: Landing,
        locate: Callable[[FileRow], Path],
        others_due: Callable[[], bool] = lambda: False,
    ) -> None:
        """``others_due``: whether another file is due, for a worker a quick retry would hold."""
        self._journal = journal
        self._others_due = others_due
        self._targets = targets
        self._settings = settings
        self._clock = clock
        self._outcomes = outcomes
        self._landing = landing
        self._locate = locate
        self._throttle = TokenBucket(settings.bandwidth_limit) if settings.bandwidth_limit else None
        self.flights: dict[int, _Flight] = {}
        self._ensured: set[int] = set()
        # When an upload last went through, per target, and when each failing file last
        # failed: a file refused with uploads going through since its last refusal met bad
        # luck, not an outage.
        self._went_through: dict[str, float] = {}
        self._failed_at: dict[int, float] = {}
        self._recent: dict[str, deque[bool]] = {}  # per target: whether each attempt failed
        self.meter = RateMeter()

    def cancel_dataset(self, dataset_id: int, reason: str) -> None:
        """Abort the dataset's in-flight transfers (they go back to waiting)."""
        for flight in list(self.flights.values()):
            if flight.row.dataset_id == dataset_id:
                flight.transfer.abort(reason)
                if flight.task is not None:
                    flight.task.cancel(reason)

    async def upload(self, row: FileRow) -> None:
        """Upload one file the dispatcher took, with its quick retries."""
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
            seal=row.seal,
        )
        await self._upload_loop(row, dataset, target, ref, item)

    async def _upload_loop(
        self, row: FileRow, dataset: DatasetRow, target: Target, ref: DatasetRef, item: UploadItem
    ) -> None:
        """Attempts of one file: quick retries here, then parked in the journal.

        A file that failed before (taken up again from parking) gets one attempt here, then
        parks again with its next delay. A quick retry never waits longer than its own short
        backoff: a ``Retry-After`` beyond that parks the file instead of holding the worker.
        Nor does it wait while another file is due: the file parks and the worker sends the
        next one (a worker sleeping a retry left the link idle). A file the target returned
        lands: :class:`Landing` records it.

        A file's first failures wait longer each time only in an outage: when an upload to
        the target went through since the file's last failure, or the target's run of
        refusals is no longer than its rate before the run makes likely (the last files of a
        dataset, with nothing else in flight), the target is up and the failure was this
        request's bad luck, so the wait is a first failure's. (A fixed count of the target's
        failures in a row misreads a server that refuses at once and accepts slowly: several
        refusals land between two uploads while it is up.) Luck runs out when the file has
        failed more times in a row than the target's recent refusal rate makes likely
        (:data:`SURPRISE`): then it is the file, and it backs off on its own count, whatever
        the others do, as does one with no attempt of the target remembered in this process
        (after a restart or a reload): an outage's backoff carries on.
        """
        outcomes, backoff = self._outcomes, self._outcomes.backoff
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
                AbortedError,
            ) as exc:
                outcomes.settle(row, dataset, item, exc, attempts)
                return
            except TargetError as exc:
                failures += 1
                name = dataset.target
                self._note(name, failed=True)
                up = self._up_since_last_failure(row.id, name) or self._refusing_as_usual(name)
                if attempts >= self._settings.attempts:
                    self._failed_at.pop(row.id, None)
                    outcomes.fail(row, dataset, item, str(exc), attempts)
                    return
                lucky = up and self._bad_luck(name, attempts)
                step = 1 if lucky else failures
                delay = backoff.delay(step, exc.retry_after)
                if failures > quick or delay > backoff.ceiling(step) or self._others_due():
                    parked = 1 if lucky else attempts
                    delay = backoff.delay(max(parked, 1), exc.retry_after)
                    outcomes.park(row, dataset.name, item, exc, attempts, delay)
                    return
                self._journal.mark_retry(row.id, str(exc), 0)
                await self._clock.sleep(delay)
                if not self._still_wanted(row):
                    return  # cancelled, or moved to the folder's next dataset, meanwhile
                continue
            self._went_through[dataset.target] = self._clock.monotonic()
            self._note(dataset.target, failed=False)
            self._failed_at.pop(row.id, None)
            self._landing.land(Landed(row, dataset, item, target, key, attempts))
            return

    def _note(self, target: str, *, failed: bool) -> None:
        recent = self._recent.get(target)
        if recent is None:
            recent = self._recent[target] = deque(maxlen=_RECENT)
        recent.append(failed)

    def _bad_luck(self, target: str, failures: int) -> bool:
        """Whether ``failures`` refusals of one file in a row are what luck gives.

        That is, whether the target's refusal rate over its recent attempts makes such a run
        expected of at least :data:`SURPRISE` of a file among those attempts.
        """
        recent = self._recent.get(target)
        if not recent:
            return False
        return _expected(len(recent), sum(recent) / len(recent), failures)

    def _refusing_as_usual(self, target: str) -> bool:
        """Whether the target's current run of refusals is one its earlier rate gives.

        The last files of a dataset, refused with nothing else in flight, see no upload go
        through between two of their refusals; the target is still up while its run of
        refusals is no longer than its refusal rate before the run (at most
        :data:`_RATE_CAP`) makes likely. An outage soon makes it longer: after seven at 30 %
        refused, twelve at most (a target that never refused is down at its first).
        """
        recent = self._recent.get(target)
        if not recent:
            return False
        run = 0
        for failed in reversed(recent):
            if not failed:
                break
            run += 1
        before = len(recent) - run
        rate = min((sum(recent) - run) / before, _RATE_CAP) if before else 0.0
        return _expected(before, rate, run)

    def _up_since_last_failure(self, file_id: int, target: str) -> bool:
        """Whether an upload to ``target`` went through since this file last failed; notes now."""
        now = self._clock.monotonic()
        before = self._failed_at.pop(file_id, None)
        self._failed_at[file_id] = now  # last: the dict stays in the order of failures
        if len(self._failed_at) > _FAILURES_KEPT:
            del self._failed_at[next(iter(self._failed_at))]
        went_through = self._went_through.get(target)
        return before is not None and went_through is not None and went_through > before

    def _still_wanted(self, row: FileRow) -> bool:
        """Whether a file waiting between quick retries is still to go as it was taken."""
        current = self._journal.find_file(row.id)
        return (
            current is not None
            and current.status == "waiting"
            and current.dataset_id == row.dataset_id
            and self._journal.dataset(row.dataset_id).state in ("collecting", "ready")
        )

    async def _attempt(
        self, target: Target, ref: DatasetRef, row: FileRow, item: UploadItem
    ) -> bytes:
        transfer = Transfer(
            throttle=self._throttle,
            on_bytes=lambda n: self.meter.add(ref.id, n),
            clock=self._clock.monotonic,
        )
        self.flights[row.id] = flight = _Flight(row, transfer)
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
            key = b""  # the engine cancelled the upload itself (watch_stalls, cancel_dataset)
        if flight.stalled:
            raise StalledError(transfer.abort_reason)
        if transfer.aborted:
            raise AbortedError(transfer.abort_reason)
        return key

    async def watch_stalls(self) -> None:
        """Abort every upload that made no progress for ``stall_s``: one watch for all.

        (A timed wait per upload cost each small image a timer and a second future.)
        """
        while True:
            stall = self._settings.stall_s
            await self._clock.sleep(min(1.0, stall / 4))
            now = self._clock.monotonic()
            for flight in list(self.flights.values()):
                task = flight.task
                if task is None or task.done() or now - flight.transfer.last_progress <= stall:
                    continue
                flight.stalled = True
                flight.transfer.abort(f"stalled: no progress for {stall:g} s")
                task.cancel()


def _expected(attempts: int, rate: float, run: int) -> bool:
    """Whether a run of ``run`` refusals is expected of :data:`SURPRISE` of ``attempts``."""
    return attempts * rate**run >= SURPRISE
