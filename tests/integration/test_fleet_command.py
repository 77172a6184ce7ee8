"""``dronesync fleet``: every box's datasets, from manifests the real s3 target wrote to moto."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.targets.base import DatasetRef, MemoryState, Transfer, UploadItem
from daemon.targets.registry import lists_fleet, read_fleet
from daemon.targets.s3 import S3TargetConfig
from daemon.targets.s3.target import S3Target
from tests.conftest import Box
from tests.fakes.s3store import ACCESS_KEY, SECRET_KEY, S3Store

CREATED = 1_748_768_400.0  # 2025-06-01 09:00:00 UTC
FINISHED = 1_748_774_451.0  # 2025-06-01 10:40:51 UTC
ODD = "caf\u00e9 \x1b[31m"  # a dataset name from a card: not ASCII, a terminal escape in it


@pytest.fixture
def store() -> Iterator[S3Store]:
    with S3Store() as running:
        yield running


def _table(store: S3Store, secret: Path, **keys: object) -> dict[str, object]:
    return {
        "type": "s3",
        "bucket": store.bucket,
        "prefix": "fleet",
        "endpoint_url": store.url,
        "access_key_id": ACCESS_KEY,
        "secret_access_key_file": str(secret),
        "timeout_s": 10,
        **keys,
    }


def _secret(tmp: Path) -> Path:
    path = tmp / "s3.secret"
    path.write_text(SECRET_KEY)
    path.chmod(0o600)
    return path


def _finish(
    store: S3Store, tmp: Path, box: str, dataset: str, images: dict[str, bytes], *, n: int = 1
) -> None:
    """A dataset of ``images`` sent by the real target of ``box``, and its manifest written."""
    config = S3TargetConfig.model_validate(_table(store, tmp / "unused", box=box))
    state = MemoryState()
    clock = iter([CREATED, FINISHED])
    target = S3Target(
        "fleet", config, state, state_dir=tmp / box, secret=SECRET_KEY, clock=lambda: next(clock)
    )
    ds = DatasetRef(n, dataset)

    async def run() -> None:
        await target.ensure_dataset(ds)
        sent = []
        for path, data in sorted(images.items()):
            file = tmp / "card" / box / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
            info = file.stat()
            sha = hashlib.sha256(data).hexdigest()
            item = UploadItem(file, path.encode(), info.st_size, info.st_mtime_ns, sha)
            key = await target.upload(ds, item, Transfer())
            sent.append((item.key, item.size, item.mtime_ns, sha, key))
        state.sent[ds.id] = sent
        assert await target.start_processing(ds, [key for *_, key in sent]) == ""
        await target.aclose()

    asyncio.run(run())


def _fleet_of_two(store: S3Store, tmp: Path) -> None:
    same = b"the same image on both trucks"
    _finish(store, tmp, "truck-2", "mission-b", {"DCIM/1.JPG": same, "DCIM/2.JPG": b"x" * 1000})
    _finish(store, tmp, "truck-1", "mission-a", {"DCIM/1.JPG": same}, n=1)
    _finish(store, tmp, "truck-1", ODD, {"a.jpg": b"a", "b.jpg": b"bb", "c.jpg": b"ccc"}, n=2)
    # Beside the manifests: what is not one is not listed, a broken one says so.
    store.direct.put_object(Bucket=store.bucket, Key="fleet/datasets/README.txt", Body=b"hi")
    store.direct.put_object(
        Bucket=store.bucket, Key="fleet/datasets/truck-3/cut/manifest.json", Body=b"{not json"
    )
    store.direct.put_object(
        Bucket=store.bucket, Key="other/datasets/truck-9/x/manifest.json", Body=b"{}"
    )


def test_the_s3_type_lists_every_box_s_datasets_from_their_manifests(
    store: S3Store, tmp_path: Path
) -> None:
    _fleet_of_two(store, tmp_path)
    config = S3TargetConfig.model_validate(_table(store, _secret(tmp_path)))
    assert lists_fleet(config)
    rows = sorted(read_fleet(config), key=lambda row: (row.box, row.dataset))
    assert [(r.box, r.dataset, r.files, r.bytes, r.problem) for r in rows] == [
        ("truck-1", ODD, 3, 6, None),
        ("truck-1", "mission-a", 1, 29, None),
        ("truck-2", "mission-b", 2, 1029, None),
        ("truck-3", "cut", 0, 0, "not JSON"),
    ]
    assert rows[1].finished == "2025-06-01T10:40:51.000000Z"
    assert rows[1].manifest == "s3://fleet/fleet/datasets/truck-1/mission-a/manifest.json"


def _config(box: Box, store: S3Store, **tables: dict[str, object]) -> None:
    extra = ""
    for name, table in tables.items():
        extra += f"[targets.{name}]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in table.items()
        )
    box.write_config(extra=extra)


def test_fleet_prints_a_line_per_dataset_and_a_stable_json_document(
    store: S3Store, box: Box
) -> None:
    _fleet_of_two(store, box.root)
    _config(box, store, fleet=_table(store, _secret(box.root)))

    human = box.cli("fleet").stdout.splitlines()
    assert human[0] == "targets.fleet: 3 boxes, 4 datasets, 6 files, 1.1 kB, 1 not readable"
    assert human[1:] == [  # by box, then dataset; a terminal escape shown, not sent
        "truck-1  caf\u00e9 \\x1b[31m  3 files     6 B  finished 2025-06-01 10:40 UTC",
        "truck-1  mission-a       1 file    29 B  finished 2025-06-01 10:40 UTC",
        "truck-2  mission-b      2 files  1.0 kB  finished 2025-06-01 10:40 UTC",
        "truck-3  cut            not readable: not JSON"
        " (s3://fleet/fleet/datasets/truck-3/cut/manifest.json)",
    ]
    assert box.cli("fleet", "fleet").stdout.splitlines() == human

    doc = json.loads(box.cli("fleet", "--json").stdout)
    assert doc["target"] == "fleet"
    assert doc["summary"] == {
        "boxes": 3,
        "datasets": 4,
        "files": 6,
        "bytes": 1064,
        "unreadable": 1,
    }
    assert doc["datasets"][2] == {
        "box": "truck-2",
        "dataset": "mission-b",
        "files": 2,
        "bytes": 1029,
        "finished": "2025-06-01T10:40:51.000000Z",
        "manifest": "s3://fleet/fleet/datasets/truck-2/mission-b/manifest.json",
        "problem": None,
    }
    assert doc["datasets"][0]["dataset"] == ODD


def test_an_empty_fleet_is_a_summary_of_zeros(store: S3Store, box: Box) -> None:
    _config(box, store, fleet=_table(store, _secret(box.root), prefix="nothing-yet"))
    assert box.cli("fleet").stdout == "targets.fleet: 0 boxes, 0 datasets, 0 files, 0 B\n"


def test_a_target_without_a_fleet_or_none_named_is_a_usage_error(
    store: S3Store, box: Box
) -> None:
    box.write_config()
    alone = box.cli("fleet", check=False)
    assert alone.returncode == 2
    assert alone.stderr.startswith("dronesync: no configured target lists a fleet")

    secret = _secret(box.root)
    _config(box, store, a=_table(store, secret), b=_table(store, secret))
    for args, says in [
        (["archive"], "targets.archive keeps no record of a fleet; targets that list a fleet: a, b"),
        (["nope"], "targets.nope is not configured; targets that list a fleet: a, b"),
        ([], "name the target whose store to read: dronesync fleet TARGET (a, b)"),
    ]:
        result = box.cli("fleet", *args, check=False)
        assert result.returncode == 2, args
        assert result.stderr == f"dronesync: {says}\n", args


def test_a_bucket_that_cannot_be_read_is_one_line_naming_the_target(
    store: S3Store, box: Box
) -> None:
    secret = _secret(box.root)
    _config(box, store, gone=_table(store, secret, bucket="no-such-bucket"))
    result = box.cli("fleet", "--json", check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("dronesync: targets.gone: the fleet cannot be read: S3 ")
    assert "NoSuchBucket" in result.stderr
    assert result.stderr.count("\n") == 1

    # Nothing listens there: the same, without waiting for a retry.
    _config(box, store, gone=_table(store, secret, endpoint_url="http://127.0.0.1:9"))
    result = box.cli("fleet", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("dronesync: targets.gone: the fleet cannot be read: S3 ")
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
