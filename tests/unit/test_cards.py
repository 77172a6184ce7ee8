"""Cards: the mount table, what a card is called, and how its folders map to datasets."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon.config import SourceConfig
from daemon.sources.mapping import DatasetMapper
from daemon.sources.mounts import Card, MountWatcher, card_of, read_mounts

MOUNTINFO = (
    "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n"
    "98 22 8:33 / /run/dronesync/cards/B4F1-0C2A ro,nosuid,nodev,noexec shared:50"
    " - vfat /dev/sdc1 ro,fmask=0022\n"
    "99 22 0:51 / /srv/drone\\040inbox rw - nfs4 nas:/export rw\n"
    "this line is not understood\n"
)


def test_mount_points_are_read_with_their_escapes(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    mounts = read_mounts(table)
    assert set(mounts) == {"/", "/run/dronesync/cards/B4F1-0C2A", "/srv/drone inbox"}
    card = mounts["/run/dronesync/cards/B4F1-0C2A"]
    assert (card.device, card.fstype, card.devno) == ("/dev/sdc1", "vfat", "8:33")
    assert read_mounts(tmp_path / "missing") == {}


def test_the_card_name_comes_from_udev_or_falls_back_to_the_folder(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    mounts = read_mounts(table)
    udev = tmp_path / "udev"
    udev.mkdir()
    (udev / "b8:33").write_text(
        "S:disk/by-uuid/B4F1-0C2A\nE:ID_FS_LABEL=MAVIC3\nE:ID_FS_UUID=B4F1-0C2A\n"
    )
    root = Path("/run/dronesync/cards/B4F1-0C2A")
    assert card_of(root, mounts, udev) == Card(label="MAVIC3", uuid="B4F1-0C2A")
    # without udev's record (a development machine), the mount folder names the card
    assert card_of(root, mounts, tmp_path / "none") == Card("B4F1-0C2A", "B4F1-0C2A")
    assert card_of(Path("/elsewhere/x"), mounts, udev) == Card("x", "x")


def _mapper(layout: str, template: str) -> DatasetMapper:
    config = SourceConfig(path=Path("/cards/*"), target="t", layout=layout, dataset=template)
    return DatasetMapper(config, Path("/cards/B4F1-0C2A"), Card("MAVIC3", "B4F1-0C2A"))


def test_dcim_layout_makes_a_dataset_of_each_camera_folder() -> None:
    mapper = _mapper("dcim", "{label}-{date}-{folder}")
    capture = time.mktime((2026, 5, 17, 10, 30, 0, 0, 0, -1))
    placed = mapper.place(b"DCIM/100MEDIA/DJI_0001.JPG", int(capture * 1e9))
    assert placed is not None
    assert placed.folder == b"DCIM/100MEDIA"
    assert placed.dataset == "MAVIC3-2026-05-17-100MEDIA"
    assert placed.dspath == b"DJI_0001.JPG"
    nested = mapper.place(b"dcim/DJI_202605171030_001_Field/sub/DJI_0002.JPG", int(capture * 1e9))
    assert nested is not None
    assert nested.dataset == "MAVIC3-2026-05-17-DJI_202605171030_001_Field"
    assert nested.dspath == b"sub/DJI_0002.JPG"
    assert mapper.place(b"MISC/THM/x.jpg") is None  # not the camera's images
    assert mapper.place(b"DCIM/loose.jpg") is None


def test_card_placeholders_work_with_other_layouts_too() -> None:
    assert _mapper("single", "{uuid}").place(b"a/b.jpg") is not None
    single = _mapper("single", "{uuid}").place(b"a/b.jpg")
    assert single is not None
    assert single.dataset == "B4F1-0C2A"


def _can_mount(tmp_path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "none", str(probe)], capture_output=True, check=False
    )
    if done.returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
    return done.returncode == 0


def test_the_watcher_hears_a_mount_and_an_unmount(tmp_path: Path) -> None:
    if not _can_mount(tmp_path):
        pytest.skip("mounting needs root and a kernel that allows it here")
    changed = threading.Event()
    watcher = MountWatcher(changed.set)
    point = tmp_path / "card"
    point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "none", str(point)], check=True)
        assert changed.wait(10), "no notification for a mount"
        assert str(point) in read_mounts()
        changed.clear()
        subprocess.run(["umount", str(point)], check=True)
        assert changed.wait(10), "no notification for an unmount"
        assert str(point) not in read_mounts()
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, check=False)
        watcher.close()
