"""The conformance suite: every target passes the same checks.

A new target joins by adding a factory to ``TARGETS`` and teaching ``stored``/``copies`` how to
read it back; the suite then proves it stores files byte-identical, never twice, never from a
file that changed, stops when a transfer is aborted, and reports processing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from daemon.config import DirectoryTargetConfig
from daemon.errors import (
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TransientTargetError,
)
from daemon.targets.base import DatasetRef, ProcessingStatus, Target, Transfer, UploadItem
from daemon.targets.directory import DirectoryTarget
from daemon.targets.memory import MemoryTarget

T = TypeVar("T")
DS = DatasetRef(1, "mission")
DEADLINE_S = 20.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _directory(tmp: Path, command: list[str] | None = None) -> DirectoryTarget:
    config = DirectoryTargetConfig(type="directory", path=tmp / "archive", process_command=command)
    return DirectoryTarget("archive", config, log_dir=tmp / "logs")


TARGETS: dict[str, Callable[[Path], Target]] = {
    "memory": lambda tmp: MemoryTarget(),
    "directory": _directory,
}


def stored(target: Target, key: bytes) -> bytes:
    """What the target holds under ``key``, read back the target's own way."""
    if isinstance(target, MemoryTarget):
        return target.objects[(DS.name, key)]
    assert isinstance(target, DirectoryTarget)
    return Path(os.fsdecode(os.fsencode(target.dataset_dir(DS)) + b"/" + key)).read_bytes()


def copies(target: Target) -> int:
    """How many objects the target holds for the dataset."""
    if isinstance(target, MemoryTarget):
        return sum(1 for name, _ in target.objects if name == DS.name)
    assert isinstance(target, DirectoryTarget)
    return sum(1 for p in target.dataset_dir(DS).rglob("*") if p.is_file())


def leftovers(tmp_path: Path) -> list[Path]:
    """Temporary copies left behind anywhere (there must never be any)."""
    return list(tmp_path.rglob("*.dronesync-part"))


def item_for(path: Path, key: bytes) -> UploadItem:
    """The item as the engine builds it: size, mtime and hash of the file as it is now."""
    info = path.stat()
    return UploadItem(
        path, key, info.st_size, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()
    )


def source(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "card" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    made = TARGETS[request.param](tmp_path)
    run(made.ensure_dataset(DS))
    run(made.ensure_dataset(DS))  # idempotent
    return made


# -- storing -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 17])
def test_upload_stores_the_bytes_exactly(target: Target, tmp_path: Path, size: int) -> None:
    src = source(tmp_path, "DJI_0001.JPG", random.Random(size).randbytes(size))
    seen: list[int] = []
    key = run(target.upload(DS, item_for(src, b"DJI_0001.JPG"), Transfer(on_bytes=seen.append)))
    assert key == b"DJI_0001.JPG"
    assert stored(target, key) == src.read_bytes()
    assert sum(seen) == size
    assert copies(target) == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "key", [b"sub/dir/x.jpg", b"DCIM/100MEDIA/DJI_0001.JPG", b"caf\xe9/\xff name.jpg"]
)
def test_nested_and_non_utf8_keys(target: Target, tmp_path: Path, key: bytes) -> None:
    src = source(tmp_path, "x.jpg", b"nested image")
    got = run(target.upload(DS, item_for(src, key), Transfer()))
    assert got == key
    assert stored(target, got) == b"nested image"


def test_uploading_the_same_item_again_returns_the_same_key_and_no_second_copy(
    target: Target, tmp_path: Path
) -> None:
    src = source(tmp_path, "a.jpg", random.Random(2).randbytes(50_000))
    item = item_for(src, b"a.jpg")
    first = run(target.upload(DS, item, Transfer()))
    second = run(target.upload(DS, item, Transfer()))
    assert first == second
    assert stored(target, first) == src.read_bytes()
    assert copies(target) == 1


def test_a_file_grown_after_hashing_is_refused_and_nothing_is_left(
    target: Target, tmp_path: Path
) -> None:
    src = source(tmp_path, "a.jpg", b"x" * 10_000)
    item = item_for(src, b"a.jpg")
    with src.open("ab") as fh:
        fh.write(b"still being copied")
    with pytest.raises(FileChangedError):
        run(target.upload(DS, item, Transfer()))
    assert copies(target) == 0
    assert leftovers(tmp_path) == []


def test_other_bytes_with_the_same_size_and_mtime_are_refused(
    target: Target, tmp_path: Path
) -> None:
    src = source(tmp_path, "a.jpg", b"x" * 10_000)
    item = item_for(src, b"a.jpg")
    src.write_bytes(b"y" * 10_000)
    os.utime(src, ns=(item.mtime_ns, item.mtime_ns))  # only the content tells
    with pytest.raises(FileChangedError):
        run(target.upload(DS, item, Transfer()))
    assert copies(target) == 0
    assert leftovers(tmp_path) == []


def test_a_source_replaced_by_a_symlink_is_not_followed(target: Target, tmp_path: Path) -> None:
    src = source(tmp_path, "a.jpg", b"ours")
    item = item_for(src, b"a.jpg")
    elsewhere = tmp_path / "secret.jpg"
    elsewhere.write_bytes(b"ours")
    src.unlink()
    src.symlink_to(elsewhere)
    with pytest.raises(SourceError):
        run(target.upload(DS, item, Transfer()))
    assert copies(target) == 0


def test_abort_stops_an_upload_in_progress(target: Target, tmp_path: Path) -> None:
    src = source(tmp_path, "big.jpg", random.Random(8).randbytes(8 * 1024 * 1024))
    item = item_for(src, b"big.jpg")
    transfer = Transfer()
    seen: list[int] = []

    def on_bytes(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            transfer.abort("cancelled by the operator")

    transfer.on_bytes = on_bytes
    with pytest.raises(TransientTargetError, match="cancelled by the operator"):
        run(target.upload(DS, item, transfer))
    assert transfer.aborted
    assert len(seen) == 2  # stopped at the next chunk, not at the end of the file
    assert sum(seen) < item.size
    assert copies(target) == 0
    assert leftovers(tmp_path) == []
    # the same item goes through on the next attempt
    key = run(target.upload(DS, item, Transfer()))
    assert stored(target, key) == src.read_bytes()


# -- processing --------------------------------------------------------------------------


async def finish(target: Target, handle: str) -> ProcessingStatus:
    """Poll until processing is no longer running (a test failure after the deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status = await target.processing_status(DS, handle)
        if status.state != "running":
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"processing still running after {DEADLINE_S:g} s")
        await asyncio.sleep(0.02)


def test_processing_starts_and_reports_its_end(target: Target, tmp_path: Path) -> None:
    src = source(tmp_path, "a.jpg", b"img")
    key = run(target.upload(DS, item_for(src, b"a.jpg"), Transfer()))

    async def process() -> ProcessingStatus:
        return await finish(target, await target.start_processing(DS, [key]))

    assert run(process()).state == "done"
    run(target.aclose())


# -- directory target specifics ----------------------------------------------------------


def test_an_existing_different_file_is_never_overwritten(tmp_path: Path) -> None:
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    folder = target.dataset_dir(DS)
    (folder / "x.jpg").write_bytes(b"someone else's file")
    src = source(tmp_path, "x.jpg", b"ours")
    item = item_for(src, b"x.jpg")
    assert run(target.upload(DS, item, Transfer())) == b"x~2.jpg"
    assert (folder / "x.jpg").read_bytes() == b"someone else's file"
    assert (folder / "x~2.jpg").read_bytes() == b"ours"
    # a retry finds its own copy under the new name
    assert run(target.upload(DS, item, Transfer())) == b"x~2.jpg"
    assert copies(target) == 2
    # a third content takes the next free name, including for names without an extension
    other = source(tmp_path, "y", b"third")
    (folder / "x~3.jpg").write_bytes(b"also taken")
    assert run(target.upload(DS, item_for(other, b"x.jpg"), Transfer())) == b"x~4.jpg"
    (folder / "README").write_bytes(b"notes")
    assert run(target.upload(DS, item_for(other, b"README"), Transfer())) == b"README~2"
    assert leftovers(tmp_path) == []


def test_a_part_file_left_by_a_killed_run_is_cleaned_up(tmp_path: Path) -> None:
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    src = source(tmp_path, "a.jpg", random.Random(3).randbytes(100_000))
    item = item_for(src, b"a.jpg")
    part = target.dataset_dir(DS) / f".a.jpg.{item.sha256[:16]}.dronesync-part"
    part.write_bytes(b"half a copy from before a crash")
    assert run(target.upload(DS, item, Transfer())) == b"a.jpg"
    assert stored(target, b"a.jpg") == src.read_bytes()
    assert leftovers(tmp_path) == []


RECORD = (
    "import os, sys; "
    "open(sys.argv[1], 'a').write(repr(sys.argv[2:] + [os.getcwd()]) + '\\n'); "
    "sys.exit(int(sys.argv[-1]))"
)


def _processing(
    tmp_path: Path, command: list[str] | None
) -> tuple[DirectoryTarget, ProcessingStatus]:
    target = _directory(tmp_path, command)
    run(target.ensure_dataset(DS))

    async def go() -> ProcessingStatus:
        return await finish(target, await target.start_processing(DS, []))

    return target, run(go())


@pytest.mark.parametrize(("code", "state"), [(0, "done"), (3, "failed")])
def test_process_command_runs_once_with_placeholders_and_its_exit_code_decides(
    tmp_path: Path, code: int, state: str
) -> None:
    calls = tmp_path / "calls.txt"
    command = [sys.executable, "-c", RECORD, str(calls), "{dataset}", "{dataset_dir}", str(code)]
    target, status = _processing(tmp_path, command)
    folder = str(target.dataset_dir(DS))
    assert calls.read_text().splitlines() == [repr(["mission", folder, str(code), folder])]
    assert status.state == state
    assert status.detail is not None
    assert f"exited {code}" in status.detail
    assert str(tmp_path / "logs" / "mission.log") in status.detail


def test_process_command_output_goes_to_the_dataset_log(tmp_path: Path) -> None:
    _, status = _processing(tmp_path, ["/bin/sh", "-c", "echo processing {dataset}; exit 1"])
    assert status.state == "failed"
    assert "processing mission" in (tmp_path / "logs" / "mission.log").read_text()


def test_a_process_command_that_does_not_exist_is_permanent(tmp_path: Path) -> None:
    target = _directory(tmp_path, ["/nonexistent/process-dataset", "{dataset_dir}"])
    run(target.ensure_dataset(DS))
    with pytest.raises(PermanentTargetError, match="/nonexistent/process-dataset"):
        run(target.start_processing(DS, []))


def test_without_process_command_processing_is_done_at_once(tmp_path: Path) -> None:
    _, status = _processing(tmp_path, None)
    assert status.state == "done"
