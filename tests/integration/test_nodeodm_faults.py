"""The NodeODM target against a node that refuses, fails and limits, as a real one was seen to.

Each test drives the target as the engine does (one upload call per attempt) against the local
NodeODM-compatible server, with the journal's state in memory and the clock injected.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon.errors import (
    DatasetResetError,
    PermanentTargetError,
    TargetPausedError,
    TransientTargetError,
)
from daemon.targets.base import DatasetRef, MemoryState, Transfer, UploadItem
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.nodeodm.target import NodeODMTarget
from tests.conftest import wait_until
from tests.fakes.nodeodm import FakeNodeODM

DS = DatasetRef(1, "flight")
TOKEN = "node-token-kept-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


_MADE: list[NodeODMTarget] = []


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNodeODM]:
    with FakeNodeODM(
        tmp_path / "node", token=TOKEN, setup_s=0.05, queued_s=0.05, running_s=0.2
    ) as server:
        yield server
        while _MADE:
            asyncio.run(_MADE.pop().aclose())


def _target(
    node: FakeNodeODM,
    state: MemoryState,
    clock: Clock | None = None,
    token: str = TOKEN,
    **config: object,
) -> NodeODMTarget:
    settings = NodeODMTargetConfig.model_validate(
        {"type": "nodeodm", "url": node.url, "timeout_s": 10, "poll_s": 0.1, **config}
    )
    target = NodeODMTarget("odm", settings, state, token=token, clock=clock or Clock())
    _MADE.append(target)
    return target


def _item(folder: Path, key: str, data: bytes | None = None) -> UploadItem:
    path = folder / key.replace("/", "__")
    data = random.Random(key).randbytes(3000) if data is None else data
    path.write_bytes(data)
    info = path.stat()
    return UploadItem(
        path, key.encode(), len(data), info.st_mtime_ns, hashlib.sha256(data).hexdigest()
    )


def _send(target: NodeODMTarget, item: UploadItem) -> bytes:
    return asyncio.run(target.upload(DS, item, Transfer()))


def _until_sent(target: NodeODMTarget, item: UploadItem, tries: int = 20) -> None:
    """Attempts as the engine makes them, at once (the engine's backoff is not under test)."""
    for _ in range(tries):
        try:
            _send(target, item)
        except TransientTargetError:
            continue
        return
    pytest.fail(f"{item.key!r} not sent in {tries} attempts")


def test_uploads_the_node_drops_unread_go_into_the_same_task(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    node.drop_uploads = 0.5
    state = MemoryState()
    target = _target(node, state)
    items = [_item(tmp_path, f"DJI_{n:04d}.JPG") for n in range(30)]
    for item in items:
        _until_sent(target, item)
    task = target.current_task(DS)
    assert task is not None
    assert node.dropped >= 5
    assert target.resets(DS) == 0
    assert state.requeued == {}
    stored = node.tasks()[task].files
    assert sorted(f.sha256 for f in stored.values()) == sorted(i.sha256 for i in items)
    assert sorted(stored) == sorted(i.key.decode() for i in items)
    assert len([t for t in node.tasks().values() if t.upload_calls]) == 1


@pytest.mark.parametrize("style", ["keepalive", "close"])
def test_a_dropped_upload_is_sent_again_whether_the_node_closes_or_keeps_the_connection(
    node: FakeNodeODM, tmp_path: Path, style: str
) -> None:
    node.drop_style = style
    state = MemoryState()
    target = _target(node, state)
    item = _item(tmp_path, "IMG_0001.JPG", random.Random(1).randbytes(2_000_000))
    _send(target, item)  # creates the task
    node.drop_uploads = 1.0
    with pytest.raises(TransientTargetError, match="HTTP 500") as caught:
        _send(target, _item(tmp_path, "other.JPG"))
    assert not isinstance(caught.value, DatasetResetError)
    node.drop_uploads = 0.0
    _send(target, _item(tmp_path, "other.JPG"))
    assert target.resets(DS) == 0
    assert not target.tainted(DS)


def test_replacements_back_off_are_counted_and_end_in_needing_attention(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    clock = Clock()
    state = MemoryState()
    target = _target(node, state, clock, max_task_replacements=3)
    first = _item(tmp_path, "A.JPG")
    _send(target, first)
    # Every upload is cut off mid-body from now on: each may leave part of an image.
    node.faults.add("cut_mid_body", "upload", times=None)
    second = _item(tmp_path, "B.JPG")
    with pytest.raises(TransientTargetError):
        _send(target, second)
    assert target.tainted(DS)
    for replaced in (1, 2):  # the first two replacements are made at once
        with pytest.raises(TransientTargetError):
            _send(target, second)  # replaced, and cut again
        assert target.resets(DS) == replaced
    # Too soon for another replacement: the file waits, told why and for how long.
    with pytest.raises(TransientTargetError, match=r"task replaced 2 times: .*next in 5 s") as e:
        _send(target, second)
    assert e.value.retry_after == pytest.approx(5)
    # A restart keeps the count and the wait (both are in the journal's memos).
    target = _target(node, state, clock, max_task_replacements=3)
    with pytest.raises(TransientTargetError, match="task replaced 2 times"):
        _send(target, second)
    clock.now += 5
    with pytest.raises(TransientTargetError):
        _send(target, second)
    assert target.resets(DS) == 3
    clock.now += 10
    with pytest.raises(PermanentTargetError, match="task replaced 3 times") as spent:
        _send(target, second)
    assert "dronesync retry flight" in str(spent.value)
    # Every other file of the dataset fails the same way, without a request to the node.
    uploads = node.requests["upload"]
    with pytest.raises(PermanentTargetError, match="task replaced 3 times"):
        _send(target, _item(tmp_path, "C.JPG"))
    assert node.requests["upload"] == uploads
    # `dronesync retry`: the file comes back and the dataset has a fresh budget.
    node.faults.clear()
    _until_sent(target, second)
    assert target.resets(DS) == 1
    _until_sent(target, first)
    _until_sent(target, _item(tmp_path, "C.JPG"))
    task = target.current_task(DS)
    assert task is not None
    assert sorted(node.tasks()[task].files) == ["A.JPG", "B.JPG", "C.JPG"]
    assert not any(f.truncated for f in node.tasks()[task].files.values())


def test_an_abandoned_task_is_reported_with_the_bytes_the_node_keeps(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    state = MemoryState()
    target = _target(node, state)
    _send(target, _item(tmp_path, "A.JPG", b"a" * 10_000))
    old = target.current_task(DS)
    node.faults.add("cut_mid_body", "upload")
    with pytest.raises(TransientTargetError):
        _send(target, _item(tmp_path, "B.JPG", b"b" * 20_000))
    with structlog.testing.capture_logs() as logs:
        _send(target, _item(tmp_path, "B.JPG", b"b" * 20_000))
    left = [e for e in logs if "cleanup_uploads_after" in e["event"]]
    assert len(left) == 1
    assert left[0]["task"] == old
    assert left[0]["bytes_left"] == 30_000
    # Asking the node to remove it would only be answered "not found".
    assert node.requests["remove"] == 0


def test_a_wrong_token_pauses_without_naming_the_token(node: FakeNodeODM, tmp_path: Path) -> None:
    state = MemoryState()
    wrong = "wrong-token-also-secret"
    target = _target(node, state, token=wrong)
    with pytest.raises(TargetPausedError) as caught:
        _send(target, _item(tmp_path, "A.JPG"))
    message = str(caught.value)
    assert "token" in message
    assert "reload" in message
    assert wrong not in message
    assert TOKEN not in message
    # The same words whichever request met the refusal: one message for the operator.
    with pytest.raises(TargetPausedError) as again:
        asyncio.run(target.start_processing(DS, [b"A.JPG"]))
    assert str(again.value) == message
    # The right token (a reload builds the target anew): uploads go.
    target = _target(node, state)
    _send(target, _item(tmp_path, "A.JPG"))
    assert target.current_task(DS) is not None


def test_a_dataset_above_the_nodes_max_images_fails_before_any_upload(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    node.max_images = 3
    state = MemoryState()
    state.files[DS.id] = 4
    target = _target(node, state)
    with pytest.raises(PermanentTargetError) as caught:
        _send(target, _item(tmp_path, "A.JPG"))
    assert "4 files" in str(caught.value)
    assert "at most 3" in str(caught.value)
    assert "split the folder" in str(caught.value)
    assert "--max_images" in str(caught.value)
    assert node.requests["upload"] == 0
    # Within the limit, or on a node without one, it goes.
    state.files[DS.id] = 3
    target = _target(node, state)
    _send(target, _item(tmp_path, "A.JPG"))


def test_names_are_kept_unless_another_image_of_the_dataset_has_it(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    state = MemoryState()
    target = _target(node, state)
    keys = [
        "DCIM/100MEDIA/DJI_0001.JPG",
        "DCIM/100MEDIA/DJI_0002.JPG",
        "DCIM/101MEDIA/DJI_0001.JPG",
        "DCIM/101MEDIA/DJI_0003.JPG",
    ]
    items = [_item(tmp_path, key) for key in keys]
    gcp = _item(
        tmp_path,
        "gcp_list.txt",
        b"EPSG:4326\n-91.9 46.8 198.1 1420.0 2840.5 DJI_0001.JPG\n"
        b"-91.9 46.8 198.1 1020.0 840.5 DJI_0003.JPG\n",
    )
    for item in [*items, gcp]:
        _send(target, item)
    task = target.current_task(DS)
    assert task is not None
    names = sorted(node.tasks()[task].files)
    renamed = target.name_of(DS, b"DCIM/101MEDIA/DJI_0001.JPG")
    assert renamed.startswith("DJI_0001-")
    assert renamed.endswith(".JPG")
    assert names == sorted(
        ["DJI_0001.JPG", "DJI_0002.JPG", renamed, "DJI_0003.JPG", "gcp_list.txt"]
    )
    # The choice holds for a restarted daemon and for processing.
    again = _target(node, state)
    assert [again.name_of(DS, k.encode()) for k in keys] == [
        "DJI_0001.JPG",
        "DJI_0002.JPG",
        renamed,
        "DJI_0003.JPG",
    ]
    handle = asyncio.run(again.start_processing(DS, [*(k.encode() for k in keys), b"gcp_list.txt"]))
    status = asyncio.run(again.processing_status(DS, handle))
    assert status.detail is not None
    assert "gcp_list.txt names DJI_0001.JPG" in status.detail
    assert "DJI_0003" not in status.detail


def test_a_task_failed_without_a_message_shows_the_end_of_its_output(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    node.fail_processing = True
    node.fail_message = ""  # as the real node's --test_fail_tasks
    state = MemoryState()
    target = _target(node, state)
    keys = [b"A.JPG", b"B.JPG"]
    for key in keys:
        _send(target, _item(tmp_path, key.decode()))
    handle = asyncio.run(target.start_processing(DS, keys))

    def failed() -> object:
        status = asyncio.run(target.processing_status(DS, handle))
        return status if status.state == "failed" else None

    status = wait_until(failed, what="the task failed")
    assert "its output ends" in status.detail
    assert "The program exited with a non-zero status" in status.detail


def test_a_commit_whose_reply_was_lost_is_never_followed_by_a_second_task(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    state = MemoryState()
    target = _target(node, state)
    keys = [b"A.JPG", b"B.JPG"]
    for key in keys:
        _send(target, _item(tmp_path, key.decode()))
    task = target.current_task(DS)
    # The commit is acted on but its reply lost, and the node's info is refused twice, so
    # the task cannot be seen committed; the next commit is answered "not found".
    node.faults.add("cut_after_body", "commit")
    node.faults.add("error200", "info", times=2)
    with pytest.raises(TransientTargetError):
        asyncio.run(target.start_processing(DS, keys))
    handle = asyncio.run(target.start_processing(DS, keys))
    assert handle == task
    assert state.requeued == {}
    committed = [t for t in node.tasks().values() if t.committed]
    assert [t.uuid for t in committed] == [task]
    status = wait_until(
        lambda: (s := asyncio.run(target.processing_status(DS, handle))).state == "done" and s,
        what="the one task processed",
    )
    assert status.state == "done"


def test_retry_renews_a_spent_budget_in_a_daemon_started_again(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    """The engine asks ensure_dataset first: a spent budget must not fail it there for good."""
    clock = Clock()
    state = MemoryState()
    target = _target(node, state, clock, max_task_replacements=1)
    item = _item(tmp_path, "A.JPG")
    node.faults.add("cut_mid_body", "upload", times=None)
    with pytest.raises(TransientTargetError):
        _send(target, item)  # cut: the task is tainted
    with pytest.raises(TransientTargetError):
        _send(target, item)  # replaced once, and cut again
    with pytest.raises(PermanentTargetError, match="task replaced 1 times"):
        _send(target, item)
    node.faults.clear()
    # The node is fixed, the service reloaded (a new target), `dronesync retry flight`.
    again = _target(node, state, clock, max_task_replacements=1)
    asyncio.run(again.ensure_dataset(DS))
    _until_sent(again, item)
    task = again.current_task(DS)
    assert task is not None
    assert sorted(node.tasks()[task].files) == ["A.JPG"]


def test_two_images_of_one_name_sent_at_once_each_reach_the_task(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    target = _target(node, MemoryState())
    first = _item(tmp_path, "100MEDIA/DJI_0001.JPG")
    second = _item(tmp_path, "101MEDIA/DJI_0001.JPG")

    async def both() -> None:
        await asyncio.gather(
            target.upload(DS, first, Transfer()), target.upload(DS, second, Transfer())
        )

    asyncio.run(both())
    task = target.current_task(DS)
    assert task is not None
    assert not target.tainted(DS)
    files = node.tasks()[task].files
    assert len(files) == 2
    assert "DJI_0001.JPG" in files


def test_a_second_ancillary_file_of_one_name_fails_with_the_reason(
    node: FakeNodeODM, tmp_path: Path
) -> None:
    """ODM reads geo.txt by its name, and takes any other .txt for a GCP file."""
    target = _target(node, MemoryState())
    _send(target, _item(tmp_path, "A/geo.txt", b"EPSG:4326\n"))
    with pytest.raises(PermanentTargetError, match=r"a second geo\.txt in the dataset: A/geo\.txt"):
        _send(target, _item(tmp_path, "B/geo.txt", b"EPSG:4326\n"))
    task = target.current_task(DS)
    assert task is not None
    assert sorted(node.tasks()[task].files) == ["geo.txt"]
