"""Mounts: which folders are mount points right now, and what card each one is.

Mounting a card makes no inotify event, so card sources (``require_mount = true``) look at
``/proc/self/mountinfo`` instead: it is read at start (a card may already be in) and again
whenever the kernel says it changed (``poll()`` reports POLLPRI on every mount or unmount).
A folder that exists but is not a mount point is an empty mount point left behind by a card
that was pulled: offline, never "every file was deleted".
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("dronesync.mounts")

MOUNTINFO = Path("/proc/self/mountinfo")
BY_LABEL = Path("/dev/disk/by-label")
BY_UUID = Path("/dev/disk/by-uuid")
# udev's database: readable inside the service's sandbox, where /dev/disk is not.
UDEV_DATA = Path("/run/udev/data")
_ESCAPE = re.compile(r"\\([0-7]{3})")
_HEX = re.compile(r"\\x([0-9a-fA-F]{2})")  # udev writes a space in a label as \x20


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo: where, what device, which file system."""

    point: str
    device: str
    fstype: str
    devno: str = ""  # "major:minor", the key of udev's database


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mounts(path: Path = MOUNTINFO) -> dict[str, Mount]:
    """Mount points (as text paths) and what is mounted there; {} when unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return {}
    mounts: dict[str, Mount] = {}
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            point = _unescape(fields[4])
            mounts[point] = Mount(point, _unescape(fields[sep + 2]), fields[sep + 1], fields[2])
        except (ValueError, IndexError):
            continue  # a line this version does not understand; skip it, keep the rest
    return mounts


def _name_for(device: str, folder: Path) -> str | None:
    """The /dev/disk/by-* name that points at ``device`` (a label, a UUID), if any."""
    try:
        real = os.path.realpath(device)
        for link in folder.iterdir():
            if os.path.realpath(link) == real:
                return _HEX.sub(lambda m: chr(int(m.group(1), 16)), link.name)
    except OSError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class Card:
    """What a dataset name template may say about the card a source folder is on."""

    label: str
    uuid: str


def _udev_properties(devno: str, folder: Path = UDEV_DATA) -> dict[str, str]:
    """The ``E:`` properties udev recorded for block device ``devno`` ({} when unknown)."""
    try:
        text = (folder / f"b{devno}").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if line.startswith("E:") and "=" in line:
            key, _, value = line[2:].partition("=")
            found[key] = value
    return found


def card_of(root: Path, mounts: dict[str, Mount], udev_data: Path = UDEV_DATA) -> Card:
    """The label and UUID of the card mounted at ``root`` (the folder's name when unknown)."""
    mount = mounts.get(str(root))
    if mount is None:
        return Card(label=root.name, uuid=root.name)
    udev = _udev_properties(mount.devno, udev_data) if mount.devno else {}
    label = udev.get("ID_FS_LABEL") or None
    uuid = udev.get("ID_FS_UUID") or None
    if mount.device.startswith("/dev/"):
        label = label or _name_for(mount.device, BY_LABEL)
        uuid = uuid or _name_for(mount.device, BY_UUID)
    return Card(label=label or root.name, uuid=uuid or root.name)


def _drain(fd: int) -> None:
    """Read the table to its end: that acknowledges the change poll() reported."""
    os.lseek(fd, 0, os.SEEK_SET)
    while os.read(fd, 65536):
        pass


class MountWatcher:
    """Calls ``on_change`` (from its own thread) whenever the mount table changes."""

    def __init__(self, on_change: Callable[[], None], path: Path = MOUNTINFO) -> None:
        self._on_change = on_change
        self._stop_r, self._stop_w = os.pipe()
        # Opened here, not in the thread: a change made right after this returns is reported.
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            _drain(self._fd)
        except OSError as exc:
            log.warning("cannot watch mounts; card sources rely on rescans", error=str(exc))
            self._fd = None
        self._thread = threading.Thread(target=self._run, name="mounts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            poller.register(self._stop_r, select.POLLIN)
            while True:
                events = dict(poller.poll())
                if self._stop_r in events:
                    return
                _drain(fd)
                self._on_change()
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop the thread."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        os.close(self._stop_r)
        os.close(self._stop_w)
