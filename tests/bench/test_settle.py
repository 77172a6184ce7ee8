"""The benchmarks' settling: a run after a deletion waits for it to age, once; the page cache
filler writes nothing when memory is already short, and its ballast goes when it is closed."""

from __future__ import annotations

from pathlib import Path

from tests.bench.settle import PageCacheFiller, Settler, mem_free


class Clock:
    """Time that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_run_after_a_deletion_waits_for_it_to_age_and_only_once() -> None:
    clock = Clock()
    settler = Settler(None, age_s=30, monotonic=clock.monotonic, sleep=clock.sleep)
    settler.deleted()
    clock.now += 10  # the set-up of the next run took 10 s
    settler.settle()
    assert clock.slept == [20]
    settler.settle()  # nothing deleted since: no wait
    assert clock.slept == [20]
    assert settler.waited_s == 20


def test_no_wait_when_aging_is_off() -> None:
    clock = Clock()
    settler = Settler(None, age=False, age_s=30, monotonic=clock.monotonic, sleep=clock.sleep)
    settler.deleted()
    settler.settle()
    assert clock.slept == []
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
