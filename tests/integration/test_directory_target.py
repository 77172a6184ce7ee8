"""The directory target beyond the conformance suite: names, links from the spool, processing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import FileChangedError, PermanentTargetError, SourceError
from daemon.targets.base import ProcessingStatus, Transfer, UploadItem
from daemon.targets.directory import DirectoryTargetConfig
from daemon.targets.directory.target import DirectoryTarget
from tests.conformance.harness import DS, event_loop, finish, item_for, leftovers, run, source


@pytest.fixture(autouse=True)
def _event_loop() -> Iterator[None]:
    with event_loop():
        yield


def _directory(tmp: Path, command: list[str] | None = None) -> DirectoryTarget:
    config = DirectoryTargetConfig(type="directory", path=tmp / "archive", process_command=command)
    return DirectoryTarget("archive", config, log_dir=tmp / "logs")


def stored(target: DirectoryTarget, key: bytes) -> bytes:
    return Path(os.fsdecode(os.fsencode(target.dataset_dir(DS)) + b"/" + key)).read_bytes()


def copies(target: DirectoryTarget) -> int:
    return sum(1 for p in target.dataset_dir(DS).rglob("*") if p.is_file())


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


def test_a_dataset_folder_removed_from_the_archive_is_made_again(tmp_path: Path) -> None:
    import shutil  # noqa: PLC0415

    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    first = source(tmp_path, "a.jpg", b"first")
    assert run(target.upload(DS, item_for(first, b"DCIM/a.jpg"), Transfer())) == b"DCIM/a.jpg"
    shutil.rmtree(target.dataset_dir(DS))  # someone tidies the archive while a card is in
    second = item_for(source(tmp_path, "b.jpg", b"second"), b"DCIM/b.jpg")
    assert run(target.upload(DS, second, Transfer())) == b"DCIM/b.jpg"
    assert stored(target, b"DCIM/b.jpg") == b"second"
    shutil.rmtree(target.dataset_dir(DS))  # and the same for a copy linked from the spool
    spooled = _spooled(tmp_path, tmp_path / "spool", b"third")
    assert run(target.upload(DS, spooled, Transfer())) == b"DCIM/a.jpg"
    assert stored(target, b"DCIM/a.jpg") == b"third"


def _spooled(tmp_path: Path, spool_dir: Path, data: bytes) -> UploadItem:
    """A file as the hasher leaves it in the spool, and the item the engine makes of it."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    copy = spool_dir / "41"
    copy.write_bytes(data)
    item = item_for(copy, b"DCIM/a.jpg")
    return UploadItem(item.path, item.key, item.size, item.mtime_ns, item.sha256, spooled=True)


def test_a_spooled_file_on_the_same_filesystem_is_linked_not_written_again(
    tmp_path: Path,
) -> None:
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    item = _spooled(tmp_path, tmp_path / "spool", random.Random(5).randbytes(300_000))
    seen: list[int] = []
    assert run(target.upload(DS, item, Transfer(on_bytes=seen.append))) == b"DCIM/a.jpg"
    archived = target.dataset_dir(DS) / "DCIM" / "a.jpg"
    assert archived.stat().st_ino == item.path.stat().st_ino  # one copy on the disk
    assert sum(seen) == item.size
    item.path.unlink()  # the spool frees its copy after the upload
    assert hashlib.sha256(archived.read_bytes()).hexdigest() == item.sha256
    assert run(target.upload(DS, item_for(archived, b"DCIM/a.jpg"), Transfer())) == b"DCIM/a.jpg"
    assert copies(target) == 1


def test_a_spooled_file_whose_name_is_taken_is_linked_under_the_next_free_one(
    tmp_path: Path,
) -> None:
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    folder = target.dataset_dir(DS) / "DCIM"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"someone else's file")
    item = _spooled(tmp_path, tmp_path / "spool", b"ours")
    assert run(target.upload(DS, item, Transfer())) == b"DCIM/a~2.jpg"
    assert (folder / "a.jpg").read_bytes() == b"someone else's file"
    assert (folder / "a~2.jpg").stat().st_ino == item.path.stat().st_ino
    # a retry (the upload was done, its record lost to a kill) finds its own copy
    assert run(target.upload(DS, item, Transfer())) == b"DCIM/a~2.jpg"
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a~2.jpg"]


def test_a_spooled_file_that_changed_is_refused_like_any_other(tmp_path: Path) -> None:
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    item = _spooled(tmp_path, tmp_path / "spool", b"x" * 1000)
    item.path.write_bytes(b"x" * 1001)
    with pytest.raises(FileChangedError):
        run(target.upload(DS, item, Transfer()))
    assert copies(target) == 0


def test_spooled_files_linked_together_each_end_their_own_way(tmp_path: Path) -> None:
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    spool = tmp_path / "spool"
    spool.mkdir()
    items = []
    for n in range(4):
        copy = spool / str(n)
        copy.write_bytes(b"image %d" % n)
        item = item_for(copy, b"DCIM/%d.jpg" % n)
        items.append(UploadItem(item.path, item.key, item.size, item.mtime_ns, item.sha256, True))
    items[1].path.unlink()  # its copy went missing (a disk error, a person tidying up)
    items[2].path.write_bytes(b"changed")

    async def all_at_once() -> list[bytes | BaseException]:
        # Asked for in the same turn of the event loop: one worker thread links them all.
        uploads = [target.upload(DS, item, Transfer()) for item in items]
        return await asyncio.gather(*uploads, return_exceptions=True)

    first, missing, changed, last = run(all_at_once())
    assert (first, last) == (b"DCIM/0.jpg", b"DCIM/3.jpg")
    assert isinstance(missing, SourceError)
    assert isinstance(changed, FileChangedError)
    assert stored(target, b"DCIM/0.jpg") == b"image 0"
    assert stored(target, b"DCIM/3.jpg") == b"image 3"
    assert copies(target) == 2


def test_a_spooled_file_on_another_filesystem_is_copied(tmp_path: Path) -> None:
    shm = Path("/dev/shm")  # noqa: S108 (a second filesystem; mkdtemp makes a private folder)
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) to put the spool on")
    target = _directory(tmp_path)
    run(target.ensure_dataset(DS))
    spool = Path(tempfile.mkdtemp(prefix="dronesync-spool-", dir=shm))
    try:
        item = _spooled(tmp_path, spool, random.Random(6).randbytes(200_000))
        assert run(target.upload(DS, item, Transfer())) == b"DCIM/a.jpg"
        archived = target.dataset_dir(DS) / "DCIM" / "a.jpg"
        assert archived.read_bytes() == item.path.read_bytes()
        assert archived.stat().st_dev != item.path.stat().st_dev
    finally:
        for leftover in spool.glob("*"):
            leftover.unlink()
        spool.rmdir()
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
