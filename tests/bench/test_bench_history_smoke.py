"""A tiny run of scripts/bench-history, so the benchmark keeps working as the daemon changes.

The sizes say nothing about speed: the test checks that every row is measured.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench import ROOT, run_script

SCRIPT = ROOT / "scripts" / "bench-history"
TINY = [
    "--files", "3000", "--datasets", "15", "--card-files", "12", "--card-kb", "16",
    "--runs", "1", "--status-runs", "1", "--api-runs", "1", "--api-gap", "0", "--idle-s", "0.3",
]  # fmt: skip
ROWS = (
    "ready after start, s",
    "loop busy idle, % of a core",
    "loop CPU per card, s",
    "history's part, % of ingest",
    "status, ms min / median",
    "status --json, ms",
    "GET /api/status fresh, ms",
    "GET /metrics, ms",
    "peak RSS (VmHWM), MB",
    "journal on disk, MB",
)


def test_every_row_is_measured_beside_the_empty_journal(tmp_path: Path) -> None:
    out = run_script(SCRIPT, [*TINY, "--tmp", str(tmp_path)], 240)
    for row in ROWS:
        line = next((x for x in out.splitlines() if x.strip().startswith(row)), None)
        assert line is not None, out
        assert re.search(r"\d", line.removeprefix(f"  {row}")), out
    reported = next(x for x in out.splitlines() if "reported by status --json" in x)
    assert "not reported" not in reported, out  # the daemon says how big its journal is
    assert "history: 3000 files in 15 datasets" in out, out
    assert not list(tmp_path.iterdir()), "the benchmark left files behind"
