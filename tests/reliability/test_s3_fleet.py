"""A fleet: two daemons, one bucket, overlapping cards, killed mid-upload and restarted.

Two real ``dronesync run`` processes (two configurations, two state folders, two box names)
ingest cards that share most of their images into one bucket (moto behind the project's
fault proxy) at the same time. Each is SIGKILLed while it uploads, multipart uploads
included, and started again. At the end every distinct image is stored exactly once and
byte-identical, both manifests list every file of their datasets, and every unfinished
multipart upload a box knew of is aborted (one whose creation a kill cut is the lifecycle
rule's, as a lost reply's). The same then holds with 30 % of requests failing.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from daemon.targets.s3.keys import UploadLog
from tests.conftest import Box, report_logs, wait_until
from tests.fakes.s3proxy import S3_RANDOM_KINDS
from tests.fakes.s3store import ACCESS_KEY, SECRET_KEY, S3Store

MB = 1024 * 1024


def _cards(root: Path, rng: random.Random) -> dict[str, dict[str, bytes]]:
    """Two cards: 14 images in common (two above the multipart threshold), 6 of their own
    each, and one copy of an image inside each card."""
    shared = [rng.randbytes(rng.randint(200_000, 900_000)) for _ in range(12)]
    shared += [rng.randbytes(6 * MB + rng.randint(1, 99_999)) for _ in range(2)]
    cards: dict[str, dict[str, bytes]] = {}
    for box in ("a", "b"):
        own = [rng.randbytes(rng.randint(200_000, 900_000)) for _ in range(6)]
        images = shared + own
        rng.shuffle(images)
        files = {f"DCIM/{100 + n % 2}MEDIA/DJI_{n:04d}.JPG": data for n, data in enumerate(images)}
        files["DCIM/100MEDIA/COPY_0001.JPG"] = images[0]
        cards[box] = files
        for rel, data in files.items():
            path = root / box / "staging" / f"flight-{box}" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return cards


def _configure(box: Box, name: str, store: S3Store, upload: str) -> None:
    secret = box.root / "s3.secret"
    secret.write_text(SECRET_KEY + "\n")
    secret.chmod(0o600)
    box.write_config(
        upload=upload,
        extra=(
            f'[targets.fleet]\ntype = "s3"\nbucket = "{store.bucket}"\nprefix = "fleet"\n'
            f'endpoint_url = "{store.url}"\naccess_key_id = "{ACCESS_KEY}"\n'
            f'secret_access_key_file = "{secret}"\nbox = "{name}"\n'
            "multipart_threshold_mb = 5\npart_size_mb = 5\npoll_s = 0.2\ntimeout_s = 10\n"
        ),
        source_target="fleet",
    )


def _done(box: Box) -> int:
    return sum(d["files"]["uploaded"] + d["files"]["duplicate"] for d in box.datasets().values())


def _done_at_least(box: Box, count: int) -> bool:
    return _done(box) >= count


def _processed(box: Box, name: str) -> bool:
    return box.datasets().get(name, {}).get("state") == "processed"


@pytest.fixture
def boxes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Box]]:
    made = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        made[name] = Box(tmp_path / name)
    yield made
    for box in made.values():
        box.cleanup()
    report_logs(request, {f"box {name}": box for name, box in made.items()})


def _unknown_uploads(store: S3Store, boxes: dict[str, Box]) -> set[str]:
    """Unfinished uploads no box recorded: created, but the kill cut the reply.

    Like a lost CreateMultipartUpload reply, such an upload has an id no box ever learnt.
    """
    recorded = {
        upload_id
        for box in boxes.values()
        for _, _, upload_id in UploadLog(box.state / "s3" / "fleet" / "multipart").records()
    }
    return store.unfinished_upload_ids() - recorded


def _check_bucket(
    store: S3Store, cards: dict[str, dict[str, bytes]], lost_creates: int = 0
) -> dict[str, int]:
    """Every distinct image once, byte-identical; both manifests whole; no upload left.

    An upload whose CreateMultipartUpload reply was lost (or cut by a kill) has an id no box
    ever learnt, and under a key other boxes write too: no box may abort it (a lifecycle rule
    reaps it).
    """
    distinct = {hashlib.sha256(d).hexdigest() for files in cards.values() for d in files.values()}
    objects = store.objects("fleet/objects/")
    assert objects == {f"fleet/objects/sha256/{sha[:2]}/{sha}": sha for sha in distinct}
    manifests = {f"fleet/datasets/{b}/flight-{b}/manifest.json" for b in cards}
    assert set(store.keys("fleet/")) == set(objects) | manifests
    for name, files in cards.items():
        manifest = json.loads(store.get(f"fleet/datasets/{name}/flight-{name}/manifest.json"))
        assert manifest["box"] == name
        assert manifest["count"] == len(files)
        listed = {f["path"]: (f["sha256"], f["key"], f["size"]) for f in manifest["files"]}
        expected = {}
        for rel, data in files.items():
            sha = hashlib.sha256(data).hexdigest()
            expected[rel] = (sha, f"fleet/objects/sha256/{sha[:2]}/{sha}", len(data))
        assert listed == expected
    assert len(store.unfinished_uploads()) <= lost_creates, store.unfinished_uploads()
    return {"distinct": len(distinct), "files": sum(len(f) for f in cards.values())}


def test_two_boxes_killed_mid_upload_store_each_image_once(
    tmp_path: Path, store: S3Store, boxes: dict[str, Box]
) -> None:
    cards = _cards(tmp_path, random.Random(2024))
    for name, box in boxes.items():
        # Slow enough that each kill lands while files, multipart ones too, are on the wire.
        _configure(box, name, store, "concurrency = 4\nbandwidth_limit = 4000000\n")
    started = time.monotonic()
    procs = {}
    for name, box in boxes.items():
        procs[name] = box.start()
        (box.root / "staging" / f"flight-{name}").rename(box.inbox / f"flight-{name}")
    for name, box in boxes.items():
        wait_until(partial(_done_at_least, box, 6), what=f"box {name}: 6 files done")
        assert _done(box) < len(cards[name]), "the ingest ended before the kill; slow it down"
        box.stop(procs[name], signal.SIGKILL)
    left = store.unfinished_uploads()
    unknown = _unknown_uploads(store, boxes)
    for name, box in boxes.items():
        procs[name] = box.start()
    for name, box in boxes.items():
        wait_until(
            partial(_processed, box, f"flight-{name}"),
            what=f"box {name}: its dataset processed",
            timeout=120,
        )
    elapsed = time.monotonic() - started
    assert store.unfinished_upload_ids() <= unknown, "a box left an upload it knew of"
    figures = _check_bucket(store, cards, len(unknown))
    for name, box in boxes.items():
        assert box.stop(procs[name]) == 0
    print(
        f"fleet: {figures['files']} files, {figures['distinct']} distinct images stored once,"
        f" {len(left)} multipart upload(s) left by the kills, {len(unknown)} of them"
        " created as a kill cut the reply (the lifecycle rule's),"
        f" {elapsed:.1f} s; requests {store.requests}"
    )


def test_a_fleet_over_a_store_failing_30_percent_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, store: S3Store, boxes: dict[str, Box]
) -> None:
    cards = _cards(tmp_path, random.Random(2024))
    for name, box in boxes.items():
        # Attempts high enough that 30 % faults never use them up by bad luck.
        _configure(box, name, store, "concurrency = 4\nattempts = 100\nstall_s = 10\n")
    store.faults.random(0.3, seed=30, kinds=S3_RANDOM_KINDS)
    procs = {}
    for name, box in boxes.items():
        procs[name] = box.start()
        (box.root / "staging" / f"flight-{name}").rename(box.inbox / f"flight-{name}")
    for name, box in boxes.items():
        wait_until(
            partial(_processed, box, f"flight-{name}"),
            what=f"box {name}: its dataset processed",
            timeout=240,
        )
    injected = dict(store.faults.injected)
    lost_creates = store.faults.injected_on["drop_response", "create_multipart"]
    store.faults.clear()
    figures = _check_bucket(store, cards, lost_creates)
    for name, box in boxes.items():
        assert box.stop(procs[name]) == 0
    assert sum(injected.values()) >= 10, injected  # about 70 requests, 30 % of them
    print(f"fleet under faults: {figures}, injected {injected}, lost creates {lost_creates}")
