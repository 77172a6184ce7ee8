"""A tiny run of scripts/bench, so the daemon benchmark keeps working as the daemon changes.

The sizes are far too small to say anything about speed (the daemon's start-up dominates):
this checks that every scenario runs the real daemon to the end and prints its rows with
positive figures, and that a restart re-hashes nothing; never that a goal is met.
"""

from __future__ import annotations

import math
import re
import shutil

from tests.bench import ROOT, run_script

SCRIPT = ROOT / "scripts" / "bench"
TINY = [
    "--hash-mb", "4",
    "--shapes", "small",  # the big shape runs the same code
    "--small-files", "20", "--small-kb", "16",
    "--restart-files", "100",
    "--latency-files", "2", "--latency-stable", "0.2",
    "--dd-mb", "4",
    "--runs", "1",
    "--no-settle",
    "--restart-hold-s", "0.3",
    "--timeout", "60",
]  # fmt: skip
HEADER = re.compile(r"^benchmark\s{2,}reference\s{2,}ref\s{2,}dronesync\s{2,}ratio\s{2,}goal")
RESULTS = {"ok", "below goal", "info"}


def run_bench(*args: str) -> str:
    return run_script(SCRIPT, [*TINY, *args], timeout=180)


def table(out: str) -> dict[tuple[str, str], list[str]]:
    """The table's rows by (benchmark, reference), split into cells (two or more spaces)."""
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if HEADER.match(line)]
    assert len(heads) == 1, out
    rows = {}
    for line in lines[heads[0] + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert (cells[0], cells[1]) not in rows, line
        rows[cells[0], cells[1]] = cells
    return rows


def figure(cell: str) -> float | None:
    if cell == "-":
        return None
    value = float(cell)
    assert math.isfinite(value), cell
    return value


def check_measured(row: list[str]) -> None:
    """Seven cells: name, reference, ref, dronesync, ratio, goal, result; figures positive."""
    assert len(row) == 7, row
    ref, ours, ratio = (figure(cell) for cell in row[2:5])
    assert ours is not None, row
    assert ours > 0, row
    assert (ref is None) == (ratio is None) == (row[1] == "-"), row
    if ref is not None and ratio is not None:
        assert ref > 0, row
        assert ratio > 0, row
    assert row[5] == "-" or row[5].startswith((">=", "<=")), row
    assert row[6] in RESULTS, row
    assert (row[5] == "-") == (row[6] == "info"), row


def test_every_daemon_row_is_measured_and_a_restart_rehashes_nothing() -> None:
    rows = table(run_bench())
    names = [name for name, _ in rows]

    def count(prefix: str) -> int:
        return sum(name.startswith(prefix) for name in names)

    assert count("hashing, cached 4 MiB file") == 1
    # The card without and with spool mode: against cp (with and without sync) and dd, then
    # bytes read and peak RSS.
    for tag in ("20 x 16 KiB", "20 x 16 KiB, spool"):
        references = [ref for name, ref in rows if name == f"ingest {tag} (MB/s, best of 1)"]
        assert len(references) == 3, (tag, references)
        assert (f"bytes read less start-up, {tag} (GB)", "card size") in rows
        assert (f"peak RSS, {tag} (MB)", "-") in rows
    assert count("peak RSS") == 4  # idle, two ingests, the 100-file first ingest
    assert count("first ingest, 100 x 1 KiB") == 1
    assert count("journal commits per file, 100 files") == 1
    assert count("journal fsyncs per file, 100 files") == 1
    assert count("start-up scan, 100 files") == 1
    assert count("process start to first scan done, 100 files") == 1
    assert count("the same less imports, 100 files") == 1
    assert count("close to upload start, stable_s=0.2") == 2  # median and max

    rehashed = rows["restart: files re-hashed", "-"]
    assert rehashed[3] == "0", rehashed
    assert rehashed[6] == "ok", rehashed
    syncs = rows["journal fsyncs per file, 100 files", "-"]
    if shutil.which("strace") is None:
        assert syncs[2] == "skipped: strace not found on PATH", syncs
    for key, row in rows.items():
        if key[0] == "restart: files re-hashed":
            continue
        if key[0].startswith("journal fsyncs") and row[2].startswith("skipped: "):
            continue
        if key[0].startswith("journal fsyncs") and row[3] == "0":
            continue  # measured, and none at all: also positive news
        check_measured(row)
