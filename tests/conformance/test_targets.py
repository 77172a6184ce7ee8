"""The conformance suite: every target passes the same checks.

A new target joins by adding a factory to ``TARGETS`` and teaching ``stored``/``copies`` how to
read it back; the suite then proves it stores files byte-identical, never twice, never from a
file that changed, stops when a transfer is aborted, and reports processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from daemon.errors import (
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TransientTargetError,
)
from daemon.targets.base import (
    DatasetRef,
    MemoryState,
    ProcessingStatus,
    Target,
    Transfer,
    UploadItem,
)
from daemon.targets.directory import DirectoryTargetConfig
from daemon.targets.directory.target import DirectoryTarget
from daemon.targets.memory import MemoryTarget
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.nodeodm.target import NodeODMTarget
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.target import Pix4DCloudTarget, s3_key
from tests.fakes.nodeodm import FakeNodeODM
from tests.fakes.pix4dcloud import FakePix4DCloud

T = TypeVar("T")
DS = DatasetRef(1, "mission")
DEADLINE_S = 20.0


_RUNNER: list[asyncio.Runner] = []


@pytest.fixture(autouse=True)
def _event_loop() -> Iterator[None]:
    """One event loop per test, as in the daemon: connection pools outlive a single call."""
    with asyncio.Runner() as runner:
        _RUNNER.append(runner)
        yield
        _RUNNER.pop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return _RUNNER[-1].run(coro)


def _directory(tmp: Path, command: list[str] | None = None) -> DirectoryTarget:
    config = DirectoryTargetConfig(type="directory", path=tmp / "archive", process_command=command)
    return DirectoryTarget("archive", config, log_dir=tmp / "logs")


# The local servers behind the HTTP targets, to read back what they stored.
NODES: dict[int, FakeNodeODM] = {}
CLOUDS: dict[int, FakePix4DCloud] = {}


def _nodeodm(tmp: Path, stack: contextlib.ExitStack) -> NodeODMTarget:
    node = stack.enter_context(
        FakeNodeODM(tmp / "node", min_images=1, setup_s=0.05, queued_s=0.05, running_s=0.2)
    )
    config = NodeODMTargetConfig(type="nodeodm", url=node.url, poll_s=0.1, timeout_s=10)
    target = NodeODMTarget("odm", config, MemoryState())
    NODES[id(target)] = node
    stack.callback(NODES.pop, id(target))
    return target


def _pix4dcloud(tmp: Path, stack: contextlib.ExitStack) -> Pix4DCloudTarget:
    del tmp
    cloud = stack.enter_context(
        FakePix4DCloud(client_id="conformance", client_secret="s3cret", processing_s=(0.1, 0.3))
    )
    config = Pix4DCloudTargetConfig(
        type="pix4dcloud", url=cloud.url, client_id="conformance", poll_s=0.1, timeout_s=10
    )
    target = Pix4DCloudTarget("cloud", config, MemoryState(), client_secret="s3cret")
    CLOUDS[id(target)] = cloud
    stack.callback(CLOUDS.pop, id(target))
    return target


TARGETS: dict[str, Callable[[Path, contextlib.ExitStack], Target]] = {
    "memory": lambda tmp, stack: MemoryTarget(),
    "directory": lambda tmp, stack: _directory(tmp),
    "nodeodm": _nodeodm,
    "pix4dcloud": _pix4dcloud,
}


def _node_files(target: NodeODMTarget) -> dict[str, Path]:
    """The files of the task the target would commit (a tainted task never is: none)."""
    node = NODES[id(target)]
    task = target.current_task(DS)
    if task is None or target.tainted(DS):
        return {}
    view = node.task(task)
    if view is None:
        return {}
    return {name: p for name in view.files if (p := node.file_path(task, name)) is not None}


def _cloud_objects(target: Pix4DCloudTarget) -> dict[str, tuple[int, str]]:
    cloud = CLOUDS[id(target)]
    project = target.project_id(DS)
    if project is None:
        return {}
    return cloud.objects(cloud.project(project).prefix)


def _cloud_read(cloud: FakePix4DCloud, key: str) -> bytes:
    body = cloud.moto_s3.get_object(Bucket=cloud.bucket, Key=key)["Body"]
    with contextlib.closing(body):
        return body.read()


def stored(target: Target, key: bytes) -> bytes:
    """What the target holds under ``key``, read back the target's own way."""
    if isinstance(target, MemoryTarget):
        return target.objects[(DS.name, key)]
    if isinstance(target, NodeODMTarget):
        return _node_files(target)[target.name_of(DS, key)].read_bytes()
    if isinstance(target, Pix4DCloudTarget):
        cloud = CLOUDS[id(target)]
        project = target.project_id(DS)
        assert project is not None
        return _cloud_read(cloud, s3_key(cloud.project(project).prefix, key))
    assert isinstance(target, DirectoryTarget)
    return Path(os.fsdecode(os.fsencode(target.dataset_dir(DS)) + b"/" + key)).read_bytes()


def copies(target: Target) -> int:
    """How many objects the target holds for the dataset (that processing would get)."""
    if isinstance(target, MemoryTarget):
        return sum(1 for name, _ in target.objects if name == DS.name)
    if isinstance(target, NodeODMTarget):
        return len(_node_files(target))
    if isinstance(target, Pix4DCloudTarget):
        return len(_cloud_objects(target))
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
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with contextlib.ExitStack() as stack:
        made = TARGETS[request.param](tmp_path, stack)
        run(made.ensure_dataset(DS))
        run(made.ensure_dataset(DS))  # idempotent
        yield made
        run(made.aclose())


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
    keys = []
    for n in range(6):  # PIX4Dcloud's minimum
        src = source(tmp_path, f"a{n}.jpg", b"img %d" % n)
        keys.append(run(target.upload(DS, item_for(src, b"a%d.jpg" % n), Transfer())))

    async def process() -> ProcessingStatus:
        return await finish(target, await target.start_processing(DS, keys))

    assert run(process()).state == "done"


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
