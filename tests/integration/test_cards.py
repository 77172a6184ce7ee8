"""A card pushed in, pulled with work left, and pushed back: a real loop-mounted image.

The card is an ext4 image (this kernel cannot mount vfat; the daemon does not care which file
system it reads) built with ``mkfs.ext4 -d`` and mounted read-only under a ``cards/`` folder,
as the udev rule mounts a real card under ``/run/dronesync/cards/<UUID>``. Needs root and
loop devices; skipped with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Box, wait_until

UUID = "3c1f2a9e-5b7d-4e11-9a0c-6f2d8b4e7a10"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def card_image(tmp_path: Path) -> Path:
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("a loop-mounted card needs root and mkfs.ext4")
    content = tmp_path / "card-content"
    rng = random.Random(7)
    for folder, count in (("100MEDIA", 5), ("101MEDIA", 3)):
        (content / "DCIM" / folder).mkdir(parents=True)
        for n in range(count):
            data = rng.randbytes(150_000)
            (content / "DCIM" / folder / f"DJI_{n:04d}.JPG").write_bytes(data)
    (content / "MISC").mkdir()
    (content / "MISC" / "thumb.jpg").write_bytes(b"not a survey image")
    image = tmp_path / "card.img"
    made = _run("mkfs.ext4", "-q", "-L", "PILOT", "-U", UUID, "-d", str(content), str(image), "16M")
    if made.returncode != 0:
        pytest.skip(f"cannot build a card image: {made.stderr.strip()}")
    return image


@pytest.fixture
def cards(tmp_path: Path, card_image: Path) -> Iterator[Path]:
    folder = tmp_path / "cards"
    (folder / UUID).mkdir(parents=True)
    probe = _run("mount", "-o", "loop,ro", str(card_image), str(folder / UUID))
    if probe.returncode != 0:
        pytest.skip(f"loop mounts are not allowed here: {probe.stderr.strip()}")
    _run("umount", str(folder / UUID))
    yield folder
    _run("umount", "-l", str(folder / UUID))


def _insert(image: Path, cards: Path) -> None:
    done = _run("mount", "-o", "loop,ro,nosuid,nodev,noexec", str(image), str(cards / UUID))
    assert done.returncode == 0, done.stderr


def _pull(cards: Path) -> None:
    # Lazy: like a card pulled while files are open, the mount goes at once.
    done = _run("umount", "-l", str(cards / UUID))
    assert done.returncode == 0, done.stderr


def test_a_card_pulled_with_work_left_pauses_and_resumes_without_sending_twice(
    box: Box, card_image: Path, cards: Path
) -> None:
    box.write_config(
        upload="bandwidth_limit = 200000\nconcurrency = 1",
        source_path=f"{cards}/*",
        source='require_mount = true\nlayout = "dcim"\ndataset = "{uuid}-{folder}"\n',
        target="staging = false",  # with staging, every image is off the card at once
    )
    proc = box.start()
    assert box.datasets() == {}  # the empty mount point is not a card
    _insert(card_image, cards)
    name = f"{UUID}-100MEDIA"
    wait_until(
        lambda: box.datasets().get(name, {}).get("files", {}).get("uploaded", 0) >= 1,
        what="the card found and its first upload",
    )
    _pull(cards)
    paused = wait_until(
        lambda: box.datasets().get(name, {}).get("state") == "paused" and box.datasets(),
        what="the dataset paused",
    )
    assert all(d["files"]["failed"] == 0 for d in paused.values()), paused
    _insert(card_image, cards)
    wait_until(
        lambda: (
            len(box.datasets()) == 2
            and {d["state"] for d in box.datasets().values()} == {"processed"}
        ),
        timeout=90,
        what="both folders of the card processed",
    )
    stored = sorted(p for p in box.archive.rglob("*") if p.is_file())
    assert len(stored) == 8  # 5 + 3 images, each once; MISC/ is not a camera folder
    on_card = sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (cards / UUID / "DCIM").rglob("*.JPG")
    )
    assert sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in stored) == on_card
    assert sorted(box.processed_runs()) == [f"{UUID}-100MEDIA", f"{UUID}-101MEDIA"]
    assert box.stop(proc) == 0
