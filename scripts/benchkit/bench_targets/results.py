"""What scripts/bench-targets measures: samples, the meter taking them, rows, the table."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from benchkit.procfs import cpu_seconds
from benchkit.smallcpu import Confinement
from benchkit.table import left, right

# The goals of the issue: ratio = dronesync / reference, at least this much.
GOAL_CURL_BIG = 0.80
GOAL_CURL_MANY = 0.75
GOAL_RCLONE = 1.00
GOAL_PYODM = 2.00
GOAL_PYODM_DROPS = 1 / 1.5  # within 1.5 x pyodm's time


@dataclass
class Row:
    """One line of the table: a reference and dronesync on the same data and server."""

    target: str
    data: str
    reference: str
    goal: float
    ref_key: str
    ours_key: str
    skip: str | None = None


@dataclass(frozen=True)
class Sample:
    """One timed transfer: wall seconds, and CPU seconds the client and the server spent."""

    seconds: float
    client_cpu: float | None = None
    server_cpu: float | None = None


@dataclass
class Group:
    """The steps of one target and scenario; each runs once per run, giving {key: sample}."""

    target: str
    scenario: str
    nbytes: int
    steps: list[Callable[[], dict[str, Sample]]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    best: dict[str, Sample] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def mbps(nbytes: int, seconds: float) -> float:
    """MB/s (10^6 bytes) of ``nbytes`` sent in ``seconds``."""
    return nbytes / 1e6 / seconds


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) a process has used so far; None off Linux."""
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


class Meter:
    """Times a block, with the CPU the client and the server spent in it.

    ``child``: the client is a child process (curl, rclone; counted once it was waited for),
    else it is this process (dronesync, pyodm). With ``--cpu-quota`` (``BOX``) the block runs
    in the small box: this process and what it starts, the servers staying outside.
    """

    BOX: Confinement | None = None

    def __init__(self, server_pid: int, *, child: bool) -> None:
        self._pid = server_pid
        self._child = child
        self.sample = Sample(math.nan)

    def _client(self) -> float:
        # getrusage counts microseconds; os.times counts clock ticks, too coarse for a
        # transfer of a few seconds.
        usage = resource.getrusage(
            resource.RUSAGE_CHILDREN if self._child else resource.RUSAGE_SELF
        )
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> Meter:
        if self.BOX is not None:
            self.BOX.join()
        self._server = process_cpu(self._pid)
        self._cpu = self._client()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._start
        client = self._client() - self._cpu
        after = process_cpu(self._pid)
        server = None if after is None or self._server is None else after - self._server
        self.sample = Sample(seconds, client, server)
        if self.BOX is not None:
            self.BOX.leave()


TABLE_HEAD = ("target", "data", "reference", "ref MB/s", "dronesync MB/s", "ratio", "goal")
TABLE_WIDTHS = (10, 28, 34, 8, 14, 5, 7)


def print_table(groups: list[Group], out: IO[str]) -> None:
    """The table: columns two spaces apart, never two spaces inside a cell."""
    print(left(TABLE_HEAD, TABLE_WIDTHS) + "  result", file=out)
    notes = []
    for g in groups:
        for row in g.rows:
            first = (row.target, row.data, row.reference)
            line = left(first, TABLE_WIDTHS)
            missing = [k for k in (row.ref_key, row.ours_key) if k not in g.best]
            if row.skip or missing:
                reason = row.skip or f"not measured: {', '.join(missing)}"
                print(f"{line}  skipped: {reason}", file=out)
                continue
            ref = mbps(g.nbytes, g.best[row.ref_key].seconds)
            ours = mbps(g.nbytes, g.best[row.ours_key].seconds)
            ratio = ours / ref
            values = (f"{ref:.1f}", f"{ours:.1f}", f"{ratio:.2f}", f">={row.goal:.2f}")
            line += "  " + right(values, TABLE_WIDTHS[3:])
            print(f"{line}  {'ok' if ratio >= row.goal else 'below goal'}", file=out)
        # What the fastest reference reaches against each slower one bounds the ratio any
        # client can reach against it on this server.
        if "curl" in g.best:
            for other in ("pyodm", "rclone"):
                if other in g.best:
                    notes.append(
                        f"{g.target} {g.scenario}: curl alone is"
                        f" {g.best[other].seconds / g.best['curl'].seconds:.2f} x {other}"
                        " on this server"
                    )
    if any(row.reference.endswith(" *") for g in groups for row in g.rows):
        print("* both sides timed over task init, uploads and commit", file=out)
    for g in groups:
        notes += [note for note in g.notes if note not in notes]
    for note in notes:
        print(note, file=out)
    print_cpu(groups, out)


def print_cpu(groups: list[Group], out: IO[str]) -> None:
    """CPU seconds per GB sent, in the best run of each client: who was busy."""
    print("\nCPU seconds per GB sent (best run)      client  server", file=out)
    for g in groups:
        for key, sample in g.best.items():
            if sample.client_cpu is None:
                continue
            gb = g.nbytes / 1e9
            server = "?" if sample.server_cpu is None else f"{sample.server_cpu / gb:.2f}"
            name = f"{g.target} {g.scenario} {key}"
            print(f"{name:<38}{sample.client_cpu / gb:>8.2f}{server:>8}", file=out)
