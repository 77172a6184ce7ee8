"""Landing: uploads the target returned are made durable together, then recorded as uploaded.

A worker whose upload returned goes on to the next file; the files that landed meanwhile wait
here for one :meth:`Target.make_durable` per target (one ``syncfs`` for the directory target)
before any of them is called uploaded. A file is therefore never recorded before it is safe,
and small images do not each wait for a sync of their own while holding a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from daemon.clock import Clock
from daemon.durable import GATHER_FILES, GATHER_S
from daemon.errors import TargetError
from daemon.journal import DatasetRow, FileRow, Journal
from daemon.targets.base import Target, UploadItem
from daemon.upload.outcomes import Outcomes, StalledError

# The most uploads that may wait for durability at once: the dispatcher hands out no more.
LANDED_MAX = 256


@dataclass(slots=True)
class Landed:
    """An upload the target returned, waiting for the next durability batch to be recorded."""

    row: FileRow
    dataset: DatasetRow
    item: UploadItem
    target: Target
    key: bytes
    attempts: int


class Landing:
    """The uploads waiting for durability, and the loop that records them in batches."""

    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        stall_s: float,
        outcomes: Outcomes,
        *,
        on_uploaded: Callable[[list[FileRow]], None],
        on_settled: Callable[[], None],
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._stall_s = stall_s
        self._outcomes = outcomes
        self._on_uploaded = on_uploaded
        self._on_settled = on_settled  # a batch was recorded: the dispatcher may hand out more
        self.landed: list[Landed] = []
        self._landing = asyncio.Event()

    @property
    def full(self) -> bool:
        """Whether as many uploads wait for durability as may."""
        return len(self.landed) >= LANDED_MAX

    def land(self, landed: Landed) -> None:
        """An upload returned: it is recorded with the next durability batch."""
        self.landed.append(landed)
        self._landing.set()

    async def run(self) -> None:
        """Make the files that landed durable, a batch at a time, then record them uploaded.

        Files landing while a batch is made durable wait for the next one, so under load a
        batch holds as many files as the workers finish in one sync.
        """
        try:
            while True:
                await self._landing.wait()
                if len(self.landed) < GATHER_FILES:
                    await self._clock.sleep(GATHER_S)
                self._landing.clear()
                while self.landed:
                    await self._settle_batch(list(self.landed))
        except asyncio.CancelledError:
            for landed in self.landed:  # stopping: the next start sends them again
                self._journal.release(landed.row.id)
            raise

    async def _settle_batch(self, batch: list[Landed]) -> None:
        """One durability batch: every file in it returned before make_durable was called."""
        errors: dict[str, TargetError] = {}
        stall = self._stall_s
        for target in {landed.target.name: landed.target for landed in batch}.values():
            try:
                # A share that hangs in its sync stalls the batch as a transfer would.
                async with self._clock.timeout(stall):
                    await target.make_durable()
            except TargetError as exc:
                errors[target.name] = exc
            except TimeoutError:
                errors[target.name] = StalledError(
                    f"stalled: {target.name} did not confirm the files were stored"
                    f" within {stall:g} s"
                )
        del self.landed[: len(batch)]
        uploaded = [landed for landed in batch if landed.target.name not in errors]
        self._journal.mark_all_uploaded(
            [(landed.row, landed.key) for landed in uploaded], self._clock.time()
        )
        for landed in batch:
            error = errors.get(landed.target.name)
            row, dataset, item = landed.row, landed.dataset, landed.item
            if error is None:
                self._outcomes.uploaded(row, dataset, item, landed.key, landed.attempts)
            else:
                self._outcomes.not_durable(row, dataset, item, error, landed.attempts)
        if uploaded:
            self._on_uploaded([landed.row for landed in uploaded])
        self._on_settled()
