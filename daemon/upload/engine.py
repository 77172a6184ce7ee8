"""The upload engine: a dispatcher and ``concurrency`` workers around any target.

The dispatcher takes due files from the journal, sharing the workers fairly between datasets
(the next file comes from the dataset with the fewest uploads going). Each worker uploads one
file at a time (:mod:`attempt`: quick retries, stalls); what becomes of a failed attempt is
:mod:`outcomes`' (parked, failed, given back), and an upload the target returned *lands*
(:mod:`landing`: made durable in batches, then recorded). Stopping (or cancelling a dataset)
puts in-flight files back to waiting without counting the attempt. The first failed file of a
dataset asks for attention (``on_attention``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from daemon.clock import Clock, wait_event
from daemon.config import UploadSettings
from daemon.journal import DatasetRow, FileRow, Journal
from daemon.targets.base import Target
from daemon.upload.attempt import Uploader
from daemon.upload.landing import Landing
from daemon.upload.meter import RateMeter
from daemon.upload.outcomes import Outcomes, Sources
from daemon.upload.retry import Backoff

__all__ = ["IDLE_WAIT_S", "Sources", "UploadEngine", "file_path"]

IDLE_WAIT_S = 5.0


def file_path(row: FileRow) -> Path:
    """Where an upload reads the file: its copy in the spool, else the source itself."""
    if row.spool_path is not None:
        return Path(os.fsdecode(row.spool_path))
    return Path(os.fsdecode(os.fsencode(row.volume) + b"/" + row.relpath))


class UploadEngine:
    """Moves waiting files to their targets.

    ``wake`` is set by whoever adds work (the hasher recording files): the dispatcher looks
    for due files at once instead of at its next idle look.
    """

    def __init__(
        self,
        journal: Journal,
        targets: dict[str, Target],
        settings: UploadSettings,
        clock: Clock,
        sources: Sources,
        *,
        wake: asyncio.Event | None = None,
        locate: Callable[[FileRow], Path] = file_path,
        backoff: Backoff | None = None,
        on_attention: Callable[[DatasetRow, str], None] | None = None,
        on_uploaded: Callable[[list[FileRow]], None] | None = None,
    ) -> None:
        self._journal = journal
        self._settings = settings
        self._clock = clock
        self._wake = wake or asyncio.Event()
        self._outcomes = Outcomes(
            journal,
            settings,
            clock,
            backoff or Backoff.from_settings(settings),
            sources,
            on_attention,
        )
        self._landing = Landing(
            journal,
            clock,
            settings.stall_s,
            self._outcomes,
            on_uploaded=on_uploaded or (lambda rows: None),
            on_settled=self._wake.set,
        )
        self._uploader = Uploader(
            journal,
            targets,
            settings,
            clock,
            self._outcomes,
            self._landing,
            locate,
            others_due=self._others_due,
        )
        # Files taken from the journal, each for a worker waiting for one (``_idle``).
        self._queue: asyncio.Queue[FileRow] = asyncio.Queue()
        self._idle = 0
        self._claimed: dict[int, int] = {}  # file id -> dataset id, taken until its worker ends
        self.last_tick = clock.monotonic()  # the watchdog's proof that this loop turns

    @property
    def meter(self) -> RateMeter:
        """Bytes sent per dataset, and their rates."""
        return self._uploader.meter

    def wake(self) -> None:
        """New work may be due (a file was hashed, a retry was asked for)."""
        self._wake.set()

    def retried(self, dataset_id: int | None) -> None:
        """Failed files were put back (one dataset's, or all): a new failure is told again."""
        self._outcomes.retried(dataset_id)
        self._wake.set()

    def in_flight(self) -> dict[int, int]:
        """Bytes sent so far of each in-flight file, by dataset id."""
        result: dict[int, int] = {}
        for flight in self._uploader.flights.values():
            ds = flight.row.dataset_id
            result[ds] = result.get(ds, 0) + flight.transfer.sent
        for landed in self._landing.landed:
            ds = landed.row.dataset_id
            result[ds] = result.get(ds, 0) + landed.item.size
        return result

    def cancel_dataset(self, dataset_id: int, reason: str) -> None:
        """Abort the dataset's in-flight transfers (they go back to waiting)."""
        self._uploader.cancel_dataset(dataset_id, reason)

    async def run(self) -> None:
        """Dispatch and upload until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._dispatch())
                group.create_task(self._landing.run())
                group.create_task(self._uploader.watch_stalls())
                for _ in range(self._settings.concurrency):
                    group.create_task(self._worker())
        finally:
            while not self._queue.empty():  # taken, but no worker began them
                self._journal.release(self._queue.get_nowait().id)

    def _others_due(self) -> bool:
        """Whether a file no worker holds is due now (taken and queued, or in the journal)."""
        if not self._queue.empty():
            return True
        due = self._journal.next_due(self._claimed)
        return due is not None and due <= self._clock.time()

    async def _dispatch(self) -> None:
        while True:
            self.last_tick = self._clock.monotonic()
            self._wake.clear()
            # Files are taken (marked uploading) only for workers free to begin them, so a file
            # is never called uploading while it waits for a worker; the workers that a batch
            # of small images frees together are given their next files in one statement.
            room = self._idle - self._queue.qsize()
            rows = []
            if room > 0 and not self._landing.full:
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
            await wait_event(self._wake, wait, self._clock)

    async def _worker(self) -> None:
        while True:
            self._idle += 1
            self._wake.set()  # the dispatcher has a worker to give a file to
            try:
                row = await self._queue.get()
            finally:
                self._idle -= 1
            try:
                await self._uploader.upload(row)
            finally:
                # A landed file is 'uploading' in the journal until it is recorded: the
                # dispatcher does not meet it again.
                self._claimed.pop(row.id, None)
                self._uploader.flights.pop(row.id, None)
                self._wake.set()
