"""Test files: distinct contents written at disk speed, their SHA-256, the files of a tree."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20
KIB = 1 << 10
POOL_BYTES = 64 * MIB
HEADER_BYTES = 32


def random_pool() -> bytes:
    """The random bytes every test file takes its body from."""
    return os.urandom(POOL_BYTES)


def write_distinct(path: Path, index: int, size: int, pool: bytes, prefix: bytes = b"") -> None:
    """``size`` bytes: a header of ``prefix``, ``index`` and random bytes, then slices of ``pool``.

    Slices of one random pool write at disk speed; the header keeps every file's hash apart.
    """
    header = prefix + f"{index:012d}".encode()
    header += os.urandom(HEADER_BYTES - len(header))
    view = memoryview(pool)
    with path.open("wb") as fh:
        fh.write(header[:size])
        left = size - min(size, len(header))
        offset = (index * 7919 * 4096) % len(pool)
        while left:
            piece = view[offset : offset + min(left, len(pool) - offset)]
            fh.write(piece)
            left -= len(piece)
            offset = 0


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's content, in hex (hashlib, read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(root: Path) -> Iterator[str]:
    """Every file under ``root``, names sorted within each folder."""
    for folder, _dirs, names in os.walk(root):
        for name in sorted(names):
            yield os.path.join(folder, name)
