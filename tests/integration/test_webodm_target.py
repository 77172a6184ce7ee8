"""The WebODM target against the local WebODM-compatible server: what the conformance suite
cannot say about it. A lost reply never makes a second task nor a second copy of an image,
names that collide stay apart whether the server replaces or keeps a name sent twice, a
lapsed token is renewed, and a failed task says why and is made anew when processed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from daemon.errors import (
    DatasetResetError,
    PermanentTargetError,
    TargetPausedError,
    TransientTargetError,
)
from daemon.targets.base import MemoryState, ProcessingStatus, Transfer, UploadItem
from daemon.targets.webodm import WebODMTargetConfig
from daemon.targets.webodm.target import WebODMTarget
from tests.conformance.harness import DS, event_loop, finish, item_for, run
from tests.fakes.webodm import FakeWebODM

PASSWORD = "s3cret"


_MADE: list[WebODMTarget] = []


@pytest.fixture(autouse=True)
def _loop() -> Iterator[None]:
    with event_loop():
        yield
        while _MADE:
            run(_MADE.pop().aclose())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeWebODM]:
    with FakeWebODM(tmp_path / "webodm", users={"drone": PASSWORD}, running_s=0.1) as made:
        yield made


def _target(server: FakeWebODM, state: MemoryState, **config: object) -> WebODMTarget:
    table = WebODMTargetConfig.model_validate(
        {"type": "webodm", "url": server.url, "username": "drone", "timeout_s": 10, **config}
    )
    made = WebODMTarget("webodm", table, state, password=PASSWORD)
    _MADE.append(made)
    return made


def _item(tmp_path: Path, key: bytes, seed: int, size: int = 20_000) -> UploadItem:
    path = tmp_path / "card" / key.decode("utf-8", "replace").replace("/", "_")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return item_for(path, key)


def _upload(target: WebODMTarget, item: UploadItem) -> bytes:
    return run(target.upload(DS, item, Transfer()))


def _task_id(target: WebODMTarget) -> str:
    task = target.current_task(DS)
    assert task is not None
    return task.partition("/")[2]


def test_a_lost_creation_reply_finds_the_task_instead_of_making_a_second(
    server: FakeWebODM, tmp_path: Path
) -> None:
    target = _target(server, MemoryState(), options={"dsm": True}, processing_node=1)
    item = _item(tmp_path, b"DJI_0001.JPG", 1)
    server.faults.add("lost_reply", "create")
    with pytest.raises(TransientTargetError):
        _upload(target, item)
    assert len(server.tasks_named("mission")) == 1  # made, its reply lost
    _upload(target, item)
    assert server.tasks_named("mission") == [_task_id(target)]
    info = server.task_info(_task_id(target))
    assert info["partial"] is True
    assert info["options"] == [{"name": "dsm", "value": True}]
    assert info["processing_node"] == 1
    assert server.files(_task_id(target)) == {"DJI_0001.JPG": item.path.read_bytes()}


def test_a_restart_after_a_lost_creation_reply_finds_it_too(
    server: FakeWebODM, tmp_path: Path
) -> None:
    state = MemoryState()
    item = _item(tmp_path, b"a.jpg", 2)
    server.faults.add("lost_reply", "create")
    with pytest.raises(TransientTargetError):
        _upload(_target(server, state), item)
    again = _target(server, state)
    _upload(again, item)
    assert len(server.tasks_named("mission")) == 1


def test_the_project_is_found_by_name_or_made_once(server: FakeWebODM, tmp_path: Path) -> None:
    server.faults.add("lost_reply", "projects")  # the lookup's reply is lost
    first = _target(server, MemoryState(), project="Survey 2026")
    with pytest.raises(TransientTargetError):
        run(first.ensure_dataset(DS))
    run(first.ensure_dataset(DS))
    second = _target(server, MemoryState(), project="Survey 2026")
    run(second.ensure_dataset(DS))
    _upload(second, _item(tmp_path, b"a.jpg", 3))
    assert [p["name"] for p in server.projects()] == ["Survey 2026"]
    by_id = _target(server, MemoryState(), project=str(server.projects()[0]["id"]))
    run(by_id.ensure_dataset(DS))
    with pytest.raises(PermanentTargetError, match="no project 99"):
        run(_target(server, MemoryState(), project="99").ensure_dataset(DS))


@pytest.mark.parametrize("collision", ["replace", "keep"])
def test_colliding_names_stay_apart_and_a_lost_reply_leaves_one_copy(
    server: FakeWebODM, tmp_path: Path, collision: Literal["replace", "keep"]
) -> None:
    server.collision = collision
    target = _target(server, MemoryState())
    first = _item(tmp_path, b"100MEDIA/DJI_0001.JPG", 4)
    second = _item(tmp_path, b"101MEDIA/DJI_0001.JPG", 5)
    other = _item(tmp_path, b"101MEDIA/DJI_0002.JPG", 6)
    _upload(target, first)
    server.faults.add("lost_reply", "upload")  # stored, but the client never hears it
    with pytest.raises(TransientTargetError):
        _upload(target, second)
    _upload(target, second)  # the retry finds it there
    _upload(target, other)
    _upload(target, second)  # and the same item again stores nothing
    files = server.files(_task_id(target))
    renamed = target.name_of(DS, second.key)
    assert renamed.startswith("DJI_0001-")
    assert renamed.endswith(".JPG")
    assert files == {
        "DJI_0001.JPG": first.path.read_bytes(),
        renamed: second.path.read_bytes(),
        "DJI_0002.JPG": other.path.read_bytes(),  # only the colliding name is changed
    }


def test_a_cut_upload_stores_nothing_and_the_retry_stores_it_once(
    server: FakeWebODM, tmp_path: Path
) -> None:
    server.collision = "keep"
    target = _target(server, MemoryState())
    item = _item(tmp_path, b"a.jpg", 7, size=3_000_000)
    server.faults.add("cut_mid_body", "upload")
    with pytest.raises(TransientTargetError):
        _upload(target, item)
    assert server.files(_task_id(target)) == {}
    server.faults.add("status500", "upload")
    with pytest.raises(TransientTargetError, match="HTTP 500"):
        _upload(target, item)
    _upload(target, item)
    assert server.files(_task_id(target)) == {"a.jpg": item.path.read_bytes()}


def test_a_lapsed_token_is_renewed_once_for_every_upload(
    server: FakeWebODM, tmp_path: Path
) -> None:
    target = _target(server, MemoryState())
    _upload(target, _item(tmp_path, b"a.jpg", 8))
    assert server.sign_ins == 1
    server.expire_tokens()

    async def several() -> None:
        items = [_item(tmp_path, b"b%d.jpg" % n, 10 + n) for n in range(4)]
        await asyncio.gather(*(target.upload(DS, i, Transfer()) for i in items))

    run(several())
    assert server.sign_ins == 2  # one renewal shared by the four
    server.faults.add("expired_token", "upload")  # one request meets a lapsed token
    _upload(target, _item(tmp_path, b"c.jpg", 20))
    assert len(server.files(_task_id(target))) == 6


def test_a_refused_password_pauses_the_target(server: FakeWebODM, tmp_path: Path) -> None:
    server.users["drone"] = "rotated"
    target = _target(server, MemoryState())
    with pytest.raises(TargetPausedError, match="sign-in needed") as caught:
        _upload(target, _item(tmp_path, b"a.jpg", 9))
    assert PASSWORD not in str(caught.value)
    with pytest.raises(TargetPausedError):
        _upload(target, _item(tmp_path, b"a.jpg", 9))
    assert server.sign_ins == 0
    assert server.requests["token"] == 1  # the refusal is remembered, not asked again


def _fill_and_process(target: WebODMTarget, tmp_path: Path, seed: int) -> ProcessingStatus:
    keys = [_upload(target, _item(tmp_path, b"p%d.jpg" % n, seed + n)) for n in range(3)]

    async def process() -> ProcessingStatus:
        return await finish(target, await target.start_processing(DS, keys))

    return run(process())


def test_a_failed_task_says_why_and_processing_again_makes_a_new_task(
    server: FakeWebODM, tmp_path: Path
) -> None:
    state = MemoryState()
    target = _target(server, state)
    server.fail_processing = True
    status = _fill_and_process(target, tmp_path, 30)
    assert status.state == "failed"
    assert status.detail == "WebODM failed the task: Cannot process dataset"
    failed = _task_id(target)
    server.fail_processing = False
    with pytest.raises(DatasetResetError):
        run(target.start_processing(DS, [b"p0.jpg"]))
    assert state.requeued[DS.id] == 1
    assert _fill_and_process(target, tmp_path, 30).state == "done"
    assert _task_id(target) != failed
    assert server.commits(failed) == 1
    assert server.commits(_task_id(target)) == 1


def test_a_lost_commit_reply_commits_once(server: FakeWebODM, tmp_path: Path) -> None:
    target = _target(server, MemoryState(), download_dir=str(tmp_path / "out"))
    keys = [_upload(target, _item(tmp_path, b"p%d.jpg" % n, n)) for n in range(2)]
    server.faults.add("lost_reply", "commit")
    handle = run(target.start_processing(DS, keys))
    assert server.commits(_task_id(target)) == 1
    status = run(finish(target, handle))
    assert status.state == "done"
    assert (tmp_path / "out" / "mission.zip").stat().st_size > 0


def test_a_task_deleted_in_webodm_is_made_anew(server: FakeWebODM, tmp_path: Path) -> None:
    state = MemoryState()
    target = _target(server, state)
    _upload(target, _item(tmp_path, b"a.jpg", 1))
    server.delete_task(_task_id(target))
    with pytest.raises(TransientTargetError, match="new task"):
        _upload(target, _item(tmp_path, b"b.jpg", 2))
    assert state.requeued[DS.id] == 1
    _upload(target, _item(tmp_path, b"b.jpg", 2))
    assert len(server.tasks_named("mission")) == 1


def test_the_processing_node_is_checked_before_commit(server: FakeWebODM, tmp_path: Path) -> None:
    state = MemoryState()
    server.nodes[2] = {"online": False, "max_images": 2}
    target = _target(server, state, processing_node=2)
    keys = [_upload(target, _item(tmp_path, b"p%d.jpg" % n, n)) for n in range(3)]
    with pytest.raises(TransientTargetError, match="offline"):
        run(target.start_processing(DS, keys))
    server.nodes[2]["online"] = True
    state.files[DS.id] = 3
    with pytest.raises(PermanentTargetError, match="at most 2"):
        run(target.start_processing(DS, keys))
    with contextlib.suppress(KeyError):
        server.nodes.pop(2)
    with pytest.raises(PermanentTargetError, match="no processing node 2"):
        run(target.start_processing(DS, keys))
