"""The conformance suite: every target passes the same checks.

A new target joins by adding a factory to ``TARGETS``; the suite then proves it stores files
byte-identical, never twice, never from a file that changed, and reports processing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from daemon.config import DirectoryTargetConfig
from daemon.errors import FileChangedError, PermanentTargetError, TransientTargetError
from daemon.targets.base import DatasetRef, Target, Transfer, UploadItem
from daemon.targets.directory import DirectoryTarget
from daemon.targets.memory import MemoryTarget

T = TypeVar("T")
DS = DatasetRef(1, "mission")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _directory(tmp: Path) -> DirectoryTarget:
    config = DirectoryTargetConfig(type="directory", path=tmp / "archive")
    return DirectoryTarget("archive", config, log_dir=tmp / "logs")


TARGETS: dict[str, Callable[[Path], Target]] = {
    "memory": lambda tmp: MemoryTarget(),
    "directory": _directory,
}


def stored(target: Target, key: bytes) -> bytes:
    """What the target holds under ``key`` (read back the target's own way)."""
    if isinstance(target, MemoryTarget):
        return target.objects[(DS.name, key)]
    assert isinstance(target, DirectoryTarget)
    return Path(os.fsdecode(os.fsencode(target.dataset_dir(DS)) + b"/" + key)).read_bytes()


def copies(target: Target) -> int:
    if isinstance(target, MemoryTarget):
        return len(target.puts)
    assert isinstance(target, DirectoryTarget)
    return sum(1 for p in target.dataset_dir(DS).rglob("*") if p.is_file())


def item_for(path: Path, key: bytes) -> UploadItem:
    info = path.stat()
    return UploadItem(
        path, key, info.st_size, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()
    )


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    made = TARGETS[request.param](tmp_path)
    run(made.ensure_dataset(DS))
    return made


def test_upload_is_byte_identical(target: Target, tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    key = run(target.upload(DS, item_for(src, b"DCIM/100MEDIA/a.jpg"), Transfer()))
    assert stored(target, key) == src.read_bytes()


def test_same_content_twice_is_stored_once(target: Target, tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(os.urandom(50_000))
    item = item_for(src, b"a.jpg")
    first = run(target.upload(DS, item, Transfer()))
    second = run(target.upload(DS, item, Transfer()))
    assert first == second
    assert stored(target, first) == src.read_bytes()
    if isinstance(target, DirectoryTarget):
        assert copies(target) == 1


def test_a_file_changed_after_hashing_is_refused(target: Target, tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(b"x" * 10_000)
    item = item_for(src, b"a.jpg")
    src.write_bytes(b"y" * 10_000)
    os.utime(src, ns=(item.mtime_ns, item.mtime_ns))  # same size and mtime, other bytes
    with pytest.raises(FileChangedError):
        run(target.upload(DS, item, Transfer()))
    assert copies(target) == 0
    assert not list(tmp_path.rglob("*.dronesync-part"))


def test_progress_is_reported_and_abort_stops_the_transfer(target: Target, tmp_path: Path) -> None:
    src = tmp_path / "big.jpg"
    src.write_bytes(os.urandom(8 * 1024 * 1024))
    item = item_for(src, b"big.jpg")
    seen: list[int] = []
    transfer = Transfer()

    def on_bytes(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            transfer.abort("cancelled by test")

    transfer.on_bytes = on_bytes
    with pytest.raises(TransientTargetError, match="cancelled by test"):
        run(target.upload(DS, item, transfer))
    assert copies(target) == 0
    assert not list(tmp_path.rglob("*.dronesync-part"))


def test_processing_starts_and_reports_its_end(target: Target, tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(b"img")
    key = run(target.upload(DS, item_for(src, b"a.jpg"), Transfer()))

    async def process() -> str:
        handle = await target.start_processing(DS, [key])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = await target.processing_status(DS, handle)
            if status.state != "running":
                return status.state
            await asyncio.sleep(0.05)
        return "timeout"

    assert run(process()) == "done"


# -- directory target specifics ----------------------------------------------------------


def test_directory_never_overwrites_a_different_file(tmp_path: Path) -> None:
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    existing = target.dataset_dir(DS) / "x.jpg"
    existing.write_bytes(b"someone else's file")
    src = tmp_path / "x.jpg"
    src.write_bytes(b"ours")
    key = run(target.upload(DS, item_for(src, b"x.jpg"), Transfer()))
    assert key == b"x~2.jpg"
    assert existing.read_bytes() == b"someone else's file"
    assert (target.dataset_dir(DS) / "x~2.jpg").read_bytes() == b"ours"


def _process_target(tmp_path: Path, command: list[str]) -> DirectoryTarget:
    config = DirectoryTargetConfig(
        type="directory", path=tmp_path / "archive", process_command=command
    )
    target = DirectoryTarget("archive", config, log_dir=tmp_path / "logs")
    run(target.ensure_dataset(DS))
    return target


async def _finish(target: DirectoryTarget, handle: str) -> tuple[str, str | None]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = await target.processing_status(DS, handle)
        if status.state != "running":
            return status.state, status.detail
        await asyncio.sleep(0.05)
    return "timeout", None


def test_process_command_placeholders_and_exit_codes(tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    ok = _process_target(
        tmp_path,
        ["/bin/sh", "-c", 'echo "$1 $2" > "$3"', "sh", "{dataset}", "{dataset_dir}", str(out)],
    )

    async def go(target: DirectoryTarget) -> tuple[str, str | None]:
        return await _finish(target, await target.start_processing(DS, []))

    state, _ = run(go(ok))
    assert state == "done"
    assert out.read_text().split() == ["mission", str(ok.dataset_dir(DS))]
    failing = _process_target(tmp_path, ["/bin/sh", "-c", "echo boom; exit 3"])
    state, detail = run(go(failing))
    assert state == "failed"
    assert detail is not None
    assert "exited 3" in detail
    assert "boom" in (tmp_path / "logs" / "mission.log").read_text()


def test_a_missing_process_command_is_permanent(tmp_path: Path) -> None:
    target = _process_target(tmp_path, ["/nonexistent/process-dataset"])
    with pytest.raises(PermanentTargetError, match="cannot run process_command"):
        run(target.start_processing(DS, []))
