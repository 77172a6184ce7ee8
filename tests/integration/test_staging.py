"""Staging: a directory target copies each image while it is hashed, so the card is read once.

The copy waits in ``.dronesync-staging`` inside the target's folder until the upload links it
into its dataset folder; nothing is left there once every file is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tests.conftest import Box, wait_until

MIB = 1 << 20


def _flight(folder: Path, count: int, size: int) -> list[str]:
    """A folder of ``count`` images of ``size`` bytes; their hashes, sorted."""
    rng = random.Random(5)
    folder.mkdir(parents=True)
    hashes = []
    for n in range(count):
        data = rng.randbytes(size)
        (folder / f"DJI_{n:04d}.JPG").write_bytes(data)
        hashes.append(hashlib.sha256(data).hexdigest())
    return sorted(hashes)


def _archived(box: Box) -> list[str]:
    return sorted(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in box.archive.rglob("*")
        if p.is_file() and ".dronesync-staging" not in p.parts
    )


def _read_by(pid: int) -> int:
    """Bytes the daemon and its hashing processes have read so far (the card's, the journal's)."""
    total = 0
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text(encoding="ascii").rpartition(")")[2].split()
            if proc.name != str(pid) and stat[1] != str(pid):
                continue  # neither the daemon nor a child of it
            io = (proc / "io").read_text(encoding="ascii")
        except (OSError, ValueError):
            continue  # not a process, or one that just ended
        total += int(io.split("rchar:")[1].split()[0])
    return total


def _uploaded(box: Box) -> int:
    return sum(d["files"]["uploaded"] for d in box.status()["datasets"])


def _ingest(box: Box, tmp_path: Path, count: int, size: int) -> tuple[list[str], int]:
    """Move a flight into the running daemon's inbox; its hashes and the bytes read for it."""
    proc = box.procs[-1]
    expected = _flight(tmp_path / "flight", count, size)
    before = _read_by(proc.pid)
    (tmp_path / "flight").rename(box.inbox / "flight")
    wait_until(lambda: _uploaded(box) == count, timeout=60, what="every image uploaded")
    return expected, _read_by(proc.pid) - before


def test_each_image_is_read_once_and_staging_is_left_empty(box: Box, tmp_path: Path) -> None:
    box.write_config()
    proc = box.start()
    expected, read = _ingest(box, tmp_path, 16, MIB)
    assert read < 1.5 * 16 * MIB, f"{read / MIB:.1f} MiB read for a 16 MiB card"
    assert _archived(box) == expected
    assert list((box.archive / ".dronesync-staging").iterdir()) == []
    assert box.stop(proc) == 0
    # Log events name the image on the source; the staged copy has a field of its own.
    events = [json.loads(line) for line in box.log().splitlines() if line.startswith("{")]
    uploaded = [event for event in events if event["event"] == "file uploaded"]
    assert len(uploaded) == 16
    assert all(event["file"].startswith(f"{box.inbox}/flight/DJI_") for event in uploaded)
    assert all(".dronesync-staging" in event["copy"] for event in uploaded)


def test_without_staging_each_image_is_read_twice(box: Box, tmp_path: Path) -> None:
    box.write_config(target="staging = false")
    proc = box.start()
    expected, read = _ingest(box, tmp_path, 16, MIB)
    assert read >= 2 * 16 * MIB  # once to hash, once to copy: what staging saves
    assert _archived(box) == expected
    assert not (box.archive / ".dronesync-staging").exists()
    assert box.stop(proc) == 0


def _staged_ahead_of_uploads(box: Box, tmp_path: Path) -> tuple[list[str], Path]:
    """A flight of 10 images, all staged while most still wait for their (slow) upload."""
    # About 8 s of uploading at this rate: staging is done long before the last upload.
    box.write_config(upload="bandwidth_limit = 150000\nconcurrency = 1")
    box.start()
    expected = _flight(tmp_path / "flight", 10, 120_000)
    (tmp_path / "flight").rename(box.inbox / "flight")
    staging = box.archive / ".dronesync-staging"
    wait_until(
        lambda: len(list(staging.glob("*.img"))) + _uploaded(box) == 10,
        what="every image staged",
    )
    assert _uploaded(box) < 10, "staged before the uploads ended"
    return expected, staging


def test_staged_images_are_uploaded_after_the_folder_is_gone(box: Box, tmp_path: Path) -> None:
    expected, staging = _staged_ahead_of_uploads(box, tmp_path)
    proc = box.procs[-1]
    (box.inbox / "flight").rename(tmp_path / "gone")
    wait_until(
        lambda: box.datasets()["flight"]["state"] == "processed",
        timeout=60,
        what="uploaded from staging and processed",
    )
    assert box.datasets()["flight"]["files"]["failed"] == 0
    assert _archived(box) == expected
    assert list(staging.iterdir()) == []
    assert box.stop(proc) == 0


def test_copies_staged_before_staging_is_turned_off_are_uploaded_and_freed(
    box: Box, tmp_path: Path
) -> None:
    expected, staging = _staged_ahead_of_uploads(box, tmp_path)
    assert box.stop(box.procs[-1]) == 0
    box.write_config(target="staging = false")
    proc = box.start()
    wait_until(
        lambda: box.datasets()["flight"]["state"] == "processed",
        timeout=60,
        what="the staged copies uploaded",
    )
    assert _archived(box) == expected
    assert list(staging.iterdir()) == []
    assert box.stop(proc) == 0
