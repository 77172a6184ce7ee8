"""The daemon feeding a PIX4Dcloud-compatible API with real S3 (moto) behind a fault proxy.

What the operator must be able to count on: every image lands exactly once under its
project, byte for byte even when bodies are altered or cut on the way, the registration
matches what was uploaded, processing starts once per dataset after the quiet period and ends
``processed``; a restart resumes into the same project; a refused sign-in pauses instead of
failing files; a doomed dataset is refused before processing.
"""

from __future__ import annotations

import hashlib
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Box, wait_until
from tests.fakes.pix4dcloud import FakePix4DCloud, ProjectView
from tests.fakes.webhook import Webhook

SECRET = "pix4d-client-secret-for-tests"


@pytest.fixture
def cloud() -> Iterator[FakePix4DCloud]:
    with FakePix4DCloud(client_id="box-1", client_secret=SECRET, processing_s=(0.3, 0.6)) as c:
        yield c


def _configure(
    box: Box,
    cloud: FakePix4DCloud,
    tmp_path: Path,
    *,
    secret: str = SECRET,
    upload: str = "",
    extra: str = "",
) -> Path:
    secret_file = tmp_path / "pix4d.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    box.write_config(
        upload="stall_s = 2\n" + upload,
        extra=(
            f'[targets.cloud]\ntype = "pix4dcloud"\nurl = "{cloud.url}"\nclient_id = "box-1"\n'
            f'client_secret_file = "{secret_file}"\npoll_s = 0.2\ntimeout_s = 10\n'
            "multipart_threshold_mb = 5\npart_size_mb = 5\n" + extra
        ),
        source_target="cloud",
    )
    return secret_file


def _flight(folder: Path, seed: int, count: int, *, big: int = 0) -> dict[str, str]:
    """A flight's images; DCIM sub-folders repeat names. Returns sha256 -> path in folder."""
    rng = random.Random(seed)
    made: dict[str, str] = {}
    for n in range(count):
        media = "100MEDIA" if n % 2 else "101MEDIA"
        path = folder / "DCIM" / media / f"DJI_{n // 2:04d}.JPG"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = 6 * 1024 * 1024 + n if n < big else rng.randint(50_000, 400_000)
        data = rng.randbytes(size)
        path.write_bytes(data)
        made[hashlib.sha256(data).hexdigest()] = str(path.relative_to(folder))
    return made


def _project(cloud: FakePix4DCloud, name: str) -> ProjectView:
    projects = [p for p in cloud.projects().values() if p.name == name]
    assert len(projects) == 1, f"{name}: {len(projects)} projects"
    return projects[0]


def _assert_landed_once(cloud: FakePix4DCloud, name: str, expected: dict[str, str]) -> None:
    project = _project(cloud, name)
    # The project's outputs (a report, a mosaic) land under the same prefix once DONE.
    objects = {k: v for k, v in cloud.objects(project.prefix + "/").items() if k.endswith(".JPG")}
    assert sorted(sha for _, sha in objects.values()) == sorted(expected), "each image once"
    assert project.registered == set(objects), "registration matches what was uploaded"
    assert project.start_calls == 1
    assert project.public_status == "DONE"


def test_two_datasets_with_api_and_s3_faults_land_once_and_process_once(
    box: Box, cloud: FakePix4DCloud, tmp_path: Path
) -> None:
    _configure(box, cloud, tmp_path)
    expected_a = _flight(box.root / "staging-a", 1, 9, big=1)  # one file goes in parts
    expected_b = _flight(box.root / "staging-b", 2, 7)
    cloud.api_faults.add("status429", "projects", retry_after=0.2)
    cloud.api_faults.add("reset", "credentials")
    cloud.api_faults.add("status500", "register")
    cloud.api_faults.add("truncated_json", "register", after=1)
    cloud.api_faults.add("start_ambiguous")
    cloud.s3_faults.add("status503", "put_object", times=2)
    cloud.s3_faults.add("reset_mid_body", "put_object", after=3)
    cloud.s3_faults.add("drop_response", "put_object", after=5)
    cloud.s3_faults.add("stall", "upload_part", delay_s=5)
    # Bodies altered on the way: S3 refuses them (BadDigest) and they are sent again.
    cloud.s3_faults.add("corrupt_body", "put_object", after=1)
    cloud.s3_faults.add("corrupt_body", "upload_part")
    proc = box.start()
    (box.root / "staging-a").rename(box.inbox / "field-a")
    (box.root / "staging-b").rename(box.inbox / "field-b")

    # Halfway, every token and every S3 credential expires: one renewal, no failed file.
    wait_until(
        lambda: sum(d["files"]["uploaded"] for d in box.datasets().values()) >= 4,
        what="a few uploads",
    )
    cloud.expire_tokens()
    cloud.expire_s3_credentials()

    wait_until(
        lambda: (
            len(box.datasets()) == 2
            and {d["state"] for d in box.datasets().values()} == {"processed"}
        ),
        timeout=120,
        what="both datasets processed",
    )
    _assert_landed_once(cloud, "field-a", expected_a)
    _assert_landed_once(cloud, "field-b", expected_b)
    for dataset in box.datasets().values():
        assert dataset["files"]["failed"] == 0
    assert cloud.s3_faults.injected["drop_response"] == 1
    assert cloud.s3_faults.injected["corrupt_body"] == 2
    assert cloud.api_faults.injected["start_ambiguous"] == 1
    status = box.cli("status").stdout
    assert "field-a" in status
    assert SECRET not in box.log() + status
    assert box.stop(proc) == 0


def test_a_restart_mid_dataset_continues_in_the_same_project(
    box: Box, cloud: FakePix4DCloud, tmp_path: Path
) -> None:
    _configure(box, cloud, tmp_path, upload="concurrency = 2\n")
    expected = _flight(box.root / "staging", 3, 12)
    # The first PutObject of a start asks whether the store checks SHA-256s; four uploads go.
    cloud.s3_faults.add("stall", "put_object", delay_s=30, after=5, times=None)
    proc = box.start()
    (box.root / "staging").rename(box.inbox / "field-c")
    wait_until(
        lambda: box.datasets().get("field-c", {}).get("files", {}).get("uploaded", 0) >= 4,
        what="four uploads",
    )
    box.stop(proc, signal.SIGKILL)
    cloud.s3_faults.clear()
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("field-c", {}).get("state") == "processed",
        timeout=90,
        what="the dataset processed after the restart",
    )
    _assert_landed_once(cloud, "field-c", expected)
    # Nothing uploaded twice: only the transfers cut by the kill were sent again (beside one
    # question per start).
    assert cloud.s3_requests["put_object"] <= len(expected) + 2 + 2
    assert box.stop(proc) == 0


def test_large_files_waiting_their_turn_to_send_a_part_are_not_stalled(
    box: Box, cloud: FakePix4DCloud, tmp_path: Path
) -> None:
    # One part on the wire at a time (parallel_parts = 1), each held 0.5 s by the server:
    # four large files of two parts wait up to 3.5 s for their turn, longer than stall_s (2).
    _configure(box, cloud, tmp_path, extra="parallel_parts = 1\n")
    expected = _flight(box.root / "staging", 4, 4, big=4)
    cloud.s3_faults.add("stall", "upload_part", delay_s=0.5, times=None)
    proc = box.start()
    (box.root / "staging").rename(box.inbox / "field-e")
    wait_until(
        lambda: box.datasets().get("field-e", {}).get("files", {}).get("uploaded", 0) == 4,
        timeout=60,
        what="the four large files uploaded",
    )
    files = box.status("field-e", files=True)["datasets"][0]["file_list"]
    assert [(f["status"], f["attempts"]) for f in files] == [("uploaded", 1)] * 4, files
    assert cloud.s3_requests["upload_part"] == 8  # two parts each, each sent once
    project = _project(cloud, "field-e")
    stored = {sha for _, sha in cloud.objects(project.prefix + "/").values()}
    assert stored == set(expected)
    assert box.stop(proc) == 0


def test_a_refused_sign_in_pauses_until_the_secret_is_fixed(
    box: Box, cloud: FakePix4DCloud, tmp_path: Path
) -> None:
    hook = Webhook()
    secret_file = _configure(
        box,
        cloud,
        tmp_path,
        secret="not-the-secret",
        extra=f'[notifications]\nwebhook_url = "{hook.url}"\n',
    )
    _flight(box.inbox / "field-d", 4, 6)
    proc = box.start()
    detail = wait_until(
        lambda: (
            (box.datasets().get("field-d", {}).get("detail") or "").startswith("sign-in needed")
            and box.datasets()["field-d"]["detail"]
        ),
        what="sign-in needed in status",
    )
    assert "client_id" in detail
    assert box.datasets()["field-d"]["files"]["failed"] == 0
    wait_until(lambda: hook.events("field-d") == ["needs_attention"], what="the operator told")
    assert hook.received[0]["detail"].startswith("sign-in needed")
    secret_file.write_text(SECRET)
    proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: box.datasets().get("field-d", {}).get("state") == "processed",
        timeout=60,
        what="the dataset processed once signed in",
    )
    assert "not-the-secret" not in box.log()
    assert box.stop(proc) == 0
    hook.close()


def test_too_few_images_are_refused_before_processing_with_a_clear_message(
    box: Box, cloud: FakePix4DCloud, tmp_path: Path
) -> None:
    hook = Webhook()
    _configure(box, cloud, tmp_path, extra=f'[notifications]\nwebhook_url = "{hook.url}"\n')
    _flight(box.inbox / "field-e", 5, 3)
    proc = box.start()
    dataset = wait_until(
        lambda: (
            box.datasets().get("field-e", {}).get("state") == "failed" and box.datasets()["field-e"]
        ),
        what="the dataset refused",
    )
    assert "at least 6" in dataset["detail"]
    assert dataset["files"]["uploaded"] == 3  # the images stay uploaded
    assert _project(cloud, "field-e").start_calls == 0
    wait_until(
        lambda: hook.events("field-e") == ["processing_failed", "needs_attention"],
        what="the operator told",
    )
    assert box.stop(proc) == 0
    hook.close()


def test_a_dataset_whose_processing_cannot_start_needs_attention_once(
    box: Box, cloud: FakePix4DCloud, tmp_path: Path
) -> None:
    hook = Webhook()
    _configure(
        box,
        cloud,
        tmp_path,
        upload="stuck_s = 3\n",
        extra=f'[notifications]\nwebhook_url = "{hook.url}"\n',
    )
    _flight(box.inbox / "field-f", 6, 6)
    cloud.api_faults.add("status503", "start", times=None)  # PIX4Dcloud refuses, for long
    proc = box.start()
    wait_until(lambda: hook.events("field-f") == ["needs_attention"], what="the operator told")
    assert "processing has not started for" in hook.received[0]["detail"]
    dataset = box.datasets()["field-f"]
    assert dataset["state"] == "collecting"
    assert (dataset["detail"] or "").startswith("needs attention: processing has not started")
    assert "503" in dataset["detail"]
    cloud.api_faults.clear()
    wait_until(
        lambda: box.datasets()["field-f"]["state"] == "processed",
        timeout=60,
        what="the dataset processed once PIX4Dcloud accepts",
    )
    assert _project(cloud, "field-f").start_calls == 1
    # Notifications are sent after the state is written: wait for the last one to arrive.
    wait_until(lambda: len(hook.events("field-f")) >= 3, what="the notifications delivered")
    # Told once, however many tries it took; then as usual.
    assert hook.events("field-f") == [
        "needs_attention",
        "processing_started",
        "processing_finished",
    ]
    assert box.stop(proc) == 0
    hook.close()
