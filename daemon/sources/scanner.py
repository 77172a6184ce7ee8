"""The full walk of a source: every wanted regular file with its size and mtime.

Symlinks are never followed (so nothing outside the source is read and loops cannot
happen), hidden entries and OS litter are skipped, and FIFOs, sockets and devices are left
alone. Names are bytes all the way: a card may hold names that are not UTF-8.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from daemon.sources.filters import is_litter


@dataclass(frozen=True, slots=True)
class Entry:
    """A regular file found in a source."""

    relpath: bytes
    size: int
    mtime_ns: int


def walk(
    root: bytes,
    wanted: Callable[[bytes], bool],
    on_error: Callable[[bytes, OSError], None] | None = None,
    settled: Callable[[bytes, int, int], bool] | None = None,
) -> Iterator[Entry]:
    """Yield wanted regular files under ``root``; ``wanted`` gets the path relative to it.

    ``settled(relpath, size, mtime_ns)``: files the caller already knows in that state, left
    out (checked before ``wanted``, which costs more).
    """
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        full_dir = root + b"/" + rel_dir if rel_dir else root
        try:
            with os.scandir(full_dir) as entries:
                listing = list(entries)
        except OSError as exc:
            if on_error is not None:
                on_error(full_dir, exc)
            continue
        for entry in listing:
            if is_litter(entry.name):
                continue
            rel = rel_dir + b"/" + entry.name if rel_dir else entry.name
            try:
                # The directory entry's type needs no system call; only files are stat'ed.
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                if on_error is not None:
                    on_error(entry.path, exc)
                continue
            if not stat.S_ISREG(info.st_mode):  # replaced by something else meanwhile
                continue
            if settled is not None and settled(rel, info.st_size, info.st_mtime_ns):
                continue
            if wanted(rel):
                yield Entry(rel, info.st_size, info.st_mtime_ns)
