"""A tiny run of scripts/bench-link: the link is made, measured and removed again.

The sizes say nothing about speed: the tests check that every row has positive figures and a
verdict, and that no namespace or veth is left behind, after a run or a SIGTERM in the middle.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from tests.bench import ROOT, run_script

sys.path.insert(0, str(ROOT / "scripts"))
from benchkit.link.netns import IP, netns_missing

SCRIPT = ROOT / "scripts" / "bench-link"
TINY = ["--links", "lan", "--files", "3", "--scale", "0.05", "--capacity-s", "0.2"]
ROW = re.compile(r"^(nodeodm|pix4dcloud|webodm)\s{2,}")

pytestmark = pytest.mark.skipif(
    netns_missing() is not None, reason=f"no network namespace here: {netns_missing()}"
)


def leftovers(pid: int) -> list[str]:
    """The namespace and veth of the benchmark process ``pid``, if still there."""
    names = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run([IP, "-o", "link"], capture_output=True, text=True, check=True)
    return [
        line
        for line in (names.stdout + links.stdout).splitlines()
        if f"dsl-{pid}" in line or f"dslc{pid}" in line
    ]


def test_every_row_has_figures_and_a_verdict() -> None:
    # PIX4Dcloud: its S3 endpoint is reached through the link too.
    out = run_script(SCRIPT, [*TINY, "--targets", "nodeodm,pix4dcloud"], timeout=120)
    assert "link lan: 200 Mbit/s, 10 ms RTT; capacity" in out, out
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if ROW.match(line)]
    kinds = [row[1] for row in rows]
    for target in ("nodeodm", "pix4dcloud"):
        mine = [row[1] for row in rows if row[0] == target]
        assert mine[:3] == [
            "dronesync, 4 at a time",
            "bandwidth_limit 0.6 x capacity",
            mine[2],
        ], kinds
        assert mine[2].startswith("30% of uploads failing, goodput "), kinds
        assert "dronesync beside curl, 4 at a time" in mine, kinds
        assert mine[-1] == "client CPU-s per GB", kinds
    for row in rows:
        assert float(row[2]) > 0, row
        assert float(row[4]) > 0, row
        assert row[-1] in {"ok", "below goal"}, row


def test_a_sigterm_leaves_no_namespace() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *TINY, "--targets", "nodeodm"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "nodeodm full dronesync" in line:  # the link is up and in use
                break
        assert leftovers(proc.pid), "the namespace was not made"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert leftovers(proc.pid) == []
