"""The upload engine against real targets: retries, permanent errors, stalls, cancellation."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from daemon.clock import SystemClock
from daemon.config import UploadSettings
from daemon.errors import PermanentTargetError, TransientTargetError
from daemon.journal import FileRow, Journal
from daemon.targets.base import DatasetRef, Transfer, UploadItem
from daemon.targets.memory import MemoryTarget
from daemon.upload.engine import UploadEngine


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


def _journal_with_files(tmp_path: Path, target: str, count: int) -> tuple[Journal, list[int]]:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    src = tmp_path / "src"
    src.mkdir()
    ds = journal.open_dataset(
        volume=str(src),
        folder=b"",
        name="ds",
        target=target,
        source=str(src),
        auto_process=True,
        quiet_s=0,
        now=time.time(),
    )
    ids = []
    for i in range(count):
        data = os.urandom(10_000)
        path = src / f"f{i}.jpg"
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
    return journal, ids


def _locate(row: FileRow) -> Path:
    return Path(row.volume) / os.fsdecode(row.relpath)


async def _until(condition: Callable[[], bool], deadline: float) -> None:
    """Wait until ``condition`` holds; fail the test at ``deadline`` (``time.monotonic``)."""
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _run_until(
    engine: UploadEngine,
    journal: Journal,
    ids: list[int],
    statuses: set[str],
    limit_s: float = 20.0,
) -> None:
    task = asyncio.create_task(engine.run())
    deadline = time.monotonic() + limit_s
    try:
        await _until(lambda: not {journal.file(i).status for i in ids} - statuses, deadline)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _engine(journal: Journal, target: MemoryTarget, **settings: float) -> UploadEngine:
    config = UploadSettings.model_validate(
        {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **settings}
    )
    return UploadEngine(
        journal,
        {target.name: target},
        config,
        SystemClock(),
        locate=_locate,
        source_online=lambda volume: True,
        on_changed=lambda row: None,
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
    asyncio.run(_run_until(_engine(journal, target), journal, ids, {"uploaded"}))
    assert len(target.puts) == 3  # every file stored once
    assert sum(journal.file(i).attempts for i in ids) == 6


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
    engine = _engine(journal, target, attempts=3, quick_retries=1)
    asyncio.run(_run_until(engine, journal, ids, {"failed"}))
    assert journal.file(ids[0]).attempts == 3
    assert journal.retry_failed(None) == 1
    asyncio.run(_run_until(_engine(journal, target), journal, ids, {"uploaded"}))
    assert target.puts == [("ds", b"f0.jpg")]


def test_a_stalled_transfer_is_aborted_and_retried(tmp_path: Path) -> None:
    target = StallingTarget()
    journal, ids = _journal_with_files(tmp_path, target.name, 1)
    asyncio.run(_run_until(_engine(journal, target, stall_s=0.3), journal, ids, {"uploaded"}))
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
        deadline = time.monotonic() + 20
        await _until(lambda: len(target.puts) == 6, deadline)  # stored, none durable yet
        assert {journal.file(i).status for i in ids} == {"uploading"}
        target.released.set()
        await _until(lambda: {journal.file(i).status for i in ids} == {"uploaded"}, deadline)
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
    asyncio.run(_run_until(_engine(journal, target), journal, ids, {"uploaded"}))
    assert target.syncs >= 2
    assert [journal.file(i).attempts for i in ids] == [2, 2]  # the failed sync counted


def test_files_waiting_for_durability_go_back_to_waiting_when_stopped(tmp_path: Path) -> None:
    target = SlowDiskTarget()  # never released: the sync hangs until the engine stops
    journal, ids = _journal_with_files(tmp_path, target.name, 3)

    async def scenario() -> None:
        task = asyncio.create_task(_engine(journal, target).run())
        deadline = time.monotonic() + 20
        await _until(lambda: len(target.puts) == 3, deadline)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    rows = [journal.file(i) for i in ids]
    assert {row.status for row in rows} == {"waiting"}
    assert {row.attempts for row in rows} == {0}  # a stop is not the file's fault


def test_a_sync_that_hangs_parks_its_files_and_they_go_once_it_returns(tmp_path: Path) -> None:
    target = SlowDiskTarget()  # a share whose sync does not return
    journal, ids = _journal_with_files(tmp_path, target.name, 2)

    async def scenario() -> None:
        task = asyncio.create_task(_engine(journal, target, stall_s=0.3).run())
        deadline = time.monotonic() + 20

        def parked_as_stalled() -> bool:
            return all((journal.file(i).last_error or "").startswith("stalled") for i in ids)

        await _until(parked_as_stalled, deadline)
        assert "uploaded" not in {journal.file(i).status for i in ids}  # parked, sent again
        target.released.set()
        await _until(lambda: {journal.file(i).status for i in ids} == {"uploaded"}, deadline)
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
        deadline = time.monotonic() + 10
        try:
            await _until(lambda: target.begun == 2, deadline)
            statuses = [journal.file(i).status for i in ids]
            assert statuses.count("uploading") == 2
            assert statuses.count("waiting") == 5
            assert [journal.file(i).attempts for i in ids].count(1) == 2  # one attempt each
            target.open.set()
            await _until(lambda: {journal.file(i).status for i in ids} == {"uploaded"}, deadline)
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
        await _until(lambda: target.begun == 3, time.monotonic() + 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert [(journal.file(i).status, journal.file(i).attempts) for i in ids] == [("waiting", 0)] * 5
