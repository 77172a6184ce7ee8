"""The processing trigger: quiet datasets start processing, and processing is followed.

A dataset is done collecting when every file is uploaded or duplicate, nothing is settling in
the stability gate or being hashed, and no file was added or changed for ``quiet_s``. Then it
starts processing by itself, or waits as ``ready`` for ``dronesync process`` when
``auto_process = false``. Failed files hold automatic processing back until retried; a manual
``process`` goes ahead with what is uploaded, and files not uploaded yet move on to the
folder's next dataset.

A start that fails for a reason a retry may fix (the target unreachable, busy, or still
settling an unclear reply) is tried again with backoff, for as long as it takes; once it
has failed for ``stuck_s`` the dataset needs attention: its detail says so and one
``needs_attention`` notification goes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from daemon.clock import Clock
from daemon.errors import DatasetResetError, TargetError, TransientTargetError, UsageError
from daemon.journal import DatasetCounts, DatasetRow, Journal
from daemon.targets.base import DatasetRef, Target

log = structlog.get_logger("dronesync.processing")

TICK_S = 0.25
# The states a tick looks at: files to watch, or processing to poll.
WATCHED_STATES = ("collecting", "ready", "processing")
COUNT_EVERY_S = 1.0


class ProcessingController:
    """Decides when datasets are processed, starts them, and polls their status."""

    def __init__(
        self,
        journal: Journal,
        targets: dict[str, Target],
        clock: Clock,
        busy: Callable[[], set[int]],
        notify: Callable[[str, DatasetRow, str | None], None] | None = None,
        *,
        retry_s: float = 5.0,
        retry_max_s: float = 300.0,
        stuck_s: float = 1800.0,
    ) -> None:
        self._journal = journal
        self._targets = targets
        self._clock = clock
        self._busy = busy
        self._notify = notify or (lambda event, ds, detail: None)
        self._polls: dict[int, float] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._held: dict[int, int] = {}
        self._not_before: dict[int, float] = {}
        self._counts: dict[int, DatasetCounts] | None = None
        self._counted_at = 0.0
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self.last_tick = clock.monotonic()  # the watchdog's proof that this loop turns
        self._start_failures: dict[int, int] = {}
        self._stuck_s = stuck_s
        # When each dataset's start first failed (this process's clock), and those told.
        self._failing_since: dict[int, float] = {}
        self._stuck_told: set[int] = set()

    async def run(self) -> None:
        """Check every dataset a few times a second, until cancelled."""
        try:
            while True:
                await self.tick()
                await self._clock.sleep(TICK_S)
        finally:
            for task in self._tasks.values():
                task.cancel()

    async def tick(self) -> None:
        """One pass over every dataset."""
        self.last_tick = self._clock.monotonic()
        now = self._clock.time()
        # Only the datasets with something to watch: a year of processed ones is not read.
        datasets = self._journal.datasets(WATCHED_STATES)
        if self._counts is None or self.last_tick - self._counted_at >= COUNT_EVERY_S:
            collecting = [d.id for d in datasets if d.state in ("collecting", "ready")]
            self._counts = self._journal.counts(collecting)
            self._counted_at = self.last_tick
        counts = self._counts
        busy = self._busy()
        for dataset in datasets:
            if dataset.id in self._tasks:
                continue
            if dataset.state in ("collecting", "ready"):
                files = counts[dataset.id].files if dataset.id in counts else {}
                self._check_collecting(dataset, files, dataset.id in busy, now)
            elif dataset.state == "processing":
                await self._poll(dataset, now)

    def _check_collecting(
        self, dataset: DatasetRow, files: dict[str, int], busy: bool, now: float
    ) -> None:
        pending = files.get("waiting", 0) + files.get("uploading", 0)
        failed = files.get("failed", 0)
        done = files.get("uploaded", 0) + files.get("duplicate", 0)
        if dataset.state == "ready" and (pending or busy):
            self._journal.set_dataset_state(dataset.id, "collecting")
            return
        if pending or busy:
            # Files still arriving or uploading: a start that failed before is not stuck.
            self._failing_since.pop(dataset.id, None)
            return
        if not (done or failed):
            return
        if failed:
            if self._held.get(dataset.id) != failed:
                self._held[dataset.id] = failed
                detail = f"{failed} failed file(s) hold processing back; `dronesync retry` them"
                self._journal.set_dataset_detail(dataset.id, detail)
                self._notify("needs_attention", dataset, detail)
            return
        self._held.pop(dataset.id, None)
        if now - dataset.last_activity_at < dataset.quiet_s:
            return
        if now < self._not_before.get(dataset.id, 0.0):
            return
        if not dataset.auto_process:
            if dataset.state != "ready":
                self._journal.set_dataset_state(
                    dataset.id, "ready", "waiting for `dronesync process`"
                )
                log.info("dataset ready", dataset=dataset.name)
            return
        # The tick's counts may be a second old.
        fresh = self._journal.counts([dataset.id]).get(dataset.id)
        if fresh is not None and (fresh.files["waiting"] or fresh.files["uploading"]):
            return
        self.start(dataset)

    def start(self, dataset: DatasetRow) -> None:
        """Start processing in its own task (what was uploaded so far)."""
        now = self._clock.time()
        if not self._journal.uploaded_keys(dataset.id):
            self._journal.set_dataset_state(
                dataset.id,
                "processed",
                "nothing to process: every file is a duplicate of one sent before",
                processing_started_at=now,
                processing_finished_at=now,
            )
            log.info("dataset has only duplicates", dataset=dataset.name)
            return
        # Recorded before the target is asked, so a crash in between is never silent.
        self._journal.set_dataset_state(
            dataset.id,
            "processing",
            "starting",
            processing_started_at=now,
            processing_finished_at=None,
            processing_handle=None,
        )
        self._tasks[dataset.id] = asyncio.create_task(self._start(dataset))

    async def _start(self, dataset: DatasetRow) -> None:
        target = self._targets.get(dataset.target)
        ref = DatasetRef(dataset.id, dataset.name)
        if target is None:
            self._tasks.pop(dataset.id, None)
            self._finish(
                dataset, "failed", f"target {dataset.target!r} is not in the configuration"
            )
            return
        try:
            handle = await target.start_processing(ref, self._journal.uploaded_keys(dataset.id))
        except DatasetResetError as exc:
            # The target starts the dataset afresh: its files are waiting again, and
            # processing follows once they are all uploaded.
            detail = self._journal.dataset(dataset.id).detail or str(exc)
            self._failing_since.pop(dataset.id, None)  # new uploads first: not stuck
            self._journal.set_dataset_state(
                dataset.id, "collecting", detail, processing_started_at=None
            )
            log.warning("processing deferred", dataset=dataset.name, reason=str(exc))
            return
        except TransientTargetError as exc:
            # The target is unreachable or busy: the dataset waits and tries again later.
            tries = self._start_failures[dataset.id] = self._start_failures.get(dataset.id, 0) + 1
            # The [upload] backoff, doubling, and never sooner than the server asked.
            delay = min(self._retry_max_s, self._retry_s * 2 ** (tries - 1))
            delay = max(delay, min(exc.retry_after or 0.0, self._retry_max_s))
            now = self._clock.time()
            self._not_before[dataset.id] = now + delay
            since = self._failing_since.setdefault(dataset.id, now)
            detail = f"processing could not start yet ({exc}); trying again in {delay:g} s"
            stuck = now - since >= self._stuck_s
            if stuck:
                detail = (
                    f"needs attention: processing has not started for"
                    f" {_duration(now - since)} ({exc}); trying again in {delay:g} s"
                )
            self._journal.set_dataset_state(
                dataset.id, "collecting", detail, processing_started_at=None
            )
            log.warning("processing not started", dataset=dataset.name, error=str(exc))
            if stuck and dataset.id not in self._stuck_told:
                self._stuck_told.add(dataset.id)
                self._notify("needs_attention", self._journal.dataset(dataset.id), detail)
            return
        except TargetError as exc:
            # Refused before it ran (a pre-flight check, a bad template): the operator must act.
            self._forget_failures(dataset.id)
            detail = f"processing could not start: {exc}"
            self._finish(dataset, "failed", detail)
            self._notify("needs_attention", self._journal.dataset(dataset.id), detail)
            return
        finally:
            self._tasks.pop(dataset.id, None)
        self._journal.set_dataset_state(
            dataset.id, "processing", "processing started", processing_handle=handle
        )
        self._forget_failures(dataset.id)
        log.info("processing started", dataset=dataset.name, target=dataset.target)
        self._notify("processing_started", dataset, None)

    def _forget_failures(self, dataset_id: int) -> None:
        """The start succeeded or was refused for good: a later failure counts afresh."""
        self._start_failures.pop(dataset_id, None)
        self._failing_since.pop(dataset_id, None)
        self._stuck_told.discard(dataset_id)

    async def _poll(self, dataset: DatasetRow, now: float) -> None:
        target = self._targets.get(dataset.target)
        if target is None or dataset.processing_handle is None:
            if dataset.processing_handle is None and dataset.id not in self._tasks:
                # Killed between "starting" and the target's answer: ask again. Every target
                # makes that safe (a project read first, a task known, a recorded pid).
                log.info("processing start resumed after an interruption", dataset=dataset.name)
                self._tasks[dataset.id] = asyncio.create_task(self._start(dataset))
            return
        if now < self._polls.get(dataset.id, 0):
            return
        self._polls[dataset.id] = now + target.poll_interval_s
        try:
            status = await target.processing_status(
                DatasetRef(dataset.id, dataset.name), dataset.processing_handle
            )
        except TargetError as exc:
            self._journal.set_dataset_detail(dataset.id, f"cannot read processing status: {exc}")
            return
        if status.state == "running":
            if status.detail and status.detail != dataset.detail:
                self._journal.set_dataset_detail(dataset.id, status.detail)
            return
        self._finish(dataset, "processed" if status.state == "done" else "failed", status.detail)

    def _finish(self, dataset: DatasetRow, state: str, detail: str | None) -> None:
        self._journal.set_dataset_state(
            dataset.id, state, detail, processing_finished_at=self._clock.time()
        )
        self._polls.pop(dataset.id, None)
        if state == "processed":
            log.info("processing finished", dataset=dataset.name, detail=detail)
            self._notify("processing_finished", dataset, detail)
        else:
            log.warning("processing failed", dataset=dataset.name, detail=detail)
            self._notify("processing_failed", dataset, detail)

    # -- operator requests -----------------------------------------------------------------

    def process_now(
        self, dataset: DatasetRow, follow_up: Callable[[DatasetRow], DatasetRow]
    ) -> str:
        """``dronesync process``: start with what is uploaded; the rest moves to a new dataset."""
        if dataset.state == "processing":
            raise UsageError(f"{dataset.name}: already processing")
        files = self._journal.counts([dataset.id]).get(dataset.id)
        unfinished = 0
        if files is not None:
            unfinished = sum(files.files[s] for s in ("waiting", "uploading", "failed"))
        if not self._journal.uploaded_keys(dataset.id):
            raise UsageError(f"{dataset.name}: no uploaded file to process yet")
        self.start(dataset)
        if unfinished:
            successor = follow_up(self._journal.dataset(dataset.id))
            moved = self._journal.move_unfinished(dataset.id, successor.id)
            return (
                f"{dataset.name}: processing started; {moved} file(s) not uploaded yet"
                f" continue in {successor.name}"
            )
        return f"{dataset.name}: processing started"


def _duration(seconds: float) -> str:
    """A short human duration: "45 s", "12 min", "3 h 05 min"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
