"""A tiny run of scripts/bench-web, so the benchmark keeps working as the page changes.

The sizes say nothing about speed: the test checks that every row is measured.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench import ROOT, run_script

SCRIPT = ROOT / "scripts" / "bench-web"
TINY = ["--files", "400", "--datasets", "4", "--requests", "5", "--card-files", "20"]
ROW = re.compile(r"^  (idle |ingest) GET (\S+)\s+p50\s+([\d.]+)\s+p95\s+([\d.]+)\s+max\s+([\d.]+)")


def test_every_page_is_measured_idle_and_during_an_ingest(tmp_path: Path) -> None:
    out = run_script(SCRIPT, [*TINY, "--card-kb", "16", "--runs", "1", "--tmp", str(tmp_path)], 180)
    rows = [match.groups() for line in out.splitlines() if (match := ROW.match(line))]
    assert {(kind.strip(), path) for kind, path, *_ in rows} == {
        ("idle", "/"),
        ("idle", "/api/status"),
        ("idle", "/datasets/flight-001?page=5"),
        ("idle", "/metrics"),
        ("ingest", "/"),
        ("ingest", "/api/status"),
    }, out
    assert all(float(p50) > 0 for *_, p50, _, _ in rows), out
    assert "ingest of 20 x 16 KiB, the page asked 20 times a second" in out, out
    for label in ("wall time", "daemon CPU"):
        assert re.search(rf"  {label} +alone: best +[\d.]+ s, median", out), out
    assert not list(tmp_path.iterdir()), "the benchmark left files behind"
