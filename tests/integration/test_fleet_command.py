"""``dronesync fleet``: every box's datasets, from manifests the real s3 target wrote to moto.

Two boxes' targets send their datasets into one bucket (moto in server mode behind the
project's fault proxy) and write their manifests; ``dronesync fleet`` then runs as a user
runs it, in a process of its own, and only lists and reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from daemon.targets.base import DatasetRef, MemoryState, SentFile, Transfer, UploadItem
from daemon.targets.registry import lists_fleet, read_fleet
from daemon.targets.s3 import S3TargetConfig
from daemon.targets.s3.target import S3Target
from tests.conftest import Box
from tests.fakes.s3store import ACCESS_KEY, SECRET_KEY, S3Store

CREATED = 1_748_768_400.0  # 2025-06-01 09:00:00 UTC
FINISHED = 1_748_774_451.0  # 2025-06-01 10:40:51 UTC
ODD = "caf\u00e9 \x1b[31m"  # a dataset name from a card: not ASCII, a terminal escape in it
READING = {"list_objects", "get_object"}  # what the proxy may see from `fleet`


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


def _finish(store: S3Store, tmp: Path, box: str, dataset: str, images: dict[str, bytes]) -> None:
    """A dataset of ``images`` sent by the real target of ``box``, and its manifest written."""
    config = S3TargetConfig.model_validate(_table(store, tmp / "unused", box=box))
    state = MemoryState()
    clock = iter([CREATED, FINISHED])
    target = S3Target(
        "fleet", config, state, state_dir=tmp / box, secret=SECRET_KEY, clock=lambda: next(clock)
    )
    ds = DatasetRef(1, dataset)

    async def run() -> None:
        await target.ensure_dataset(ds)
        sent: list[SentFile] = []
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
        assert await target.start_processing(ds, [key for *_, key in sent if key]) == ""
        await target.aclose()

    asyncio.run(run())


def _fleet_of_two(store: S3Store, tmp: Path) -> None:
    """Two trucks' datasets, one image on both, and keys beside them that are no manifests."""
    same = b"the same image on both trucks"
    _finish(store, tmp, "truck-2", "mission-b", {"DCIM/1.JPG": same, "DCIM/2.JPG": b"x" * 1000})
    _finish(store, tmp, "truck-1", "mission-a", {"DCIM/1.JPG": same})
    _finish(store, tmp, "truck-1", ODD, {"a.jpg": b"a", "b.jpg": b"bb", "c.jpg": b"ccc"})
    for key in ("fleet/datasets/README.txt", "other/datasets/truck-9/x/manifest.json"):
        store.direct.put_object(Bucket=store.bucket, Key=key, Body=b"{}")


def _put(store: S3Store, key: str, body: bytes) -> None:
    store.direct.put_object(Bucket=store.bucket, Key=key, Body=body)


def _config(box: Box, **tables: dict[str, object]) -> None:
    extra = ""
    for name, table in tables.items():
        extra += f"[targets.{name}]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in table.items()
        )
    box.write_config(extra=extra)


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
    ]
    assert rows[1].finished == "2025-06-01T10:40:51.000000Z"
    assert rows[1].manifest == "s3://fleet/fleet/datasets/truck-1/mission-a/manifest.json"


def test_fleet_shows_two_boxes_for_people_and_as_json_reading_only(
    store: S3Store, box: Box
) -> None:
    _fleet_of_two(store, box.root)
    _config(box, fleet=_table(store, _secret(box.root)))
    keys, before = store.objects(), store.requests

    shown = box.cli("fleet")
    assert shown.stderr == ""
    assert shown.stdout.splitlines() == [
        "targets.fleet: 2 boxes, 3 datasets, 6 files, 1.1 kB",
        # By box, then dataset; a terminal escape in a name is shown, not sent.
        "truck-1  caf\u00e9 \\x1b[31m  3 files     6 B  finished 2025-06-01 10:40 UTC",
        "truck-1  mission-a       1 file    29 B  finished 2025-06-01 10:40 UTC",
        "truck-2  mission-b      2 files  1.0 kB  finished 2025-06-01 10:40 UTC",
    ]
    assert box.cli("fleet", "--target", "fleet").stdout == shown.stdout

    result = box.cli("fleet", "--json")
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["target"] == "fleet"
    assert doc["summary"] == {"boxes": 2, "datasets": 3, "files": 6, "bytes": 1064, "unreadable": 0}
    assert [(d["box"], d["dataset"]) for d in doc["datasets"]] == [
        ("truck-1", ODD),
        ("truck-1", "mission-a"),
        ("truck-2", "mission-b"),
    ]
    assert doc["datasets"][2] == {
        "box": "truck-2",
        "dataset": "mission-b",
        "files": 2,
        "bytes": 1029,
        "finished": "2025-06-01T10:40:51.000000Z",
        "manifest": "s3://fleet/fleet/datasets/truck-2/mission-b/manifest.json",
    }
    assert doc["unreadable"] == []

    # Listed and read, nothing written or deleted; the secret nowhere in what was shown.
    after = store.requests
    assert {route for route in after if after[route] != before.get(route)} <= READING
    assert store.objects() == keys
    assert SECRET_KEY not in shown.stdout + result.stdout


def test_a_malformed_manifest_is_one_line_of_warning(store: S3Store, box: Box) -> None:
    _finish(store, box.root, "truck-1", "mission-a", {"DCIM/1.JPG": b"one"})
    _put(store, "fleet/datasets/truck-3/cut/manifest.json", b'{"count": 4, "files": [')
    _put(store, "fleet/datasets/truck-3/odd/manifest.json", b'{"count": "four", "bytes": 9}')
    _put(store, "fleet/datasets/truck-4/open/manifest.json", b'{"count": 2, "bytes": 2048}')
    _config(box, fleet=_table(store, _secret(box.root)))

    shown = box.cli("fleet")
    assert shown.stdout.splitlines() == [
        "targets.fleet: 2 boxes, 2 datasets, 3 files, 2.1 kB, 2 not readable",
        "truck-1  mission-a   1 file     3 B  finished 2025-06-01 10:40 UTC",
        "truck-4  open       2 files  2.0 kB  not finished",
    ]
    where = "s3://fleet/fleet/datasets/truck-3"
    assert shown.stderr.splitlines() == [
        f"dronesync: warning: {where}/cut/manifest.json: not readable (not JSON); not counted",
        f"dronesync: warning: {where}/odd/manifest.json: not readable"
        " (no count or bytes in it); not counted",
    ]

    result = box.cli("fleet", "--json")
    assert result.stderr == shown.stderr
    doc = json.loads(result.stdout)
    assert doc["summary"]["unreadable"] == 2
    assert doc["datasets"][1]["finished"] is None
    assert doc["unreadable"][0] == {
        "box": "truck-3",
        "dataset": "cut",
        "manifest": f"{where}/cut/manifest.json",
        "problem": "not JSON",
    }


def test_an_empty_fleet_is_a_summary_of_zeros(store: S3Store, box: Box) -> None:
    _config(box, fleet=_table(store, _secret(box.root), prefix="nothing-yet"))
    assert box.cli("fleet").stdout == "targets.fleet: 0 boxes, 0 datasets, 0 files, 0 B\n"


def test_no_target_that_lists_a_fleet_or_none_named_is_a_usage_error(
    store: S3Store, box: Box
) -> None:
    # The configuration a box starts with: one directory target.
    alone = box.cli("fleet", check=False)
    assert (alone.returncode, alone.stdout) == (2, "")
    assert alone.stderr == (
        "dronesync: no configured target keeps a record of a fleet: `dronesync fleet` reads"
        ' the store a fleet shares, a target with type = "s3"\n'
    )

    secret = _secret(box.root)
    _config(box, a=_table(store, secret), b=_table(store, secret))
    for args, says in [
        ([], "several targets keep a record of a fleet (a, b): add --target"),
        (
            ["--target", "archive"],
            "targets.archive keeps no record of a fleet; targets that do: a, b",
        ),
        (["--target", "nope"], "targets.nope is not configured; targets that do: a, b"),
    ]:
        result = box.cli("fleet", *args, check=False)
        assert (result.returncode, result.stdout) == (2, ""), args
        assert result.stderr == f"dronesync: {says}\n", args


def test_a_bucket_that_cannot_be_read_is_one_line_naming_the_target(
    store: S3Store, box: Box
) -> None:
    secret = _secret(box.root)
    _config(box, gone=_table(store, secret, bucket="no-such-bucket"))
    result = box.cli("fleet", "--json", check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("dronesync: targets.gone: the fleet cannot be read: S3 ")
    assert "NoSuchBucket" in result.stderr
    assert result.stderr.count("\n") == 1

    # Nothing listens there: the same, without waiting for a retry.
    _config(box, gone=_table(store, secret, endpoint_url="http://127.0.0.1:9"))
    result = box.cli("fleet", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("dronesync: targets.gone: the fleet cannot be read: S3 ")
    assert result.stderr.count("\n") == 1
    assert SECRET_KEY not in result.stderr
