"""A small box (``--cpu-quota``, ``--card-mbps``): confined where asked, nothing left behind.

These need root and cgroups (v1 ``cpu`` and ``cpuset``, or v2 with those controllers), and
loop devices for the card; they are skipped, with the reason, where those are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench import ROOT, run_script

CGROUP = Path("/sys/fs/cgroup")


def missing() -> str | None:
    """Why a small box cannot be made here, or None."""
    if os.geteuid() != 0:
        return "cgroups and loop devices need root"
    v1 = (CGROUP / "cpu" / "cgroup.procs").exists() and (CGROUP / "cpuset").exists()
    v2 = any(
        {"cpu", "cpuset"} <= set((p / "cgroup.controllers").read_text().split())
        for p in (CGROUP, CGROUP / "unified")
        if (p / "cgroup.controllers").exists()
    )
    if not (v1 or v2):
        return "no cpu and cpuset cgroup controllers here"
    return None


pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def leftovers() -> list[str]:
    """Cgroups of the benchmarks whose process has ended (each is named after its pid)."""
    found = [*CGROUP.glob("*/dronesync-bench-*"), *CGROUP.glob("unified/**/dronesync-bench-*")]
    return [str(p) for p in found if not Path(f"/proc/{p.name.rpartition('-')[2]}").exists()]


@pytest.fixture
def smallcpu() -> Iterator[Any]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import benchkit.smallcpu  # noqa: PLC0415 - the scripts' package, on their path

        yield benchkit.smallcpu
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_what_starts_inside_runs_on_one_cpu_under_the_quota(smallcpu: Any) -> None:
    cpu = (os.cpu_count() or 1) - 1
    box = smallcpu.Confinement(0.5, cpu)
    try:
        groups = [group for group, _ in box.groups]
        with box.inside():
            probe = "import os; print(sorted(os.sched_getaffinity(0)))"
            argv = [sys.executable, "-c", probe]
            child = subprocess.run(argv, capture_output=True, text=True, check=False)
            cgroups = Path("/proc/self/cgroup").read_text()
        assert child.stdout.strip() == f"[{cpu}]", child.stderr
        assert box.name in cgroups
        assert box.name not in Path("/proc/self/cgroup").read_text()  # this process left
        limits = [g / name for g in groups for name in ("cpu.cfs_quota_us", "cpu.max")]
        assert any(path.exists() and "50000" in path.read_text() for path in limits), groups
    finally:
        box.close()
    assert not any(group.exists() for group in groups)


def test_the_daemon_bench_on_a_small_box_reads_the_card_at_its_limit(tmp_path: Path) -> None:
    if shutil.which("losetup") is None or not Path("/dev/loop-control").exists():
        pytest.skip("no loop devices here: the card image cannot be mounted")
    args = ["--scenarios", "ingest", "--shapes", "small", "--small-files", "20"]
    args += ["--small-kb", "64", "--runs", "1", "--no-settle", "--dd-mb", "4", "--timeout", "60"]
    args += ["--cpu-quota", "0.5", "--card-mbps", "200", "--tmp", str(tmp_path)]
    args += ["--hash-workers", "1"]
    out = run_script(ROOT / "scripts" / "bench", args, timeout=180)
    assert "the card read alone" in out
    assert "0.5 of CPU" in out
    assert "read cold at 200 MB/s at most" in out
    assert leftovers() == []
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
    assert str(tmp_path) not in attached.stdout


def test_the_targets_bench_on_a_small_box(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not found on PATH")
    args = ["--targets", "nodeodm", "--scenarios", "big", "--big-mb", "1", "--runs", "1"]
    args += ["--no-settle", "--cpu-quota", "0.5", "--tmp", str(tmp_path)]
    out = run_script(ROOT / "scripts" / "bench-targets", args, timeout=120)
    assert "0.5 of CPU" in out
    assert "nodeodm" in out
    assert leftovers() == []


def test_the_daemon_bench_sends_through_a_link_on_a_small_box(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not found on PATH")
    args = ["--scenarios", "spool", "--shapes", "small", "--small-files", "8", "--small-kb", "64"]
    args += ["--runs", "1", "--no-settle", "--timeout", "60", "--tmp", str(tmp_path)]
    args += ["--cpu-quota", "0.5", "--link-mbit", "80"]
    out = run_script(ROOT / "scripts" / "bench", args, timeout=180)
    assert "sent over 80 Mbit/s, 8 x 64 KiB, spool" in out
    assert "curl -F --limit-rate" in out
    assert leftovers() == []
