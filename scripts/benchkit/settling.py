"""The settled start of every timed run, one settler for a script's whole run.

Nothing dirty, the page cache full (unless ``--no-settle``), no file deleted in the last minute
(``tests/bench/settle.py`` says why).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchkit.project import PageCacheFiller, Settler

SETTLER = Settler(None)
# A deletion of fewer files than this leaves nothing for the next run to wait for.
MANY_FILES = 100


def start(work: Path, *, fill: bool, age: bool) -> None:
    """Fill the page cache from a ballast in ``work`` (``fill``), wait for deletions (``age``)."""
    SETTLER.filler = PageCacheFiller(work) if fill else None
    SETTLER.age = age


def settle() -> None:
    """Start each measurement with no dirty pages and no recent deletion; the cache full."""
    SETTLER.settle()


def remove(*paths: Path) -> None:
    """Delete ``paths``; a deletion of many files makes the next measurement wait (settle)."""
    count = 0
    for path in paths:
        count += sum(len(names) for _, _, names in os.walk(path))
        shutil.rmtree(path, ignore_errors=True)
    os.sync()
    if count >= MANY_FILES:
        SETTLER.deleted()
