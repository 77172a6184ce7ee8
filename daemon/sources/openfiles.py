"""Which files another process holds open for writing (the "closed" half of stability).

A copy from a slow USB reader may pause for longer than ``stable_s``; its file is still open
for writing, and that is visible in ``/proc/PID/fdinfo``. Scanning /proc costs a few
milliseconds, so the stability gate asks only about files that look stable already. Without
permission to read another user's /proc entries the check is silently weaker, never wrong
in the other direction: size and mtime stability still apply.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet

FileId = tuple[int, int]  # (st_dev, st_ino)
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def open_for_writing(candidates: AbstractSet[FileId], proc: str = "/proc") -> set[FileId]:
    """The subset of ``candidates`` some other process has open for writing."""
    if not candidates:
        return set()
    me = str(os.getpid())
    found: set[FileId] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit() and p != me]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                info = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if key in candidates and key not in found and _writable(f"{proc}/{pid}/fdinfo/{fd}"):
                found.add(key)
    return found


def _writable(fdinfo: str) -> bool:
    try:
        with open(fdinfo, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("flags:"):
                    flags = int(line.split()[1], 8)
                    return (flags & os.O_ACCMODE) in _WRITE_MODES
    except (OSError, ValueError):
        return False
    return False
