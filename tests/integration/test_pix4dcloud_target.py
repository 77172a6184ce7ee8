"""The PIX4Dcloud target after ordinary faults, against each way the real API may answer.

PIX4D does not document how ``bulk_register`` counts a key registered before, nor how its
project list is shaped; the local server answers each plausible way (``register_counts``,
``project_list``) and the target must work against all. What the operator counts on: after
a refused ``start_processing`` or a lost reply, processing starts, with every image
registered and no second start; a lost reply to a project creation leaves one project,
not two; a count that nothing explains stops with a message instead of looping.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
import structlog.testing

from daemon.errors import PermanentTargetError, TransientTargetError
from daemon.targets.base import DatasetRef, MemoryState, Transfer, UploadItem
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.target import Pix4DCloudTarget, s3_key
from tests.fakes.pix4dcloud import FakePix4DCloud

T = TypeVar("T")
DS = DatasetRef(1, "mission")
SECRET = "s3cret"


class Box:
    """The target as the daemon holds it, one journal kept across restarts, one event loop."""

    def __init__(self, runner: asyncio.Runner, server: FakePix4DCloud) -> None:
        self.runner = runner
        self.server = server
        self.state = MemoryState()
        self.config = Pix4DCloudTargetConfig(
            type="pix4dcloud", url=server.url, client_id="box", poll_s=0.1, timeout_s=10
        )
        self.target = self.restarted()

    def restarted(self) -> Pix4DCloudTarget:
        """A new target on the same journal: what the next daemon process builds."""
        return Pix4DCloudTarget("cloud", self.config, self.state, client_secret=SECRET)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def flight(self, tmp_path: Path, count: int) -> list[bytes]:
        """Upload ``count`` small images; returns their keys in the dataset."""
        keys: list[bytes] = []
        for n in range(count):
            data = random.Random(n).randbytes(20_000)
            path = tmp_path / f"DJI_{n:04d}.JPG"
            path.write_bytes(data)
            info = path.stat()
            key = f"DCIM/100MEDIA/{path.name}".encode()
            item = UploadItem(
                path, key, len(data), info.st_mtime_ns, hashlib.sha256(data).hexdigest()
            )
            keys.append(self.run(self.target.upload(DS, item, Transfer())))
        return keys

    def project_id(self) -> int:
        project = self.target.project_id(DS)
        assert project is not None
        return project


@pytest.fixture
def box() -> Iterator[Box]:
    with (
        structlog.testing.capture_logs(),
        asyncio.Runner() as runner,
        FakePix4DCloud(client_id="box", client_secret=SECRET, processing_s=(5.0, 5.0)) as server,
    ):
        made = Box(runner, server)
        yield made
        made.run(made.target.aclose())


def _api(server: FakePix4DCloud) -> httpx.Client:
    """Another client of the same account (the web app, a colleague's script)."""
    token = httpx.post(
        f"{server.url}/oauth2/token/",
        data={"grant_type": "client_credentials", "client_id": "box", "client_secret": SECRET},
    ).json()["access_token"]
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"})


COUNTS = ["sent", "new"]


@pytest.mark.parametrize("counts", COUNTS)
def test_processing_starts_after_start_processing_was_refused_once(
    box: Box, tmp_path: Path, counts: Literal["sent", "new"]
) -> None:
    box.server.register_counts = counts
    keys = box.flight(tmp_path, 8)
    box.server.api_faults.add("status503", "start")
    with pytest.raises(TransientTargetError):
        box.run(box.target.start_processing(DS, keys))
    # The next try, by the same process or after a restart: processing starts.
    restarted = box.restarted()
    handle = box.run(restarted.start_processing(DS, keys))
    box.run(restarted.aclose())
    project = box.server.project(box.project_id())
    assert handle == str(project.id)
    assert project.public_status == "WAITING"
    assert project.start_calls == 1
    assert project.registered == {s3_key(project.prefix, k) for k in keys}
    assert box.server.requests["register"] == 1  # registered once, not again on the retry


@pytest.mark.parametrize("counts", COUNTS)
@pytest.mark.parametrize("lost", ["reset_after", "truncated_json"])
def test_processing_starts_after_the_reply_to_bulk_register_was_lost(
    box: Box, tmp_path: Path, counts: Literal["sent", "new"], lost: str
) -> None:
    box.server.register_counts = counts
    keys = box.flight(tmp_path, 8)
    box.server.api_faults.add(lost, "register")  # the server registered them, then the reply
    with pytest.raises(TransientTargetError):
        box.run(box.target.start_processing(DS, keys))
    box.run(box.target.start_processing(DS, keys))
    project = box.server.project(box.project_id())
    assert project.public_status == "WAITING"
    assert project.start_calls == 1
    assert project.registered == {s3_key(project.prefix, k) for k in keys}


def test_a_short_count_nothing_explains_stops_with_a_message_not_a_loop(
    box: Box, tmp_path: Path
) -> None:
    box.server.register_counts = "new"
    keys = box.flight(tmp_path, 8)
    project = box.server.project(box.project_id())
    # Someone registered two of the images already: the server counts 6 of 8.
    with _api(box.server) as api:
        two = [s3_key(project.prefix, k) for k in keys[:2]]
        reply = api.post(
            f"/project/api/v3/projects/{project.id}/inputs/bulk_register/",
            json={"input_file_keys": two},
        )
        assert reply.status_code == 200
    with pytest.raises(PermanentTargetError, match="registered 6 of 8 images") as refused:
        box.run(box.target.start_processing(DS, keys))
    assert "dronesync process" in str(refused.value)
    # The operator looked and asks again: processing starts with what is registered.
    box.run(box.target.start_processing(DS, keys))
    assert box.server.project(project.id).public_status == "WAITING"
    assert box.server.requests["register"] == 2  # theirs and ours: nothing sent again


@pytest.mark.parametrize("listing", ["paged", "plain"])
@pytest.mark.parametrize("lost", ["reset_after", "truncated_json"])
def test_a_lost_reply_to_the_project_creation_makes_no_second_project(
    box: Box, tmp_path: Path, listing: Literal["paged", "plain"], lost: str
) -> None:
    box.server.project_list = listing
    box.server.page_size = 2
    with _api(box.server) as api:
        # The account's other projects, one of the same name made earlier and started.
        for name in ("north field", "mission", "south field", "quarry"):
            made = api.post("/project/api/v3/projects/", json={"name": name}).json()
            if name == "mission":
                _start(box.server, api, made)
    box.server.api_faults.add(lost, "projects")  # the project is made, its reply lost
    with pytest.raises(TransientTargetError):
        box.run(box.target.ensure_dataset(DS))
    restarted = box.restarted()
    box.run(restarted.ensure_dataset(DS))
    box.run(restarted.aclose())
    keys = box.flight(tmp_path, 6)
    box.run(box.target.start_processing(DS, keys))
    missions = [p for p in box.server.projects().values() if p.name == "mission"]
    assert len(missions) == 2  # the earlier one and this dataset's: no empty third
    mine = box.server.project(box.project_id())
    assert mine.id == max(p.id for p in missions)
    assert mine.registered == {s3_key(mine.prefix, k) for k in keys}
    assert box.server.requests["projects"] == 5  # four by the other client, one by the box


@pytest.mark.parametrize("lost", ["reset_after", "reset"])
def test_a_new_project_of_the_same_name_made_by_someone_else_is_never_taken(
    box: Box, lost: str
) -> None:
    """Names repeat: only a project made when this box's request was sent can be its own."""
    with _api(box.server) as api:
        other = api.post("/project/api/v3/projects/", json={"name": "mission"}).json()["id"]
    box.server.backdate(other, 3600)  # another box's, an hour ago, still uploading
    box.server.api_faults.add(lost, "projects")  # made with its reply lost, or never made
    with pytest.raises(TransientTargetError):
        box.run(box.target.ensure_dataset(DS))
    restarted = box.restarted()
    box.run(restarted.ensure_dataset(DS))
    box.run(restarted.aclose())
    assert box.project_id() != other
    assert box.server.project(box.project_id()).name == "mission"
    missions = [p for p in box.server.projects().values() if p.name == "mission"]
    assert len(missions) == 2  # the other one, untouched, and this dataset's


def _start(server: FakePix4DCloud, api: httpx.Client, project: dict[str, Any]) -> None:
    """Process a project of six tiny images, as another client would."""
    keys = [f"{project['s3_base_path']}/IMG_{n}.JPG" for n in range(6)]
    for key in keys:
        server.moto_s3.put_object(Bucket=server.bucket, Key=key, Body=b"jpeg")
    base = f"/project/api/v3/projects/{project['id']}"
    assert api.post(f"{base}/inputs/bulk_register/", json={"input_file_keys": keys}).is_success
    assert api.post(f"{base}/start_processing/").is_success
