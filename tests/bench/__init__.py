"""Smoke runs of the benchmark scripts: tiny sizes, so that the scripts keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(
    script: Path, args: list[str], timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run a benchmark script with this interpreter; its stdout, after checking it exited 0."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return done.stdout
