"""The files each scenario sends, hashed beforehand as the engine records them."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchkit.files import write_distinct
from benchkit.project import RACY_NS, Hashed, UploadItem, hash_file


@dataclass(frozen=True)
class DataSet:
    """Files on local disk with what dronesync records before an upload."""

    folder: Path
    items: list[UploadItem]

    @property
    def nbytes(self) -> int:
        """The bytes of all the files."""
        return sum(item.size for item in self.items)

    @property
    def paths(self) -> list[Path]:
        """The files' paths."""
        return [item.path for item in self.items]


def as_sent(data: DataSet, args: argparse.Namespace) -> tuple[DataSet, str]:
    """The files as the box ``--spooled`` or ``--unsealed`` names sends them, and its label.

    By default as a card's files hashed in this boot: sealed, not hashed again. Unsealed:
    hashed in an earlier boot (a box restarted with files waiting), hashed as they are sent.
    Spooled: the spool's own copies.
    """
    if args.spooled:
        items = [dataclasses.replace(i, spooled=True) for i in data.items]
        return DataSet(data.folder, items), ", spooled"
    if args.unsealed:
        return DataSet(data.folder, [dataclasses.replace(i, seal=None) for i in data.items]), (
            ", no seal"
        )
    return data, ""


def make_files(folder: Path, count: int, size: int, name: str, pool: bytes) -> DataSet:
    """``count`` files of ``size`` bytes, each distinct (a header, then slices of ``pool``)."""
    return make_sized(folder, [size] * count, name, pool)


def spread(count: int, low: int, high: int) -> list[int]:
    """``count`` sizes from ``low`` to ``high`` bytes, evenly spread, in a shuffled order."""
    if count == 1:
        return [(low + high) // 2]
    steps = [low + (high - low) * i // (count - 1) for i in range(count)]
    # A fixed stride through the sizes: small and large files come mixed, run after run.
    stride = next((s for s in (7919, 7907, 7901) if math.gcd(s, count) == 1), 1)
    return [steps[i * stride % count] for i in range(count)]


def make_sized(folder: Path, sizes: list[int], name: str, pool: bytes) -> DataSet:
    """A distinct file per size (a header, then slices of ``pool``), named ``name``."""
    folder.mkdir(parents=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / name.format(i=i)
        write_distinct(path, i, size, pool)
        paths.append(path)
    # Hashing is not timed: the engine records the hash before an upload starts. It also
    # reads every file once, so each side of a ratio reads from the page cache. A card's
    # images were written long before: hashed in the clock tick of a write, they get no seal.
    settled = max(path.stat().st_ctime_ns for path in paths) + RACY_NS
    time.sleep(max(0.0, (settled - time.time_ns()) / 1e9))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool_:
        hashes = list(pool_.map(_hashed, paths))
    items = [
        UploadItem(path, path.name.encode(), h.size, h.mtime_ns, h.sha256, seal=h.seal)
        for path, h in zip(paths, hashes, strict=True)
    ]
    return DataSet(folder, items)


def _hashed(path: Path) -> Hashed:
    info = path.stat()
    return hash_file(path, info.st_size, info.st_mtime_ns)
