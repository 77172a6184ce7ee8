"""The upload engine against real targets: retries, permanent errors, stalls, cancellation.

Backoff and stall timings run on a fake clock the tests move on (tests/fakeclock.py): no test
waits for them on the real clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import time
from pathlib import Path

from daemon.clock import Clock, SystemClock
from daemon.config import UploadSettings
from daemon.errors import (
    PermanentTargetError,
    TargetPausedError,
    TargetWaitError,
    TransientTargetError,
)
from daemon.journal import FileRow, Journal
from daemon.status import render, snapshot
from daemon.targets.base import DatasetRef, Transfer, UploadItem
from daemon.targets.memory import MemoryTarget
from daemon.upload.engine import UploadEngine
from daemon.upload.retry import Backoff
from tests.fakeclock import FakeClock, run_until, until


class StallingTarget(MemoryTarget):
    """A target whose first upload sends one chunk and then hangs (a server that stalls)."""

    def __init__(self) -> None:
        super().__init__("stalling")
        self.stalls = 0

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        if self.stalls == 0:
            self.stalls += 1
            transfer.progress(1)
            await asyncio.Event().wait()  # never set: no progress, ever
        return await super().upload(dataset, item, transfer)


def _add_dataset(
    journal: Journal,
    tmp_path: Path,
    name: str,
    count: int,
    *,
    target: str = "refusing",
    folder: str | None = None,
    stem: str | None = None,
    size: int = 2_000,
) -> list[int]:
    """Another dataset of ``count`` hashed files, waiting (ids after every file before it)."""
    src = tmp_path / (folder or name)
    src.mkdir()
    ds = journal.open_dataset(
        volume=str(src),
        folder=b"",
        name=name,
        target=target,
        source=str(src),
        auto_process=True,
        quiet_s=0,
        now=time.time(),
    )
    ids = []
    for i in range(count):
        data = os.urandom(size)
        path = src / f"{stem or name}{i}.jpg"
        path.write_bytes(data)
        info = path.stat()
        file_id = journal.add_file(
            dataset_id=ds.id,
            volume=str(src),
            relpath=path.name.encode(),
            dspath=path.name.encode(),
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            now=time.time(),
        )
        journal.record_hash(
            file_id,
            dataset_id=ds.id,
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            sha256=hashlib.sha256(data).hexdigest(),
            duplicate_scope="target",
            now=time.time(),
        )
        ids.append(file_id)
    return ids


def _journal_with_files(tmp_path: Path, target: str, count: int) -> tuple[Journal, list[int]]:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    return journal, _add_dataset(
        journal, tmp_path, "ds", count, target=target, folder="src", stem="f", size=10_000
    )


def _locate(row: FileRow) -> Path:
    return Path(row.volume) / os.fsdecode(row.relpath)


class _Sources:
    """The sources as the engine sees them: always online; files said to have changed."""

    def __init__(self) -> None:
        self.changed: list[int] = []

    def is_online(self, volume: str) -> bool:
        return True

    def offer_again(self, file_id: int, volume: str, relpath: bytes) -> None:
        self.changed.append(file_id)


async def _run_until(
    engine: UploadEngine,
    journal: Journal,
    ids: list[int],
    statuses: set[str],
    clock: FakeClock | None = None,
    step_s: float = 0.05,
) -> None:
    """Run the engine until every file has one of ``statuses`` (moving ``clock`` on, if fake)."""
    task = asyncio.create_task(engine.run())

    def reached() -> bool:
        return not {journal.file(i).status for i in ids} - statuses

    try:
        if clock is None:
            await until(reached, f"files {statuses}")
        else:
            await run_until(reached, clock, step_s=step_s, what=f"files {statuses}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _engine(
    journal: Journal,
    target: MemoryTarget,
    clock: Clock | None = None,
    *,
    longest: bool = False,
    **settings: float,
) -> UploadEngine:
    """An engine on ``journal``; ``longest``: every backoff waits its whole ceiling."""
    config = UploadSettings.model_validate(
        {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **settings}
    )
    return UploadEngine(
        journal,
        {target.name: target},
        config,
        clock or SystemClock(),
        _Sources(),
        locate=_locate,
        backoff=Backoff.from_settings(config, _Longest()) if longest else None,
    )


def test_transient_errors_are_retried_until_uploaded(tmp_path: Path) -> None:
    target = MemoryTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 3)
    target.fail_next.extend(
        [
            TransientTargetError("503"),
            TransientTargetError("429", retry_after=0.05),
            TransientTargetError("reset"),
        ]
    )
    clock = FakeClock()
    asyncio.run(_run_until(_engine(journal, target, clock), journal, ids, {"uploaded"}, clock))
    assert len(target.puts) == 3  # every file stored once
    assert sum(journal.file(i).attempts for i in ids) == 6


def test_a_file_waiting_for_its_retry_leaves_its_worker_to_the_next(tmp_path: Path) -> None:
    """With other files due, a transient failure parks the file: no worker sleeps a retry."""
    target = MemoryTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 3)
    target.fail_next.append(TransientTargetError("503", retry_after=20))
    clock = FakeClock()
    engine = _engine(journal, target, clock, concurrency=1, backoff_initial_s=30, backoff_max_s=300)
    asyncio.run(_run_until(engine, journal, ids, {"uploaded"}, clock, step_s=1.0))
    # The first file's retry waited 20 s; the one worker sent the other two meanwhile.
    assert [name for _, name in target.puts] == [b"f1.jpg", b"f2.jpg", b"f0.jpg"]
    assert journal.file(ids[0]).attempts == 2


def test_the_last_file_retries_in_its_worker(tmp_path: Path) -> None:
    """With nothing else due, a quick retry is made in the worker, not parked."""
    target = MemoryTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 1)
    target.fail_next.append(TransientTargetError("503", retry_after=20))
    clock = FakeClock()
    engine = _engine(journal, target, clock, concurrency=1, backoff_initial_s=30, backoff_max_s=300)
    parked: list[float] = []

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        try:
            await until(lambda: journal.file(ids[0]).last_error == "503", "the failure")
            parked.append(journal.file(ids[0]).next_attempt_at)
            await run_until(lambda: journal.file(ids[0]).status == "uploaded", clock, step_s=1.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert parked == [0]  # waiting in its worker, not parked in the journal
    assert journal.file(ids[0]).attempts == 2


def test_permanent_error_fails_the_file_at_once_with_its_reason(tmp_path: Path) -> None:
    target = MemoryTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 1)
    target.fail_next.append(PermanentTargetError("413 payload too large"))
    asyncio.run(_run_until(_engine(journal, target), journal, ids, {"failed"}))
    row = journal.file(ids[0])
    assert row.attempts == 1
    assert row.last_error == "413 payload too large"


def test_attempts_exhausted_marks_failed_and_retry_brings_it_back(tmp_path: Path) -> None:
    target = MemoryTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 1)
    target.fail_next.extend([TransientTargetError("down")] * 3)
    clock = FakeClock()
    engine = _engine(journal, target, clock, attempts=3, quick_retries=1)
    asyncio.run(_run_until(engine, journal, ids, {"failed"}, clock))
    assert journal.file(ids[0]).attempts == 3
    assert journal.retry_failed(None) == 1
    asyncio.run(_run_until(_engine(journal, target), journal, ids, {"uploaded"}))
    assert target.puts == [("ds", b"f0.jpg")]


def test_a_stalled_transfer_is_aborted_after_stall_s_and_retried(tmp_path: Path) -> None:
    target = StallingTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 1)
    clock = FakeClock()
    engine = _engine(journal, target, clock, stall_s=60)

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        try:
            await until(lambda: target.stalls == 1, "the transfer to stall")
            clock.advance(59)  # no progress for 59 s: not stalled yet
            await asyncio.sleep(0.05)  # the stall watch looks
            assert journal.file(ids[0]).status == "uploading"
            assert journal.file(ids[0]).attempts == 1
            clock.advance(2)  # 61 s
            await run_until(lambda: journal.file(ids[0]).status == "uploaded", clock)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert target.stalls == 1
    assert journal.file(ids[0]).attempts == 2


class SlowDiskTarget(MemoryTarget):
    """A target whose durability step waits until the test lets it go, or fails once."""

    def __init__(self) -> None:
        super().__init__("disk")
        self.syncs = 0
        self.released = asyncio.Event()
        self.fail_sync: list[TransientTargetError] = []

    async def make_durable(self) -> None:
        self.syncs += 1
        await self.released.wait()
        if self.fail_sync:
            raise self.fail_sync.pop()


def test_no_file_is_called_uploaded_before_its_batch_is_durable(tmp_path: Path) -> None:
    target = SlowDiskTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 6)

    async def scenario() -> None:
        task = asyncio.create_task(_engine(journal, target).run())
        await until(lambda: len(target.puts) == 6)  # stored, none durable yet
        assert {journal.file(i).status for i in ids} == {"uploading"}
        target.released.set()
        await until(lambda: {journal.file(i).status for i in ids} == {"uploaded"})
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    # Six files, stored while the first sync hung: far fewer syncs than files.
    assert target.syncs <= 2


def test_a_batch_that_cannot_be_made_durable_is_sent_again(tmp_path: Path) -> None:
    target = SlowDiskTarget()
    target.released.set()
    target.fail_sync.append(TransientTargetError("writeback error: EIO"))
    journal, ids = _journal_with_files(tmp_path, target.name, 2)
    clock = FakeClock()
    engine = _engine(journal, target, clock)

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        try:
            # Both land while the batch gathers (the fake clock stands still): one batch.
            await until(lambda: len(target.puts) == 2)
            await run_until(lambda: {journal.file(i).status for i in ids} == {"uploaded"}, clock)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert target.syncs >= 2
    assert [journal.file(i).attempts for i in ids] == [2, 2]  # the failed sync counted


def test_files_waiting_for_durability_go_back_to_waiting_when_stopped(tmp_path: Path) -> None:
    target = SlowDiskTarget()  # never released: the sync hangs until the engine stops
    journal, ids = _journal_with_files(tmp_path, target.name, 3)

    async def scenario() -> None:
        task = asyncio.create_task(_engine(journal, target).run())
        await until(lambda: len(target.puts) == 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    rows = [journal.file(i) for i in ids]
    assert {row.status for row in rows} == {"waiting"}
    assert {row.attempts for row in rows} == {0}  # a stop is not the file's fault


def test_a_sync_that_hangs_parks_its_files_and_they_go_once_it_returns(tmp_path: Path) -> None:
    target = SlowDiskTarget()  # a share whose sync does not return
    journal, ids = _journal_with_files(tmp_path, target.name, 2)
    clock = FakeClock()

    async def scenario() -> None:
        task = asyncio.create_task(_engine(journal, target, clock, stall_s=60).run())

        def parked_as_stalled() -> bool:
            return all((journal.file(i).last_error or "").startswith("stalled") for i in ids)

        await run_until(lambda: target.syncs, clock)
        clock.advance(59)  # the sync hangs, but not for stall_s yet
        await asyncio.sleep(0.05)
        assert not any(journal.file(i).last_error for i in ids)
        await run_until(parked_as_stalled, clock, step_s=1.0)
        assert "uploaded" not in {journal.file(i).status for i in ids}  # parked, sent again
        target.released.set()
        await run_until(lambda: {journal.file(i).status for i in ids} == {"uploaded"}, clock)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


class GatedTarget(MemoryTarget):
    """A target whose uploads each wait until the test lets them through."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.open = asyncio.Event()
        self.begun = 0

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        self.begun += 1
        await self.open.wait()
        return await super().upload(dataset, item, transfer)


def test_only_files_an_upload_has_begun_are_called_uploading(tmp_path: Path) -> None:
    """Files waiting for one of the ``concurrency`` places stay waiting, as in the web uploader."""
    target = GatedTarget()
    journal, ids = _journal_with_files(tmp_path, "gated", 7)

    async def scenario() -> None:
        task = asyncio.create_task(_engine(journal, target, concurrency=2).run())
        try:
            await until(lambda: target.begun == 2)
            statuses = [journal.file(i).status for i in ids]
            assert statuses.count("uploading") == 2
            assert statuses.count("waiting") == 5
            assert [journal.file(i).attempts for i in ids].count(1) == 2  # one attempt each
            target.open.set()
            await until(lambda: {journal.file(i).status for i in ids} == {"uploaded"})
            assert {journal.file(i).attempts for i in ids} == {1}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_stop_puts_the_files_being_uploaded_back_to_waiting(tmp_path: Path) -> None:
    target = GatedTarget()
    journal, ids = _journal_with_files(tmp_path, "gated", 5)

    async def scenario() -> None:
        task = asyncio.create_task(_engine(journal, target, concurrency=3).run())
        await until(lambda: target.begun == 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert [(journal.file(i).status, journal.file(i).attempts) for i in ids] == [("waiting", 0)] * 5


class RefusingTarget(MemoryTarget):
    """A target that refuses every upload of the datasets named in ``refuse``."""

    def __init__(self, refuse: set[str], permanent: bool = False) -> None:
        super().__init__("refusing")
        self.refuse = refuse
        self.permanent = permanent
        self.order: list[str] = []

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        self.order.append(dataset.name)
        if dataset.name in self.refuse:
            if self.permanent:
                raise PermanentTargetError(f"{dataset.name}: refused")
            raise TransientTargetError(f"{dataset.name}: refused")
        await asyncio.sleep(0.01)  # a little time on the wire, so workers overlap
        return await super().upload(dataset, item, transfer)


def _refusing_engine(
    journal: Journal,
    target: MemoryTarget,
    attention: list[str] | None = None,
    clock: Clock | None = None,
    **settings: float,
) -> UploadEngine:
    config = UploadSettings.model_validate(settings)
    sink = attention if attention is not None else []
    return UploadEngine(
        journal,
        {target.name: target},
        config,
        clock or SystemClock(),
        _Sources(),
        locate=_locate,
        on_attention=lambda ds, message: sink.append(f"{ds.name}: {message}"),
    )


def test_files_taken_up_from_parking_hold_no_worker(tmp_path: Path) -> None:
    """A parked file gets one attempt and parks again: it never sleeps a long backoff."""
    target = RefusingTarget({"blocked"})
    journal = Journal.open(tmp_path / "journal.sqlite3")
    blocked = _add_dataset(journal, tmp_path, "blocked", 6)
    assert len(journal.take_uploads(time.time(), 6, [])) == 6
    for file_id in blocked:  # failed before, now due again (a reload, or its time came)
        journal.mark_retry(file_id, "blocked: refused", 0)
    fresh = _add_dataset(journal, tmp_path, "fresh", 5)
    # Long waits between attempts, as in the field: a worker sleeping one would hold it minutes.
    engine = _refusing_engine(
        journal, target, concurrency=2, backoff_initial_s=30, backoff_max_s=300, quick_retries=3
    )
    asyncio.run(_run_until(engine, journal, fresh, {"uploaded"}))
    rows = [journal.file(i) for i in blocked]
    assert {row.status for row in rows} == {"waiting"}
    assert all(row.next_attempt_at > time.time() for row in rows)  # parked again
    assert {row.attempts for row in rows} == {2}  # one attempt each, not a round of quick ones


def test_workers_are_shared_fairly_between_datasets(tmp_path: Path) -> None:
    """A big card does not hold back five images that arrived after it."""
    target = RefusingTarget(set())
    journal = Journal.open(tmp_path / "journal.sqlite3")
    big = _add_dataset(journal, tmp_path, "big", 120)
    small = _add_dataset(journal, tmp_path, "small", 5)
    engine = _refusing_engine(journal, target, concurrency=2)
    asyncio.run(_run_until(engine, journal, big + small, {"uploaded"}))
    last_small = max(n for n, name in enumerate(target.order) if name == "small")
    assert last_small < 15, f"the small dataset's last image went {last_small + 1}th"


def test_a_failing_dataset_does_not_starve_the_others(tmp_path: Path) -> None:
    target = RefusingTarget({"blocked"})
    journal = Journal.open(tmp_path / "journal.sqlite3")
    _add_dataset(journal, tmp_path, "blocked", 40)
    fresh = _add_dataset(journal, tmp_path, "fresh", 10)
    engine = _refusing_engine(journal, target, concurrency=2, backoff_initial_s=1, backoff_max_s=5)
    asyncio.run(_run_until(engine, journal, fresh, {"uploaded"}))


def test_a_failed_file_asks_for_attention_once_per_dataset(tmp_path: Path) -> None:
    target = RefusingTarget({"blocked"}, permanent=True)
    journal = Journal.open(tmp_path / "journal.sqlite3")
    blocked = _add_dataset(journal, tmp_path, "blocked", 6)
    attention: list[str] = []
    engine = _refusing_engine(journal, target, attention)
    asyncio.run(_run_until(engine, journal, blocked, {"failed"}))
    assert len(attention) == 1
    assert attention[0].startswith("blocked: blocked0.jpg failed: blocked: refused")
    assert "dronesync retry" in attention[0]


def test_the_dataset_line_says_how_many_files_retry_and_why(tmp_path: Path) -> None:
    target = RefusingTarget({"blocked"})
    journal = Journal.open(tmp_path / "journal.sqlite3")
    blocked = _add_dataset(journal, tmp_path, "blocked", 6)
    engine = _refusing_engine(
        journal, target, backoff_initial_s=0.01, backoff_max_s=300, quick_retries=1
    )

    def parked() -> bool:
        return all(journal.file(i).next_attempt_at > time.time() for i in blocked)

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        await until(parked)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    doc = snapshot(journal, {})
    assert doc["datasets"][0]["files_retrying"] == 6
    assert "  6 retrying: blocked: refused" in render(doc, bars=False).splitlines()


class SignInTarget(MemoryTarget):
    """A target whose sign-in is refused until ``signed_in`` (a wrong, then fixed, secret)."""

    def __init__(self, signed_in: bool) -> None:
        super().__init__("refusing")
        self.signed_in = signed_in

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        if not self.signed_in:
            raise TargetPausedError("sign-in needed: the secret was refused")
        return await super().upload(dataset, item, transfer)


def test_sign_in_needed_clears_once_uploads_resume_after_a_reload(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    ids = _add_dataset(journal, tmp_path, "ds", 3)
    attention: list[str] = []

    async def until_paused() -> None:
        task = asyncio.create_task(_refusing_engine(journal, SignInTarget(False), attention).run())
        await until(lambda: journal.dataset(1).detail is not None)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(until_paused())
    assert journal.dataset(1).detail == "sign-in needed: the secret was refused"
    assert {journal.file(i).attempts for i in ids} == {0}  # waiting costs no attempt
    assert attention == ["ds: sign-in needed: the secret was refused"]
    journal.make_due()  # the secret was fixed and the service reloaded: a new engine
    engine = _refusing_engine(journal, SignInTarget(True))
    asyncio.run(_run_until(engine, journal, ids, {"uploaded"}))
    assert journal.dataset(1).detail is None


def test_failures_between_uploads_ask_for_attention_once(tmp_path: Path) -> None:
    """A card whose every other image is refused sends one notification, not one per image."""

    class EveryOther(RefusingTarget):
        async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
            if int(item.key.decode().removeprefix("ds").removesuffix(".jpg")) % 2:
                raise PermanentTargetError("refused")
            return await super().upload(dataset, item, transfer)

    target = EveryOther(set())
    journal = Journal.open(tmp_path / "journal.sqlite3")
    ids = _add_dataset(journal, tmp_path, "ds", 20)
    attention: list[str] = []
    engine = _refusing_engine(journal, target, attention, concurrency=1)
    asyncio.run(_run_until(engine, journal, ids, {"uploaded", "failed"}))
    assert [journal.file(i).status for i in ids].count("failed") == 10
    assert len(attention) == 1


class _Longest(random.Random):
    """Full jitter at its longest: every backoff waits its whole ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_file_between_quick_retries_is_not_sent_once_its_dataset_is_cancelled(
    tmp_path: Path,
) -> None:
    target = RefusingTarget(set())
    target.fail_next.append(TransientTargetError("503"))
    journal = Journal.open(tmp_path / "journal.sqlite3")
    [first] = _add_dataset(journal, tmp_path, "cancelled", 1)
    clock = FakeClock()
    engine = _engine(
        journal,
        target,
        clock,
        longest=True,
        concurrency=1,
        backoff_initial_s=0.5,
        backoff_max_s=0.5,
    )

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        await until(lambda: journal.file(first).last_error == "503")  # its quick retry waits
        journal.set_dataset_state(1, "cancelled", "cancelled by the operator")
        engine.cancel_dataset(1, "cancelled by the operator")
        # The one worker takes the next dataset's file once it is done with the first.
        other = _add_dataset(journal, tmp_path, "next", 1)
        engine.wake()
        await asyncio.sleep(0.05)
        assert journal.file(other[0]).status == "waiting"  # the worker waits its 0.5 s
        clock.advance(0.5)
        await run_until(lambda: journal.file(other[0]).status == "uploaded", clock)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert ("cancelled", b"cancelled0.jpg") not in target.puts
    assert journal.file(first).status == "waiting"


def test_a_wait_the_target_asks_for_costs_no_attempt(tmp_path: Path) -> None:
    """A NodeODM task replacement backing off holds the files, not their attempts."""
    target = RefusingTarget(set())
    target.fail_next.extend([TargetWaitError("task replaced 3 times: the next in 1 s")] * 12)
    journal = Journal.open(tmp_path / "journal.sqlite3")
    ids = _add_dataset(journal, tmp_path, "ds", 1)
    clock = FakeClock()
    engine = _refusing_engine(journal, target, clock=clock, attempts=3)
    asyncio.run(_run_until(engine, journal, ids, {"uploaded"}, clock, step_s=0.5))
    assert journal.file(ids[0]).attempts == 1
    assert not target.fail_next  # all twelve waits were met, and none failed the file


class UnluckyTarget(MemoryTarget):
    """Refuses the first ``refusals`` attempts of ``unlucky`` (or of every file, in an outage).

    Each upload takes ``busy_s`` of the fake clock; the time of every attempt is kept.
    """

    def __init__(
        self,
        clock: FakeClock,
        unlucky: bytes | None,
        refusals: int,
        *,
        crowd: int = 0,
        down: tuple[float, float] | None = None,
    ) -> None:
        """``crowd``: the other files' first tries are refused too, but for one in ``crowd``.

        ``down``: from and until when (fake time) every attempt is refused.
        """
        super().__init__("refusing")
        self.clock = clock
        self.unlucky = unlucky
        self.refusals = refusals
        self.crowd = crowd
        self.down = down
        self.tries: dict[bytes, list[float]] = {}

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        tries = self.tries.setdefault(item.key, [])
        now = self.clock.monotonic()
        tries.append(now)
        if self.down is not None and self.down[0] <= now < self.down[1]:
            raise TransientTargetError("503")
        if self.unlucky in (None, item.key) and len(tries) <= self.refusals:
            raise TransientTargetError("503")
        if self.crowd and len(tries) == 1 and len(self.tries) % self.crowd:
            raise TransientTargetError("503")  # at once, as S3 refuses before the body
        await self.clock.sleep(BUSY_S)
        return await super().upload(dataset, item, transfer)


BUSY_S = 1.0


def _backing_off_engine(journal: Journal, target: MemoryTarget, clock: FakeClock) -> UploadEngine:
    """Two workers, no quick retries, backoff from 5 s, every wait its whole ceiling."""
    return _engine(
        journal,
        target,
        clock,
        longest=True,
        concurrency=2,
        quick_retries=0,
        backoff_initial_s=5,
        backoff_max_s=1000,
    )


def _waits(
    tmp_path: Path,
    *,
    busy: int,
    outage: bool,
    refusals: int = 3,
    restart_after: int | None = None,
    crowd: int = 0,
) -> list[float]:
    """The waits between the attempts of a file refused ``refusals`` times (dataset "unlucky").

    ``busy`` files of another dataset go meanwhile, a second at a time (fair sharing gives
    each dataset a worker); in an ``outage`` the target refuses every file its first times.
    ``restart_after``: that many refusals in, the engine is replaced by a new one (a restart
    or a reload), on the same journal and clock.
    """
    clock = FakeClock()
    target = UnluckyTarget(clock, None if outage else b"unlucky0.jpg", refusals, crowd=crowd)
    journal = Journal.open(tmp_path / "journal.sqlite3")
    ids = _add_dataset(journal, tmp_path, "unlucky", 1)
    if busy:
        ids += _add_dataset(journal, tmp_path, "busy", busy)

    def engine() -> UploadEngine:
        return _backing_off_engine(journal, target, clock)

    def parked_after(tries: int) -> bool:
        row = journal.file(ids[0])
        return len(target.tries.get(b"unlucky0.jpg", [])) >= tries and row.next_attempt_at > 0

    async def until_restart() -> None:
        task = asyncio.create_task(engine().run())
        try:
            await run_until(lambda: parked_after(restart_after or 0), clock, step_s=0.25)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    if restart_after is not None:
        asyncio.run(until_restart())
    asyncio.run(_run_until(engine(), journal, ids, {"uploaded"}, clock, step_s=0.25))
    times = target.tries[b"unlucky0.jpg"]
    return [round(b - a) for a, b in itertools.pairwise(times)]


def test_a_file_refused_while_others_go_through_waits_a_first_failures_backoff(
    tmp_path: Path,
) -> None:
    """Bad luck on a server that is up: the retry does not wait longer at each refusal."""
    # Every wait is the first one (5 s, full jitter at its longest), give or take the step
    # the fake clock moves by.
    assert _waits(tmp_path, busy=40, outage=False) == [5, 5, 5]


def test_refusals_in_a_row_between_slow_successes_are_still_bad_luck(tmp_path: Path) -> None:
    """A server that refuses at once and accepts slowly: refusals come in a row, yet it is up.

    Of the others, three first tries in four are refused before any byte is sent, so several
    refusals land between two uploads that went through. The file's waits stay the first.
    """
    assert _waits(tmp_path, busy=80, outage=False, crowd=4) == [5, 5, 5]


def test_a_file_that_keeps_failing_backs_off_though_others_go_through(tmp_path: Path) -> None:
    """Refused again and again while no other file is: it is the file, not luck.

    Its own count sets the wait once its run of refusals is unlikely at the target's rate:
    here from its fourth refusal or its fifth, as the others' uploads fall in the fake time.
    """
    waits = _waits(tmp_path, busy=40, outage=False, refusals=6)
    assert waits[:3] == [5, 5, 5]
    assert waits[3] in (5, 40)
    assert waits[4:] == [80, 160]


def test_on_a_server_refusing_often_a_long_run_of_refusals_is_still_bad_luck(
    tmp_path: Path,
) -> None:
    """Where most first tries are refused, six refusals in a row happen to some file.

    Its waits stay the first: a long wait for the last files of a dataset left the link idle.
    """
    assert _waits(tmp_path, busy=80, outage=False, refusals=6, crowd=4) == [5] * 6


def test_the_last_file_refused_alone_on_a_server_refusing_often_is_still_bad_luck(
    tmp_path: Path,
) -> None:
    """The others are all uploaded after its first refusals; no upload goes through after.

    The target's run of refusals is then this file's alone, and at the rate the target
    refused before, a run of six is luck: a long wait here left the link idle at the end of
    every dataset.
    """
    assert _waits(tmp_path, busy=4, outage=False, refusals=6, crowd=4) == [5] * 6


def test_an_outage_after_many_refusals_still_backs_off(tmp_path: Path) -> None:
    """A server that refused most first tries goes down for ten minutes.

    Its runs of refusals were long before; the outage's is soon longer: every file backs off
    on its own count (10, 20, ... 320 s) and is tried a handful of times, where a first
    failure's wait would try it every 5 s and fail it with its attempts spent.
    """
    clock = FakeClock()
    first, last = clock.monotonic() + 20, clock.monotonic() + 620
    target = UnluckyTarget(clock, None, 0, crowd=4, down=(first, last))
    journal = Journal.open(tmp_path / "journal.sqlite3")
    ids = _add_dataset(journal, tmp_path, "ds", 60)
    engine = _backing_off_engine(journal, target, clock)
    asyncio.run(_run_until(engine, journal, ids, {"uploaded", "failed"}, clock, step_s=1.0))
    assert {journal.file(i).status for i in ids} == {"uploaded"}  # none with attempts spent
    during = sum(first <= t < last for tries in target.tries.values() for t in tries)
    waiting = sum(any(first <= t < last for t in tries) for tries in target.tries.values())
    assert waiting >= 10
    assert during <= 10 * waiting


def test_in_an_outage_the_waits_grow(tmp_path: Path) -> None:
    assert _waits(tmp_path, busy=0, outage=True) == [5, 10, 20]


def test_an_outage_keeps_backing_off_across_a_restart(tmp_path: Path) -> None:
    assert _waits(tmp_path, busy=0, outage=True, refusals=5, restart_after=3) == [
        5,
        10,
        20,
        40,
        80,
    ]
