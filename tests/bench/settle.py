"""Start every timed run of a benchmark in the same state: nothing dirty, the page cache full, and
no file deleted in the last minute. Two costs, each left by the run before, are kept out.

**Memory handed back to the host.** On a virtual machine whose balloon device reports free
pages to the host (virtio-balloon's free page reporting, which the box these benchmarks were
measured on has), memory the guest frees is handed back to the host within seconds, and the
next first touch of each of those pages costs a fault in the host: about 13 µs per 4 KiB page
there, 300 MB/s. Writing a file puts its bytes in new page-cache pages. A run that gets them
from free memory pays that fault for each; a run that gets them by reclaiming pages the cache
already holds does not, and writes 2-3x faster. Which of the two a run got used to depend on
what the run before it had deleted, and how long ago: the same ``cp -r`` of a card took 3.6,
5.7 and 10.1 s in three runs in a row. :class:`PageCacheFiller` keeps a *ballast* file in the
benchmark's work folder and, before each timed run, reads it back (or grows it) until the
kernel's free memory is down to a small margin; the run's writes then come from reclaimed
cache, as they do on a box that has been up for a while. The ballast holds zeros; it costs
disk space (up to the machine's free memory, never more than half of the disk's room) and,
the first time, the time to write it. Where it cannot fill the cache (no room on the
disk, no ``/proc/meminfo``) it says so in :attr:`PageCacheFiller.problem`, and the run goes on.

**Recently deleted inodes.** On an ext4 without a journal (as this box's), a new file's inode
skips every inode of its block group freed in the last 60 s (``recently_deleted`` in
``fs/ext4/ialloc.c``; 360 s while the inode table's block is dirty), looking at each one, for
every file created. After a run that deleted 10,000 files, 28 % of all samples of the next
``cp -r`` of 10,000 files were there (``perf record -a -g``: ``recently_deleted``,
``find_get_block_common``, ``find_inode_bit``). :class:`Settler` waits, before a timed run,
until :data:`DELETED_AGE_S` have passed since the last deletion it was told of (after a
``sync``, so that the inode tables are clean); the benchmarks keep a run's output until a whole
series is done, so that this wait comes once per series, not once per run. An ext4 with a
journal (any Raspberry Pi's) does not skip such inodes at all.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
# What may stay free: the kernel keeps a few hundred MiB free on its own (its watermarks).
MARGIN = 256 * MIB
# The ballast takes at most half of the room its disk has when it grows, less this: the runs
# it prepares need the rest for what they write.
DISK_RESERVE = 2 * 1024 * MIB
BLOCK = 8 * MIB
DELETED_AGE_S = 61.0  # ext4's RECENTCY_MIN (60 s), and a second to spare


def meminfo(field: str = "MemFree") -> int | None:
    """A field of ``/proc/meminfo`` in bytes (free memory by default), or None if unreadable."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def mem_free() -> int | None:
    """The kernel's free memory in bytes (``MemFree``), or None where it cannot be read."""
    return meminfo()


class PageCacheFiller:
    """Fills the page cache with a ballast file before each timed run (see the module)."""

    def __init__(self, folder: Path, *, margin: int = MARGIN) -> None:
        self.path = folder / "page-cache-ballast"
        self._margin = margin
        self._offset = 0  # where the next read of the ballast starts (it is read in a cycle)
        self.seconds = 0.0  # time spent filling, outside every timing
        self.problem: str | None = None  # why the cache could not be filled, once it happened

    @property
    def size(self) -> int:
        """The ballast's size in bytes."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def fill(self) -> None:
        """Read the ballast back into the cache, then grow it, until free memory is low."""
        start = time.perf_counter()
        try:
            self._fill()
        finally:
            self.seconds += time.perf_counter() - start

    def _fill(self) -> None:
        free = mem_free()
        if free is None:
            self.problem = "no MemFree in /proc/meminfo: the page cache was not filled"
            return
        if free <= self._margin:
            return
        buffer = bytearray(BLOCK)
        size = self.size
        if size:
            # Pages of the ballast evicted since the last fill come back into free memory.
            with open(self.path, "rb", buffering=0) as fh:
                read = 0
                while read < size and (mem_free() or 0) > self._margin:
                    fh.seek(self._offset)
                    count = fh.readinto(buffer) or 0
                    read += count
                    self._offset = self._offset + count if count == BLOCK else 0
        free = mem_free() or 0
        if free <= self._margin:
            return
        want = free - self._margin
        disk_room = shutil.disk_usage(self.path.parent).free // 2 - DISK_RESERVE
        # Past the machine's memory, a larger ballast only evicts itself: the kernel keeps
        # some memory free whatever is read.
        memory_room = (meminfo("MemTotal") or 0) - size
        grow = max(0, min(want, disk_room, memory_room)) // BLOCK * BLOCK
        if disk_room < min(want, memory_room):
            self.problem = (
                f"the page cache was filled only in part: {max(disk_room, 0) / 1e9:.1f} GB of"
                f" the disk's room could go to the ballast, for {want / 1e9:.1f} GB of free"
                " memory"
            )
        if grow <= 0:
            return
        with open(self.path, "ab", buffering=0) as fh:
            for _ in range(grow // BLOCK):
                fh.write(buffer)
            os.fsync(fh.fileno())  # written back now, not during the next timed run

    def note(self) -> str:
        """One line for a benchmark's notes."""
        line = (
            f"before each timed run the page cache was filled (a {self.size / 1e9:.1f} GB ballast"
            f" file read back or grown until under {self._margin // MIB} MiB stayed free;"
            f" {self.seconds:.0f} s, not timed), so every run's writes reused cached memory"
        )
        return line if self.problem is None else f"{line}; {self.problem}"

    def close(self) -> None:
        """Delete the ballast."""
        self.path.unlink(missing_ok=True)


class Settler:
    """What every timed run starts with: ``sync``, no recent deletion, the page cache full."""

    def __init__(
        self,
        filler: PageCacheFiller | None,
        *,
        age: bool = True,
        age_s: float = DELETED_AGE_S,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.filler = filler
        self.age = age  # wait for deleted inodes to age
        self._age_s = age_s
        self._monotonic = monotonic
        self._sleep = sleep
        self._deleted_at: float | None = None  # time.monotonic() of the last deletion
        self.waited_s = 0.0  # spent waiting for deleted inodes to age, not timed

    def deleted(self) -> None:
        """Files were just deleted (and synced): the next run waits until they have aged."""
        self._deleted_at = self._monotonic()

    def settle(self) -> None:
        """Call just before a timed run (and after its set-up)."""
        os.sync()
        if self.filler is not None:
            self.filler.fill()
        if self._deleted_at is not None and self.age:
            wait = self._deleted_at + self._age_s - self._monotonic()
            if wait > 0:
                self.waited_s += wait
                self._sleep(wait)  # the kernel's clock decides: no event to wait on
            self._deleted_at = None
