"""How the PIX4Dcloud target puts a file into S3: requests per file, retries, altered bodies.

Against the local PIX4Dcloud server: moto behind the proxy that checks credentials and
``x-amz-checksum-sha256`` as S3 does. What the daemon counts on: a new file costs one
request; a retry after a lost reply stores nothing twice; other content under the key is
replaced; a body altered on the way is refused by S3 (transient) and stored right on the
next attempt, never wrong.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog.testing

from daemon.errors import TransientTargetError
from daemon.targets.base import DatasetRef, MemoryState, Transfer, UploadItem
from daemon.targets.kit.s3api import SHA256_META, checksum_differs
from daemon.targets.kit.s3parts import PartSenders, _Part, _PartBody
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.target import Pix4DCloudTarget, s3_key
from tests.conftest import wait_until
from tests.fakes.pix4dcloud import FakePix4DCloud

T = TypeVar("T")
DS = DatasetRef(1, "mission")
MIB = 1024 * 1024


class Cloud:
    """The target, the server behind it and one event loop, for one test."""

    def __init__(self, runner: asyncio.Runner, cloud: FakePix4DCloud) -> None:
        self.runner = runner
        self.server = cloud
        config = Pix4DCloudTargetConfig(
            type="pix4dcloud",
            url=cloud.url,
            client_id="s3upload",
            poll_s=0.1,
            timeout_s=10,
            multipart_threshold_mb=5,
            part_size_mb=5,
        )
        self.config = config
        self.state = MemoryState()
        self.target = self.restarted()

    def restarted(self) -> Pix4DCloudTarget:
        """The target as a new daemon process makes it: same journal, nothing in memory."""
        return Pix4DCloudTarget("cloud", self.config, self.state, client_secret="s3cret")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def upload(self, item: UploadItem, transfer: Transfer | None = None) -> bytes:
        return self.run(self.target.upload(DS, item, transfer or Transfer()))

    def key(self, item: UploadItem) -> str:
        project = self.target.project_id(DS)
        assert project is not None
        return s3_key(self.server.project(project).prefix, item.key)

    def objects(self) -> dict[str, tuple[int, str]]:
        project = self.target.project_id(DS)
        assert project is not None
        return self.server.objects(self.server.project(project).prefix + "/")

    def requests(self) -> dict[str, int]:
        return dict(self.server.s3_requests)


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    # The target's log events are captured, not printed among the test's output.
    with (
        structlog.testing.capture_logs(),
        asyncio.Runner() as runner,
        FakePix4DCloud(client_id="s3upload", client_secret="s3cret") as server,
    ):
        made = Cloud(runner, server)
        made.run(made.target.ensure_dataset(DS))
        server.s3_requests.clear()  # each test counts its own requests
        yield made
        made.run(made.target.aclose())


def image(tmp_path: Path, name: str, size: int, seed: int = 0) -> UploadItem:
    path = tmp_path / name
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    info = path.stat()
    return UploadItem(path, name.encode(), size, info.st_mtime_ns, hashlib.sha256(data).hexdigest())


def test_a_new_file_costs_one_request(cloud: Cloud, tmp_path: Path) -> None:
    item = image(tmp_path, "DJI_0001.JPG", 300_000)
    cloud.upload(item)
    assert cloud.objects() == {cloud.key(item): (item.size, item.sha256)}
    assert cloud.requests() == {"put_object": 1}
    head = cloud.server.moto_s3.head_object(Bucket=cloud.server.bucket, Key=cloud.key(item))
    assert head["Metadata"] == {SHA256_META: item.sha256}


def test_a_retry_after_a_lost_reply_keeps_the_stored_object(cloud: Cloud, tmp_path: Path) -> None:
    item = image(tmp_path, "DJI_0002.JPG", 200_000)
    cloud.server.s3_faults.add("drop_response", "put_object")
    with pytest.raises(TransientTargetError):
        cloud.upload(item)
    s3, bucket = cloud.server.moto_s3, cloud.server.bucket
    first = s3.head_object(Bucket=bucket, Key=cloud.key(item))
    cloud.upload(item)
    # The conditional PUT is refused (412), the object read and found to be this file.
    assert cloud.requests() == {"put_object": 2, "head_object": 1}
    again = s3.head_object(Bucket=bucket, Key=cloud.key(item))
    assert (again["ETag"], again["LastModified"]) == (first["ETag"], first["LastModified"])
    assert cloud.objects() == {cloud.key(item): (item.size, item.sha256)}


def test_other_content_under_the_key_is_replaced(cloud: Cloud, tmp_path: Path) -> None:
    item = image(tmp_path, "DJI_0003.JPG", 100_000)
    cloud.server.moto_s3.put_object(
        Bucket=cloud.server.bucket, Key=cloud.key(item), Body=b"an earlier version of the file"
    )
    transfer = Transfer()
    cloud.upload(item, transfer)
    assert cloud.objects() == {cloud.key(item): (item.size, item.sha256)}
    assert cloud.requests() == {"put_object": 2, "head_object": 1}
    assert transfer.sent == 2 * item.size  # refused once with the condition, then sent again


def test_a_body_altered_on_the_way_is_refused_then_stored_right(
    cloud: Cloud, tmp_path: Path
) -> None:
    item = image(tmp_path, "DJI_0004.JPG", 500_000)
    cloud.server.s3_faults.add("corrupt_body", "put_object")
    with pytest.raises(TransientTargetError, match="BadDigest"):
        cloud.upload(item)
    assert cloud.server.s3_faults.injected["corrupt_body"] == 1
    assert cloud.objects() == {}
    cloud.upload(item)
    assert cloud.objects() == {cloud.key(item): (item.size, item.sha256)}


def test_a_part_altered_on_the_way_is_refused_then_stored_right(
    cloud: Cloud, tmp_path: Path
) -> None:
    item = image(tmp_path, "DJI_0005.JPG", 5 * MIB + 4321)  # two parts
    cloud.server.s3_faults.add("corrupt_body", "upload_part", after=1)
    with pytest.raises(TransientTargetError, match="BadDigest"):
        cloud.upload(item)
    assert cloud.server.s3_faults.injected["corrupt_body"] == 1
    assert cloud.objects() == {}
    uploads = cloud.server.moto_s3.list_multipart_uploads(Bucket=cloud.server.bucket)
    assert uploads.get("Uploads", []) == []  # aborted
    cloud.upload(item)
    assert cloud.objects() == {cloud.key(item): (item.size, item.sha256)}


def test_a_large_file_stored_before_a_lost_reply_is_not_sent_again(
    cloud: Cloud, tmp_path: Path
) -> None:
    item = image(tmp_path, "DJI_0006.JPG", 5 * MIB + 1)
    cloud.server.s3_faults.add("drop_response", "complete_multipart")
    with pytest.raises(TransientTargetError):
        cloud.upload(item)
    parts = cloud.requests()["upload_part"]
    assert parts == 2
    cloud.upload(item)
    assert cloud.requests()["upload_part"] == parts  # looked up first, found, not sent
    assert cloud.objects() == {cloud.key(item): (item.size, item.sha256)}


def test_a_large_file_goes_several_parts_at_a_time(cloud: Cloud, tmp_path: Path) -> None:
    item = image(tmp_path, "DJI_0007.MP4", 3 * 5 * MIB + 1234)  # four parts
    # The first part is held up: the others go meanwhile, not one after another.
    cloud.server.s3_faults.add("stall", "upload_part", delay_s=1.0)
    transfer = Transfer()
    cloud.upload(item, transfer)
    assert cloud.objects() == {cloud.key(item): (item.size, item.sha256)}
    assert cloud.requests()["upload_part"] == 4
    assert cloud.server.s3_most_at_once["upload_part"] >= 2
    assert transfer.sent == item.size


def test_an_aborted_large_file_leaves_nothing_behind(cloud: Cloud, tmp_path: Path) -> None:
    item = image(tmp_path, "DJI_0008.MP4", 2 * 5 * MIB + 99)
    transfer = Transfer()
    transfer.abort("dataset cancelled")
    with pytest.raises(TransientTargetError, match="dataset cancelled"):
        cloud.upload(item, transfer)
    assert cloud.objects() == {}
    uploads = cloud.server.moto_s3.list_multipart_uploads(Bucket=cloud.server.bucket)
    assert uploads.get("Uploads", []) == []  # aborted


def test_stopping_during_a_large_file_ends_it_and_leaves_no_upload_behind(
    cloud: Cloud, tmp_path: Path
) -> None:
    item = image(tmp_path, "DJI_0009.MP4", 4 * 5 * MIB)  # four parts
    cloud.server.s3_faults.add("stall", "upload_part", delay_s=0.5, times=None)
    transfer = Transfer()

    async def stop_midway() -> BaseException | None:
        upload = asyncio.ensure_future(cloud.target.upload(DS, item, transfer))
        sent = lambda: cloud.requests().get("upload_part", 0) >= 1  # noqa: E731
        await asyncio.to_thread(wait_until, sent, what="a part on the wire")
        transfer.abort("daemon stopping")  # what the engine does on stop; the target closes
        await cloud.target.aclose()
        try:
            await asyncio.wait_for(upload, timeout=10)
        except BaseException as exc:  # noqa: BLE001 (the error is the result)
            return exc
        return None

    error = cloud.run(stop_midway())
    assert isinstance(error, TransientTargetError), error
    assert cloud.objects() == {}
    uploads = cloud.server.moto_s3.list_multipart_uploads(Bucket=cloud.server.bucket)
    assert uploads.get("Uploads", []) == []  # aborted


def test_uploads_a_crash_left_unfinished_are_aborted_on_the_next_start(
    cloud: Cloud, tmp_path: Path
) -> None:
    s3, bucket = cloud.server.moto_s3, cloud.server.bucket
    project = cloud.server.project(cloud.target.project_id(DS) or 0)
    # What a SIGKILL in the middle of two large files leaves in the bucket: their parts.
    left = [f"{project.prefix}/DCIM/100MEDIA/DJI_{n:04d}.JPG" for n in range(2)]
    for key in left:
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
        s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1000
        )
    other = s3.create_multipart_upload(Bucket=bucket, Key="user-9/project-7/DJI_0001.JPG")
    big = image(tmp_path, "DJI_0010.JPG", 5 * MIB + 77)  # in parts, sent at the same time
    cloud.server.s3_faults.add("stall", "upload_part", delay_s=1.0)

    async def restart_while_sending() -> None:
        sending = asyncio.ensure_future(cloud.target.upload(DS, big, Transfer()))
        started = lambda: cloud.requests().get("upload_part", 0) >= 1  # noqa: E731
        await asyncio.to_thread(wait_until, started, what="a part on the wire")
        restarted = cloud.restarted()
        await restarted.ensure_dataset(DS)
        await restarted.aclose()
        await sending

    cloud.run(restart_while_sending())
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    # The crash's leftovers are gone; another project's upload and this process's own are not.
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(other["Key"], other["UploadId"])]
    assert cloud.objects() == {cloud.key(big): (big.size, big.sha256)}


def _never_called(*args: object) -> _Part:
    raise AssertionError(args)


def test_a_part_read_while_the_target_closes_ends_its_upload_as_transient() -> None:
    # The engine aborts the transfers and closes the target while a part may be in the read.
    senders = PartSenders(1)
    senders.close()
    part = _PartBody(1, bytearray(b"part"), Transfer())
    with pytest.raises(TransientTargetError, match="closing"):
        senders.send(part, _never_called)


def _b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_checksum_named_in_a_reply_must_be_the_one_sent() -> None:
    sent = _b64(b"image")
    assert checksum_differs({}, sent) is None
    assert checksum_differs({"ChecksumSHA256": sent}, sent) is None
    assert checksum_differs({"ChecksumSHA256": _b64(b"other")}, sent) == _b64(b"other")
    # A multipart object's checksum of checksums, with or without S3's part-count suffix.
    composite = _b64(b"digests") + "-3"
    assert checksum_differs({"ChecksumSHA256": composite}, composite) is None
    assert checksum_differs({"ChecksumSHA256": _b64(b"digests")}, composite) is None
    assert checksum_differs({"ChecksumSHA256": _b64(b"digests") + "-2"}, composite) is not None
