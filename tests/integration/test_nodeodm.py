"""The daemon feeding a NodeODM-compatible node on 127.0.0.1, with its pitfalls and faults.

What the operator must be able to count on: each committed task holds every unique image of
its dataset exactly once, none truncated, whatever connections were cut on the way; processing
is committed once per dataset; and the datasets end ``processed``.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.hashing import RACY_NS
from tests.conftest import Box, rewrite_keeping_mtime, wait_until
from tests.fakes.nodeodm import FakeNodeODM, TaskView


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNodeODM]:
    with FakeNodeODM(
        tmp_path / "node", token="node-token", setup_s=0.1, queued_s=0.1, running_s=0.5
    ) as server:
        yield server


def _configure(
    box: Box, node: FakeNodeODM, tmp_path: Path, upload: str = "", target: str = ""
) -> None:
    token = tmp_path / "node.token"
    token.write_text("node-token\n")
    token.chmod(0o600)
    box.write_config(
        upload=upload,
        extra=(
            f'[targets.odm]\ntype = "nodeodm"\nurl = "{node.url}"\n'
            f'token_file = "{token}"\npoll_s = 0.2\ntimeout_s = 10\n'
            'options = { "fast-orthophoto" = true }\n'
            f"{target}\n"
        ),
        source_target="odm",
    )


def _card(folder: Path, seed: int, *, nested: int, flat: int) -> dict[str, str]:
    """Images of one flight: DCIM sub-folders repeat names; returns sha256 -> relative path."""
    rng = random.Random(seed)
    made: dict[str, str] = {}
    for media in ("100MEDIA", "101MEDIA"):
        for n in range(nested):
            path = folder / "DCIM" / media / f"DJI_{n:04d}.JPG"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = rng.randbytes(rng.randint(40_000, 300_000))
            path.write_bytes(data)
            made[hashlib.sha256(data).hexdigest()] = str(path.relative_to(folder))
    for n in range(flat):
        data = rng.randbytes(rng.randint(40_000, 300_000))
        (folder / f"IMG_{n:04d}.JPG").write_bytes(data)
        made[hashlib.sha256(data).hexdigest()] = f"IMG_{n:04d}.JPG"
    return made


def _committed(node: FakeNodeODM, dataset: str) -> list[TaskView]:
    return [t for t in node.tasks().values() if t.name == dataset and t.committed]


def _assert_exactly_once(node: FakeNodeODM, dataset: str, expected: dict[str, str]) -> None:
    tasks = _committed(node, dataset)
    assert len(tasks) == 1, f"{dataset}: {len(tasks)} committed tasks"
    task = tasks[0]
    assert task.status_code == 40
    assert not any(f.truncated for f in task.files.values()), task.files
    hashes = [f.sha256 for f in task.files.values()]
    assert sorted(hashes) == sorted(expected), "each unique image exactly once"
    assert task.options == [{"name": "fast-orthophoto", "value": True}] or any(
        o.get("name") == "fast-orthophoto" for o in task.options
    )


def test_cut_connections_and_500s_end_with_each_image_once_in_one_committed_task(
    box: Box, node: FakeNodeODM, tmp_path: Path
) -> None:
    _configure(box, node, tmp_path)
    expected_a = _card(box.root / "staging-a", 1, nested=4, flat=3)
    expected_b = _card(box.root / "staging-b", 2, nested=2, flat=4)
    # a byte-copy under another name is a duplicate, never sent
    copy = box.root / "staging-a" / "COPY_OF_IMG_0000.JPG"
    copy.write_bytes((box.root / "staging-a" / "IMG_0000.JPG").read_bytes())
    # The faults of the issue: cuts mid-body and after the body, 500s, on both datasets.
    node.faults.add("cut_mid_body", "upload", skip=2)
    node.faults.add("status500", "upload", times=2, skip=5)
    node.faults.add("cut_after_body", "upload", skip=9)
    node.faults.add("status500", "commit")
    node.faults.add("error200", "info")
    proc = box.start()
    (box.root / "staging-a").rename(box.inbox / "field-a")
    (box.root / "staging-b").rename(box.inbox / "field-b")

    wait_until(
        lambda: (
            {d.get("state") for d in box.datasets().values()} == {"processed"}
            and len(box.datasets()) == 2
        ),
        timeout=90,
        what="both datasets processed",
    )
    _assert_exactly_once(node, "field-a", expected_a)
    _assert_exactly_once(node, "field-b", expected_b)
    assert node.faults.injected.get("cut_mid_body") == 1
    assert node.faults.injected.get("cut_after_body") == 1
    files = box.status("field-a", files=True)["datasets"][0]["file_list"]
    assert sum(f["status"] == "duplicate" for f in files) == 1
    # The operator can see that a task was replaced and its images sent again.
    assert "new task for the dataset" in box.log()
    assert "node-token" not in box.log()
    assert box.stop(proc) == 0


def test_a_daemon_killed_mid_upload_never_leaves_a_duplicate_or_a_truncated_image(
    box: Box, node: FakeNodeODM, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    _configure(box, node, tmp_path, upload="concurrency = 2", target=f'download_dir = "{results}"')
    expected = _card(box.root / "staging", 3, nested=3, flat=6)
    node.faults.add("stall", "upload", delay_s=30, before=True, skip=4, times=None)
    proc = box.start()
    (box.root / "staging").rename(box.inbox / "field-c")
    wait_until(
        lambda: box.datasets().get("field-c", {}).get("files", {}).get("uploaded", 0) >= 3,
        what="a few uploads",
    )
    box.stop(proc, signal.SIGKILL)
    node.faults.clear()
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("field-c", {}).get("state") == "processed",
        timeout=90,
        what="the dataset processed after the restart",
    )
    _assert_exactly_once(node, "field-c", expected)
    # the task's outputs were saved where the configuration says
    with zipfile.ZipFile(results / "field-c.zip") as archive:
        assert archive.namelist()
    assert str(results / "field-c.zip") in box.datasets()["field-c"]["detail"]
    assert box.stop(proc) == 0


def test_a_task_failed_on_the_node_shows_its_message_and_process_starts_a_new_one(
    box: Box, node: FakeNodeODM, tmp_path: Path
) -> None:
    _configure(box, node, tmp_path)
    expected = _card(box.root / "staging", 4, nested=1, flat=3)
    node.fail_processing = True
    node.fail_message = "Not enough matches: cannot reconstruct"
    proc = box.start()
    (box.root / "staging").rename(box.inbox / "field-d")
    failed = wait_until(
        lambda: (
            box.datasets().get("field-d", {}).get("state") == "failed" and box.datasets()["field-d"]
        ),
        what="the node's failure in status",
    )
    assert "Not enough matches: cannot reconstruct" in failed["detail"]
    node.fail_processing = False
    answer = box.cli("process", "field-d").stdout
    assert "field-d" in answer
    wait_until(
        lambda: box.datasets().get("field-d", {}).get("state") == "processed",
        timeout=60,
        what="the dataset processed in a new task",
    )
    tasks = _committed(node, "field-d")
    assert sorted(t.status_code or 0 for t in tasks) == [30, 40]
    done = next(t for t in tasks if t.status_code == 40)
    assert sorted(f.sha256 for f in done.files.values()) == sorted(expected)
    assert box.stop(proc) == 0


def test_half_the_uploads_dropped_by_the_node_still_end_with_each_image_once_in_one_task(
    box: Box, node: FakeNodeODM, tmp_path: Path
) -> None:
    node.drop_uploads = 0.5  # as a real node's --test_drop_uploads
    _configure(box, node, tmp_path)
    staging = box.root / "staging"
    rng = random.Random(5)
    expected: dict[str, str] = {}
    for n in range(100):
        path = staging / "DCIM" / f"{100 + n // 50}MEDIA" / f"DJI_{n:04d}.JPG"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(2_000, 6_000))
        path.write_bytes(data)
        expected[hashlib.sha256(data).hexdigest()] = path.name
    gcp = b"EPSG:4326\n-91.9 46.8 198.1 1420.0 2840.5 DJI_0001.JPG\n"
    (staging / "gcp_list.txt").write_bytes(gcp)
    expected[hashlib.sha256(gcp).hexdigest()] = "gcp_list.txt"
    proc = box.start()
    staging.rename(box.inbox / "field-e")
    wait_until(
        lambda: box.datasets().get("field-e", {}).get("state") == "processed",
        timeout=120,
        what="the dataset processed",
    )
    _assert_exactly_once(node, "field-e", expected)
    task = _committed(node, "field-e")[0]
    # No image was renamed (no two share a name), and ODM's ground control points went along.
    assert sorted(task.files) == sorted(expected.values())
    assert node.dropped >= 20
    # Every refusal was sent again into the one task: none was made anew.
    made = [t for t in node.tasks().values() if t.name == "field-e"]
    assert len(made) == 1, [(t.upload_calls, len(t.files), t.committed) for t in made]
    assert "new task for the dataset" not in box.log()
    assert box.stop(proc) == 0


def _card_behind_a_wrong_token(
    box: Box, node: FakeNodeODM, tmp_path: Path, seed: int, images: int
) -> tuple[Path, dict[str, str]]:
    """The daemon configured with a token the node refuses, and a card in ``staging``."""
    _configure(box, node, tmp_path)
    token = tmp_path / "node.token"
    token.write_text("not-the-node-token\n")
    (box.root / "staging").mkdir()
    return token, _card(box.root / "staging", seed, nested=0, flat=images)


def _fix_token_until_processed(
    box: Box, proc: subprocess.Popen[bytes], token: Path, dataset: str
) -> None:
    """Write the right token, reload the service, and wait for the dataset to be processed."""
    token.write_text("node-token\n")
    proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: box.datasets().get(dataset, {}).get("state") == "processed",
        timeout=90,
        what="uploads resumed and the dataset processed",
    )


def test_a_wrong_token_keeps_files_waiting_until_it_is_fixed_and_the_service_reloaded(
    box: Box, node: FakeNodeODM, tmp_path: Path
) -> None:
    token, expected = _card_behind_a_wrong_token(box, node, tmp_path, 6, images=4)
    proc = box.start()
    (box.root / "staging").rename(box.inbox / "field-f")
    paused = wait_until(
        lambda: (
            (d := box.datasets().get("field-f", {})).get("files", {}).get("waiting") == 4
            and "token" in (d.get("detail") or "")
            and d
        ),
        what="the dataset paused on the token",
    )
    assert "reload" in paused["detail"]
    files = box.status("field-f", files=True)["datasets"][0]["file_list"]
    assert {f["status"] for f in files} == {"waiting"}
    assert all(f["attempts"] <= 1 for f in files), files
    assert "not-the-node-token" not in box.log()
    assert "not-the-node-token" not in json.dumps(box.status("field-f", files=True))
    _fix_token_until_processed(box, proc, token, "field-f")
    _assert_exactly_once(node, "field-f", expected)
    assert box.stop(proc) == 0


def test_an_image_rewritten_while_it_waits_reaches_the_node_as_it_is_now(
    box: Box, node: FakeNodeODM, tmp_path: Path
) -> None:
    # Hashed, then written again with its size and mtime kept: only the content (and the
    # ctime) tells. The upload must not send it on the strength of the first read.
    token, expected = _card_behind_a_wrong_token(box, node, tmp_path, 7, images=3)
    # A card's images were written long before it is read: their reads record a seal.
    written = max(p.stat().st_ctime_ns for p in (box.root / "staging").iterdir())
    wait_until(lambda: time.time_ns() > written + RACY_NS, what="the writes a while ago")
    proc = box.start()
    (box.root / "staging").rename(box.inbox / "field-r")

    def hashed_and_paused() -> bool:
        dataset = box.status("field-r", files=True)["datasets"]
        return (
            bool(dataset)
            and "token" in (dataset[0].get("detail") or "")
            and [f["status"] for f in dataset[0]["file_list"] if f["sha256"]] == ["waiting"] * 3
        )

    wait_until(hashed_and_paused, what="the images hashed and waiting on the token")
    image = box.inbox / "field-r" / "IMG_0001.JPG"
    old = image.read_bytes()
    new = random.Random(70).randbytes(len(old))
    rewrite_keeping_mtime(image, new)
    del expected[hashlib.sha256(old).hexdigest()]
    expected[hashlib.sha256(new).hexdigest()] = "IMG_0001.JPG"
    _fix_token_until_processed(box, proc, token, "field-r")
    _assert_exactly_once(node, "field-r", expected)
    files = box.status("field-r", files=True)["datasets"][0]["file_list"]
    assert {f["sha256"] for f in files} == set(expected)  # the journal says what was sent
    assert box.stop(proc) == 0
