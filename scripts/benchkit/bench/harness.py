"""The run of scripts/bench: its settings, its goals, its rows and notes, the table."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchkit.bench.child import Daemon
from benchkit.files import MIB
from benchkit.procfs import ProcFigures
from benchkit.settling import remove
from benchkit.smallcpu import CardImage, Confinement, maybe_inside
from benchkit.table import fmt, left, right

# The goals of the issue.
GOAL_HASH = 0.90  # dronesync / hashlib
HASH_ROUNDS = 5  # rounds of the hashing row, each side once per round
GOAL_INGEST = 0.80  # dronesync / (cp -r + sha256)
GOAL_READS = 2.0  # bytes read / card bytes
GOAL_READS_SPOOL = 1.05
GOAL_RESTART = 3.0  # first scan / walk
GOAL_RSS_MB = 120.0
GOAL_LATENCY_S = 1.0  # over stable_s
# "Batched; no per-file fsync on the hot path": at least ten files per journal commit, and per
# fsync of the journal's files, on average.
GOAL_COMMITS_PER_FILE = 0.1
GOAL_JOURNAL_SYNCS_PER_FILE = 0.1

# A timed run's output is kept (not deleted) until its card is done while the disk has room for
# this many more cards and KEEP_ROOM; below it, outputs are deleted and the next run waits for
# them to age.
KEEP_CARDS = 3
KEEP_ROOM = 4 * 1024 * MIB


@dataclass
class Row:
    """One line of the table.

    ``ref`` and ``ratio`` are None where the goal has no reference; ``higher``: whether a
    larger ratio (or figure, without a ratio) is better; ``goal`` None: information only.
    """

    name: str
    reference: str
    ref: float | None
    ours: float
    ratio: float | None
    goal: float | None
    higher: bool
    skip: str | None = None

    @property
    def ok(self) -> bool | None:
        """Whether the goal is met; None for a row without a goal."""
        if self.goal is None:
            return None
        value = self.ratio if self.ratio is not None else self.ours
        return value >= self.goal if self.higher else value <= self.goal


TABLE_HEAD = ("benchmark", "reference", "ref", "dronesync", "ratio", "goal")
TABLE_WIDTHS = (52, 34, 9, 9, 6, 7)


def print_table(rows: list[Row], notes: list[str], out: IO[str]) -> None:
    """The table: columns two spaces apart, never two spaces inside a cell; then the notes."""
    print(left(TABLE_HEAD, TABLE_WIDTHS) + "  result", file=out)
    for row in rows:
        line = left((row.name, row.reference), TABLE_WIDTHS)
        if row.skip:
            print(f"{line}  skipped: {row.skip}", file=out)
            continue
        goal = "-" if row.goal is None else ((">=" if row.higher else "<=") + f"{row.goal:g}")
        values = (fmt(row.ref), fmt(row.ours), fmt(row.ratio), goal)
        line += "  " + right(values, TABLE_WIDTHS[2:])
        result = {None: "info", True: "ok", False: "below goal"}[row.ok]
        print(f"{line}  {result}", file=out)
    print("", file=out)
    for note in notes:
        print(f"- {note}", file=out)


@dataclass
class Bench:
    """The run's settings and what it measured."""

    args: argparse.Namespace
    work: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    idle: ProcFigures | None = None  # a daemon that only started: what start-up costs
    short_of_room: bool = False  # outputs could not be kept: see keep()
    card_bytes: int = 0  # the card being ingested: what each of its runs writes
    confine: Confinement | None = None  # --cpu-quota, --card-mbps: where the sides run
    ref_cpu: list[float] = field(default_factory=list)  # CPU seconds of each cp -r reference
    cards: list[CardImage] = field(default_factory=list)  # --card-mbps: images attached

    def close_small_box(self) -> None:
        """Detach the card images, remove the cgroups of ``--cpu-quota`` / ``--card-mbps``."""
        while self.cards:
            self.cards.pop().close()
        if self.confine is not None:
            self.confine.close()
            self.confine = None

    def keep(self, path: Path) -> None:
        """Set a timed run's output aside until :meth:`drop_kept` (or delete it now, short of room).

        No run after it then waits for its deletion to age.
        """
        if not path.exists():
            return
        if shutil.disk_usage(self.work).free < KEEP_ROOM + KEEP_CARDS * self.card_bytes:
            if not self.short_of_room:
                self.short_of_room = True
                self.notes.append(
                    "the disk was short of room: outputs were deleted between runs, and each"
                    " run after a deletion waited a minute for it to age (tests/bench/settle.py)"
                )
            remove(path)
            return
        kept = self.work / "kept"
        kept.mkdir(exist_ok=True)
        path.rename(kept / str(sum(1 for _ in kept.iterdir())))

    def drop_kept(self) -> None:
        """Delete what :meth:`keep` set aside (the next measurement waits for it to age)."""
        remove(self.work / "kept")

    def start(self, config: Path, name: str, **kwargs: Any) -> Daemon:
        """Start the daemon on ``config``, its log in ``NAME.log``; killed if the run fails."""
        with maybe_inside(self.confine):  # the daemon and its hashing processes, if asked
            daemon = Daemon(config, self.work / f"{name}.log", **kwargs)
        self.daemons.append(daemon)
        return daemon

    def problems(self, name: str, daemon: Daemon) -> None:
        """A note with the daemon's warning and error lines, if it logged any."""
        if daemon.problems:
            self.notes.append(
                f"{name}: {len(daemon.problems)} warning/error log lines, first:"
                f" {daemon.problems[0][:300]}"
            )

    def add(
        self,
        name: str,
        ours: float,
        *,
        reference: str = "-",
        ref: float | None = None,
        goal: float | None = None,
        higher: bool = False,
    ) -> Row:
        """A row; the ratio is ours / ref where there is a reference."""
        ratio = None if ref is None else ours / ref
        row = Row(name, reference, ref, ours, ratio, goal, higher)
        self.rows.append(row)
        return row
