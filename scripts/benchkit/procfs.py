"""What ``/proc`` says about a process: CPU time, children, peak and own memory, bytes read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KIB = 1 << 10


@dataclass
class ProcFigures:
    """What /proc says about the daemon and its hashing processes just before it is stopped.

    Reads and CPU are summed over the daemon and its children. ``vm_hwm`` is the daemon's peak
    RSS plus each child's own memory (``Private_*`` of ``smaps_rollup``): the rest of a child's
    RSS is pages of the interpreter and libraries the daemon maps too, counted once already.
    ``children_rss`` is the children's RSS in full, for the notes.
    """

    vm_hwm: int  # bytes
    rchar: int
    read_bytes: int
    cpu_s: float
    children_rss: int = 0


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name (which may contain spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    # Fields 14 and 15 (utime, stime), counted from the command name's end.
    stat = _stat_fields(pid)
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the daemon's hashing processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = _stat_fields(int(entry.name))
        except OSError:
            continue  # ended meanwhile
        if stat[1] == str(pid):
            found.append(int(entry.name))
    return found


def _one_process(pid: int) -> ProcFigures:
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(
        int(line.split()[1]) * KIB for line in status.splitlines() if line.startswith("VmHWM:")
    )
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return ProcFigures(hwm, int(io["rchar"]), int(io["read_bytes"]), cpu_seconds(pid))


def _own_memory(pid: int) -> int:
    """Bytes of memory no other process shares with ``pid`` (``Private_*``)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(int(line.split()[1]) * KIB for line in rollup if line.startswith("Private_"))


def proc_figures(pid: int) -> ProcFigures:
    """The figures of ``pid`` and its children, summed as :class:`ProcFigures` says."""
    total = _one_process(pid)
    for child in children(pid):
        try:
            figures = _one_process(child)
            total.vm_hwm += _own_memory(child)  # a hashing process's memory is flat
        except OSError:
            continue  # ended meanwhile
        total.children_rss += figures.vm_hwm
        total.rchar += figures.rchar
        total.read_bytes += figures.read_bytes
        total.cpu_s += figures.cpu_s
    return total
