"""The processing trigger on a fake clock: the quiet period, start retries, and stuck starts.

A real journal and the in-memory target; time moves only when the test moves it, so each
check says exactly when, in seconds of the dataset's life, processing may and may not start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import TransientTargetError
from daemon.journal import DatasetRow, Journal
from daemon.processing import ProcessingController
from daemon.targets.base import DatasetRef
from daemon.targets.memory import MemoryTarget
from tests.fakeclock import FakeClock

QUIET_S = 4.0


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "journal.sqlite3")
    yield opened
    opened.close()


def _uploaded_dataset(journal: Journal, clock: FakeClock, target: str, count: int = 3) -> int:
    """A dataset whose ``count`` files are all uploaded, its last activity now."""
    now = clock.time()
    ds = journal.open_dataset(
        volume="/cards/a",
        folder=b"",
        name="survey",
        target=target,
        source="/cards/*",
        auto_process=True,
        quiet_s=QUIET_S,
        now=now,
    )
    for i in range(count):
        file_id = journal.add_file(
            dataset_id=ds.id,
            volume="/cards/a",
            relpath=f"DJI_{i}.JPG".encode(),
            dspath=f"DJI_{i}.JPG".encode(),
            size=100,
            mtime_ns=1,
            now=now,
        )
        journal.record_hash(
            file_id,
            dataset_id=ds.id,
            size=100,
            mtime_ns=1,
            sha256=f"{i:064x}",
            duplicate_scope="target",
            now=now,
        )
    rows = journal.take_uploads(now, count, [])
    journal.mark_all_uploaded([(row, row.dspath) for row in rows], now)
    return ds.id


async def _tick(processing: ProcessingController) -> None:
    """One pass, and the turns of the loop its start task needs (the target answers at once)."""
    await processing.tick()
    for _ in range(5):
        await asyncio.sleep(0)


def test_processing_starts_once_the_dataset_is_quiet_for_quiet_s(journal: Journal) -> None:
    clock = FakeClock()
    target = MemoryTarget()
    ds = _uploaded_dataset(journal, clock, target.name)
    processing = ProcessingController(journal, {target.name: target}, clock, busy=set)

    async def main() -> list[float]:
        started: list[float] = []
        for _ in range(100):  # ten seconds, a tenth at a time
            clock.advance(0.1)
            await _tick(processing)
            if journal.dataset(ds).state != "collecting" and not started:
                started.append(clock.monotonic())
            if clock.monotonic() == pytest.approx(1002.5):
                journal.touch_dataset(ds, clock.time())  # a file changed at 2.5 s
        return started

    start = clock.monotonic()
    started = asyncio.run(main())
    assert [t - start for t in started] == [pytest.approx(2.5 + QUIET_S)]
    assert target.processed == [("survey", [b"DJI_0.JPG", b"DJI_1.JPG", b"DJI_2.JPG"])]
    assert journal.dataset(ds).state == "processed"


def test_files_still_settling_or_being_read_hold_processing_back(journal: Journal) -> None:
    clock = FakeClock()
    target = MemoryTarget()
    ds = _uploaded_dataset(journal, clock, target.name)
    busy = {ds}
    processing = ProcessingController(journal, {target.name: target}, clock, busy=lambda: busy)

    async def main() -> None:
        clock.advance(QUIET_S * 10)
        await _tick(processing)
        assert journal.dataset(ds).state == "collecting"
        busy.clear()  # the last file was read and recorded
        await _tick(processing)
        assert journal.dataset(ds).state in ("processing", "processed")

    asyncio.run(main())


class _BusyNode(MemoryTarget):
    """A target that refuses the first ``refusals`` starts as busy; records when each came."""

    def __init__(self, clock: FakeClock, refusals: int) -> None:
        super().__init__("node")
        self._clock = clock
        self.refusals = refusals
        self.starts: list[float] = []

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        self.starts.append(self._clock.monotonic())
        if self.refusals:
            self.refusals -= 1
            raise TransientTargetError("node busy")
        return await super().start_processing(dataset, keys)


def test_a_start_the_target_refuses_is_tried_again_with_backoff_and_told_once_stuck(
    journal: Journal,
) -> None:
    clock = FakeClock()
    target = _BusyNode(clock, refusals=4)
    ds = _uploaded_dataset(journal, clock, target.name)
    told: list[tuple[str, str | None]] = []

    def notify(event: str, dataset: DatasetRow, detail: str | None) -> None:
        told.append((event, detail))

    processing = ProcessingController(
        journal,
        {target.name: target},
        clock,
        busy=set,
        notify=notify,
        retry_s=5,
        retry_max_s=300,
        stuck_s=30,
    )
    clock.advance(QUIET_S)
    first = clock.monotonic()
    details: list[str | None] = []

    async def main() -> None:
        for _ in range(100):  # a hundred seconds, one at a time
            await _tick(processing)
            details.append(journal.dataset(ds).detail)
            clock.advance(1)

    asyncio.run(main())
    # Waits of 5, 10, 20 and 40 s between the starts: the [upload] backoff, doubling.
    assert [t - first for t in target.starts] == [0, 5, 15, 35, 75]
    assert "processing could not start yet (node busy); trying again in 5 s" in details
    # Failing for 30 s (the fourth refusal, at 35 s) needs attention: said once.
    stuck = [detail for event, detail in told if event == "needs_attention"]
    assert stuck == [
        "needs attention: processing has not started for 35 s (node busy); trying again in 40 s"
    ]
    assert [event for event, _ in told][-2:] == ["processing_started", "processing_finished"]
    assert journal.dataset(ds).state == "processed"
