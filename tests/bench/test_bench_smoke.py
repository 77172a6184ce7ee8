"""A tiny run of scripts/bench-targets, so the benchmark keeps working as the targets change.

The sizes are far too small to say anything about speed: these tests check that every row is
either measured (positive figures) or skipped with its reason, never that a goal is met.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

from tests.bench import ROOT, run_script

SCRIPT = ROOT / "scripts" / "bench-targets"
TINY = ["--big-mb", "1", "--files", "6", "--file-mb", "0.25", "--runs", "1", "--no-settle"]
# The s3 target has its own smoke tests (test_bench_s3_smoke.py).
TINY += ["--targets", "nodeodm,pix4dcloud,webodm"]
HEADER = re.compile(r"^target\s{2,}data\s{2,}reference\s{2,}ref MB/s\s{2,}dronesync MB/s")
TARGETS = ("nodeodm", "pix4dcloud", "webodm", "s3")


def run_bench(*args: str, env: dict[str, str] | None = None) -> str:
    return run_script(SCRIPT, [*TINY, *args], timeout=120, env=env)


def table(out: str) -> list[list[str]]:
    """The table's rows, split into cells (columns are two or more spaces apart)."""
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if HEADER.match(line)]
    assert len(heads) == 1, out
    rows = []
    for line in lines[heads[0] + 1 :]:
        if not line.startswith(TARGETS):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def measured(row: list[str]) -> bool:
    if row[3].startswith("skipped: "):
        assert len(row) == 4, row
        assert row[3].removeprefix("skipped: ").strip(), row
        return False
    ref, ours, ratio = (float(cell) for cell in row[3:6])
    assert ref > 0, row
    assert ours > 0, row
    assert ratio > 0, row
    assert math.isfinite(ratio), row
    assert row[6].startswith(">="), row
    assert row[7] in {"ok", "below goal"}, row
    return True


def test_every_row_has_positive_figures_or_a_reason() -> None:
    rows = table(run_bench())
    # Two scenarios on three targets, each against two references (webodm: curl).
    assert [row[0] for row in rows] == ["nodeodm"] * 4 + ["pix4dcloud"] * 4 + ["webodm"] * 2
    for row in rows:
        tool = row[2].split()[0]
        done = measured(row)
        if tool in {"curl", "rclone"}:
            assert done == (shutil.which(tool) is not None), row


def test_a_missing_tool_skips_its_rows_with_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    rows = table(run_bench("--scenarios", "many", env=env))
    by_reference = {(row[0], row[2].split()[0]): row for row in rows}
    assert by_reference["nodeodm", "curl"][3] == "skipped: curl not found on PATH"
    assert by_reference["pix4dcloud", "curl"][3] == "skipped: curl not found on PATH"
    assert by_reference["pix4dcloud", "rclone"][3] == "skipped: rclone not found on PATH"
    assert by_reference["webodm", "curl"][3] == "skipped: curl not found on PATH"
    # pyodm is a Python package, not a tool on PATH: measured when installed.
    measured(by_reference["nodeodm", "pyodm"])
