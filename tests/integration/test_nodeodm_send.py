"""How one NodeODM upload ends when the node misbehaves.

A node that stalls or goes away costs a bounded wait and a one-line error without the token,
and a task that may hold part of an image is never committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon.errors import FileChangedError, TransientTargetError
from daemon.targets.base import DatasetRef, MemoryState, Transfer, UploadItem
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.nodeodm.api import check_reply
from daemon.targets.nodeodm.target import NodeODMTarget
from tests.conftest import wait_until
from tests.fakes.nodeodm import FakeNodeODM

DS = DatasetRef(1, "flight")
TOKEN = "node-token-kept-secret"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNodeODM]:
    with FakeNodeODM(tmp_path / "node", token=TOKEN, setup_s=0.05) as server:
        yield server


def _target(node: FakeNodeODM, *, timeout_s: float = 10) -> NodeODMTarget:
    config = NodeODMTargetConfig(type="nodeodm", url=node.url, timeout_s=timeout_s)
    return NodeODMTarget("odm", config, MemoryState(), token=TOKEN)


def _image(tmp_path: Path, size: int) -> UploadItem:
    path = tmp_path / "DJI_0001.JPG"
    data = random.Random(size).randbytes(size)
    path.write_bytes(data)
    info = path.stat()
    return UploadItem(
        path, b"DJI_0001.JPG", size, info.st_mtime_ns, hashlib.sha256(data).hexdigest()
    )


def test_a_node_that_stops_reading_ends_the_upload_after_the_timeout(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    # 32 MiB: more than the socket buffers hold, so the sender itself waits for room.
    item = _image(tmp_path, 32 * 1024 * 1024)
    target = _target(node, timeout_s=0.5)

    async def go() -> None:
        await target.ensure_dataset(DS)
        node.faults.add("stall", "upload", delay_s=60, before=True)
        try:
            await target.upload(DS, item, Transfer())
        finally:
            await target.aclose()

    with pytest.raises(TransientTargetError) as caught:
        # Past this deadline the stall (60 s) is being waited out: TimeoutError, not the error.
        asyncio.run(asyncio.wait_for(go(), 30))
    message = str(caught.value)
    assert message.startswith("POST /task/new/upload/")
    assert "\n" not in message
    assert TOKEN not in message
    # Part of the image may be on the node: that task is never committed.
    assert target.tainted(DS)


def test_a_node_that_is_gone_leaves_the_task_clean(tmp_path: Path) -> None:
    item = _image(tmp_path, 3 * 1024 * 1024)
    with FakeNodeODM(tmp_path / "node", token=TOKEN, setup_s=0.05) as node:
        target = _target(node, timeout_s=2)
        asyncio.run(target.ensure_dataset(DS))
    # The node is stopped: nothing can reach it, so nothing reached the task either.
    with pytest.raises(TransientTargetError) as caught:
        asyncio.run(target.upload(DS, item, Transfer()))
    assert str(caught.value).startswith("POST /task/new/upload/")
    assert TOKEN not in str(caught.value)
    assert not target.tainted(DS)
    asyncio.run(target.aclose())


def test_a_node_that_refuses_before_reading_the_image_is_heard(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    # 32 MiB: the node answers and closes long before the image could have been sent.
    item = _image(tmp_path, 32 * 1024 * 1024)
    target = _target(node)

    async def go() -> None:
        await target.ensure_dataset(DS)
        # libs/taskNew.js's preUpload, before multer reads the body.
        node.faults.add("error200_early", "upload", message="Invalid uuid (not set)")
        try:
            await target.upload(DS, item, Transfer())
        finally:
            await target.aclose()

    with pytest.raises(TransientTargetError) as caught:
        asyncio.run(go())
    # The node's own words, not a broken pipe; it stored nothing, so the task stays usable.
    assert "the node says: Invalid uuid (not set)" in str(caught.value)
    assert not target.tainted(DS)


def test_a_refusal_the_node_may_give_after_storing_part_of_the_image_taints_the_task(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    """NodeODM's error handler also answers errors met while multer writes the file."""
    item = _image(tmp_path, 4 * 1024 * 1024)
    target = _target(node)

    async def go() -> None:
        await target.ensure_dataset(DS)
        node.faults.add("error200", "upload", message="ENOSPC: no space left on device, write")
        try:
            await target.upload(DS, item, Transfer())
        finally:
            await target.aclose()

    with pytest.raises(TransientTargetError, match="no space left"):
        asyncio.run(go())
    assert target.tainted(DS)  # a truncated copy may be in the task: never committed


def test_an_image_whose_last_mib_changed_never_reaches_the_node_whole(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    item = _image(tmp_path, 3 * 1024 * 1024)
    data = bytearray(item.path.read_bytes())
    data[-10] ^= 0xFF  # in the last chunk: the first two are sent before the hash tells
    item.path.write_bytes(data)
    os.utime(item.path, ns=(item.mtime_ns, item.mtime_ns))  # only the content tells
    target = _target(node)

    async def go() -> None:
        await target.ensure_dataset(DS)
        try:
            await target.upload(DS, item, Transfer())
        finally:
            await target.aclose()

    with pytest.raises(FileChangedError, match="content differs from its recorded hash"):
        asyncio.run(go())
    task = target.current_task(DS)
    assert task is not None

    def settled() -> list[tuple[bool, bool]]:
        """The task's files once the node is done reading each: cut short, or whole."""
        view = node.task(task)
        files = list(view.files.values()) if view is not None else []
        if not files or any(not f.truncated and f.size < item.size for f in files):
            return []  # still streaming in: the cut is seen when the connection drops
        return [(f.truncated, f.size < item.size) for f in files]

    assert wait_until(settled, what="the node to see the upload end") == [(True, True)]
    assert target.tainted(DS)  # part of an image is in the task: never committed


@pytest.mark.parametrize(
    ("body", "dropped"),
    [
        (b"Internal Server Error", True),  # Express's res.sendStatus(500): the node's own
        (b"<html><h1>500 Internal Server Error</h1>nginx</html>", False),  # a proxy's
    ],
)
def test_only_the_nodes_own_500_to_an_upload_means_nothing_was_stored(
    body: bytes, dropped: bool
) -> None:
    request = httpx.Request("POST", "http://node.lan:3000/task/new/upload/u")
    response = httpx.Response(500, content=body, request=request)
    with pytest.raises(TransientTargetError) as caught:
        check_reply("POST /task/new/upload/u", response, upload=True)
    assert ("dropped the upload unread" in str(caught.value)) is dropped
