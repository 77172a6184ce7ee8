"""The S3 target against moto on loopback: shared keys, mirror names, manifests, leftovers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
from pathlib import Path

import pytest
import structlog.testing

from daemon.errors import FileChangedError, PermanentTargetError
from daemon.targets.base import DatasetRef, MemoryState, Transfer, UploadItem
from daemon.targets.kit.s3checks import ASK_AGAIN_S, StoreChecks
from daemon.targets.s3 import S3TargetConfig
from daemon.targets.s3.keys import UploadLog
from daemon.targets.s3.target import S3Target, make_client
from tests.conftest import wait_until
from tests.fakes.s3store import ACCESS_KEY, SECRET_KEY, S3Store

DS = DatasetRef(1, "mission")


def _target(store: S3Store, tmp: Path, box: str, **keys: object) -> S3Target:
    config = S3TargetConfig.model_validate(
        {
            "type": "s3",
            "bucket": store.bucket,
            "prefix": "fleet",
            "endpoint_url": store.url,
            "access_key_id": ACCESS_KEY,
            "secret_access_key_file": tmp / "secret",
            "box": box,
            "multipart_threshold_mb": 5,
            "part_size_mb": 5,
            "timeout_s": 10,
            **keys,
        }
    )
    return S3Target("fleet", config, MemoryState(), state_dir=tmp / box, secret=SECRET_KEY)


def _item(tmp: Path, name: str, data: bytes, key: bytes | None = None) -> UploadItem:
    path = tmp / "card" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    info = path.stat()
    sha = hashlib.sha256(data).hexdigest()
    return UploadItem(path, key or name.encode(), info.st_size, info.st_mtime_ns, sha)


@pytest.mark.parametrize(
    ("checks", "code"),
    [(True, "BadDigest"), (True, "XAmzContentChecksumMismatch"), (False, "")],
    ids=["store-checks", "store-checks-minio", "store-trusts"],
)
def test_other_bytes_never_land_whether_or_not_the_store_checks_sha256(
    tmp_path: Path, checks: bool, code: str
) -> None:
    # Behind the proxy the store checks x-amz-checksum-sha256, as S3 does (or MinIO, in its
    # words); moto alone takes it on trust, as some S3-compatible servers do. The box asks,
    # then hashes only when it must.
    with (
        S3Store(proxy=checks, digest_code=code) as store,
        structlog.testing.capture_logs() as logs,
    ):
        target = _target(store, tmp_path, "a")
        good = _item(tmp_path, "a.jpg", random.Random(1).randbytes(300_000))
        changed = _item(tmp_path, "b.jpg", random.Random(2).randbytes(300_000))
        changed.path.write_bytes(random.Random(3).randbytes(300_000))
        os.utime(changed.path, ns=(changed.mtime_ns, changed.mtime_ns))  # only the bytes tell

        async def go() -> bytes:
            await target.ensure_dataset(DS)
            key = await target.upload(DS, good, Transfer())
            with pytest.raises(FileChangedError, match="differs from its recorded hash"):
                await target.upload(DS, changed, Transfer())
            await target.aclose()
            return key

        key = asyncio.run(go())
        assert store.objects() == {key.decode(): good.sha256}  # the question left nothing
    said = {entry["event"] for entry in logs}
    assert ("the store checks each upload's SHA-256" in said) is checks
    assert ("the store does not check SHA-256; uploads are hashed as they are sent" in said) is (
        not checks
    )


def test_a_store_that_could_not_be_asked_is_asked_again_later(tmp_path: Path) -> None:
    now = [0.0]
    checks = StoreChecks(clock=lambda: now[0])
    with S3Store() as store:
        target = _target(store, tmp_path, "a")
        s3, probe = make_client(target.config, SECRET_KEY), target.keys.probe()
        store.faults.add("status503", "put_object")
        assert checks.ask(s3, store.bucket, probe) is False  # not known: uploads hash
        now[0] = ASK_AGAIN_S - 1
        assert checks.ask(s3, store.bucket, probe) is False
        assert store.requests.get("put_object") == 1  # not asked again so soon
        now[0] = ASK_AGAIN_S
        assert checks.ask(s3, store.bucket, probe) is True
        assert store.requests.get("put_object") == 2
        assert store.keys() == []
        s3.close()


@pytest.mark.parametrize("size", [100_000, 7 * 1024 * 1024])
def test_two_boxes_sending_one_image_at_once_store_it_once(
    store: S3Store, tmp_path: Path, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    a, b = _target(store, tmp_path, "a"), _target(store, tmp_path, "b")
    item = _item(tmp_path, "IMG.JPG", data)

    async def both() -> list[bytes]:
        keys = await asyncio.gather(a.upload(DS, item, Transfer()), b.upload(DS, item, Transfer()))
        await a.aclose()
        await b.aclose()
        return list(keys)

    keys = asyncio.run(both())
    sha = hashlib.sha256(data).hexdigest()
    assert keys == [f"fleet/objects/sha256/{sha[:2]}/{sha}".encode()] * 2
    assert store.objects("fleet/") == {keys[0].decode(): sha}
    assert store.unfinished_uploads() == []


def test_a_content_key_holding_other_bytes_is_never_overwritten(
    store: S3Store, tmp_path: Path
) -> None:
    item = _item(tmp_path, "IMG.JPG", b"the image")
    key = f"fleet/objects/sha256/{item.sha256[:2]}/{item.sha256}"
    store.direct.put_object(Bucket=store.bucket, Key=key, Body=b"something else")
    target = _target(store, tmp_path, "a")
    with pytest.raises(PermanentTargetError, match="never overwritten"):
        asyncio.run(target.upload(DS, item, Transfer()))
    assert store.get(key) == b"something else"


def test_mirror_takes_the_next_free_name_and_replaces_nothing(
    store: S3Store, tmp_path: Path
) -> None:
    target = _target(store, tmp_path, "truck 3", layout="mirror")
    first = _item(tmp_path, "a.jpg", b"first", b"DCIM/caf\xe9.jpg")
    second = _item(tmp_path, "b.jpg", b"second", b"DCIM/caf\xe9.jpg")

    async def put() -> list[bytes]:
        keys = [await target.upload(DS, i, Transfer()) for i in (first, second, first)]
        await target.aclose()
        return keys

    keys = asyncio.run(put())
    assert keys == [
        b"fleet/truck%203/mission/DCIM/caf%E9.jpg",
        b"fleet/truck%203/mission/DCIM/caf%E9~2.jpg",
        b"fleet/truck%203/mission/DCIM/caf%E9.jpg",
    ]
    assert store.get(keys[0].decode()) == b"first"
    assert store.get(keys[1].decode()) == b"second"


def test_the_manifest_lists_every_file_and_is_written_once(store: S3Store, tmp_path: Path) -> None:
    target = _target(store, tmp_path, "a")
    one = _item(tmp_path, "1.jpg", b"one", b"DCIM/100/1.jpg")
    state = target._state
    assert isinstance(state, MemoryState)

    async def run() -> tuple[str, str]:
        await target.ensure_dataset(DS)
        key = await target.upload(DS, one, Transfer())
        state.sent[DS.id] = [
            (b"DCIM/100/1.jpg", one.size, one.mtime_ns, one.sha256, key),
            (b"DCIM/101/1.jpg", one.size, one.mtime_ns, one.sha256, key),  # a duplicate
        ]
        handle = await target.start_processing(DS, [key])
        again = await target.start_processing(DS, [key])  # a restart: the same manifest
        status = await target.processing_status(DS, again)
        state.sent[DS.id].pop()
        with pytest.raises(PermanentTargetError, match="never"):
            await target.start_processing(DS, [key])
        await target.aclose()
        return handle, status.state

    handle, state_now = asyncio.run(run())
    assert (handle, state_now) == ("", "done")
    manifest = json.loads(store.get("fleet/datasets/a/mission/manifest.json"))
    assert manifest["box"] == "a"
    assert manifest["dataset"] == "mission"
    assert manifest["count"] == 2
    assert [f["path"] for f in manifest["files"]] == ["DCIM/100/1.jpg", "DCIM/101/1.jpg"]
    assert {f["key"] for f in manifest["files"]} == {
        f"fleet/objects/sha256/{one.sha256[:2]}/{one.sha256}"
    }


def test_a_restart_aborts_its_own_leftover_upload_and_no_other_box_s(
    store: S3Store, tmp_path: Path
) -> None:
    s3 = store.direct
    ours = s3.create_multipart_upload(Bucket=store.bucket, Key="fleet/objects/sha256/aa/aa")
    theirs = s3.create_multipart_upload(Bucket=store.bucket, Key="fleet/objects/sha256/aa/aa")
    UploadLog(tmp_path / "a" / "s3" / "fleet" / "multipart").started(
        "fleet/objects/sha256/aa/aa", ours["UploadId"]
    )
    target = _target(store, tmp_path, "a")

    async def start() -> None:
        await target.ensure_dataset(DS)
        await target.aclose()

    asyncio.run(start())
    uploads = s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [theirs["UploadId"]]
    assert list((tmp_path / "a" / "s3" / "fleet" / "multipart").iterdir()) == []


def test_a_multipart_upload_is_on_record_while_it_is_on_the_wire(
    store: S3Store, tmp_path: Path
) -> None:
    # The record is what lets the next start abort the upload a crash left: it must exist
    # before any part is sent, name the upload S3 made, and go once the upload has ended.
    target = _target(store, tmp_path, "a")
    item = _item(tmp_path, "big.bin", random.Random(7).randbytes(6 * 1024 * 1024))
    log = UploadLog(tmp_path / "a" / "s3" / "fleet" / "multipart")
    store.faults.add("stall", "upload_part", delay_s=2.0)
    done: list[bytes] = []

    async def put() -> None:
        await target.ensure_dataset(DS)
        done.append(await target.upload(DS, item, Transfer()))
        await target.aclose()

    sender = threading.Thread(target=asyncio.run, args=(put(),))
    sender.start()
    try:
        on_record = wait_until(
            lambda: [(key, upload) for _, key, upload in log.records()], what="a record"
        )
        assert {upload for _, upload in on_record} == store.unfinished_upload_ids()
    finally:
        sender.join(timeout=30)
    assert done
    assert log.records() == []
    assert store.unfinished_uploads() == []
