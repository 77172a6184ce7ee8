"""The benchmarks' settling: a run after a deletion waits for it to age, once; the page cache
filler writes nothing when memory is already short, and its ballast goes when it is closed."""

from __future__ import annotations

import time
from pathlib import Path

from tests.bench.settle import PageCacheFiller, Settler, mem_free


def test_a_run_after_a_deletion_waits_for_it_to_age_and_only_once() -> None:
    settler = Settler(None, age_s=0.3)
    settler.deleted()
    deleted = time.monotonic()
    settler.settle()
    assert time.monotonic() - deleted >= 0.3
    again = time.monotonic()
    settler.settle()  # nothing deleted since: no wait
    assert time.monotonic() - again < 0.25
    assert 0.0 < settler.waited_s <= 0.35


def test_no_wait_when_aging_is_off() -> None:
    settler = Settler(None, age=False, age_s=30)
    settler.deleted()
    start = time.monotonic()
    settler.settle()
    assert time.monotonic() - start < 5
    assert settler.waited_s == 0


def test_the_filler_writes_nothing_while_free_memory_is_under_its_margin(tmp_path: Path) -> None:
    free = mem_free()
    assert free is not None  # Linux: /proc/meminfo
    filler = PageCacheFiller(tmp_path, margin=free + 4 * 1024**3)
    filler.fill()
    assert filler.size == 0
    assert not filler.path.exists()
    assert filler.problem is None
    assert "ballast" in filler.note()
    filler.close()  # nothing to delete: no error


def test_the_ballast_is_deleted_when_the_filler_is_closed(tmp_path: Path) -> None:
    filler = PageCacheFiller(tmp_path)
    filler.path.write_bytes(b"\0" * 4096)  # as a fill leaves it
    assert filler.size == 4096
    filler.close()
    assert not filler.path.exists()
