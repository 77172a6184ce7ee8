"""The benchmarks' own process loads nothing that changes what it times.

moto (which the soak's harness and the local PIX4Dcloud server load) adds a handler to every
botocore client made after it in the process; scripts/bench-targets times the PIX4Dcloud
target's client in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.bench import ROOT

PROBE = """
import json, sys
sys.path[:0] = [{scripts!r}, {root!r}]
import botocore.handlers
before = len(botocore.handlers.BUILTIN_HANDLERS)
import benchkit.bench.run, benchkit.bench_queue, benchkit.bench_targets.run, benchkit.link.run
added = [repr(h) for h in botocore.handlers.BUILTIN_HANDLERS[before:]]
print(json.dumps({{"added": added, "moto": "moto" in sys.modules}}))
"""


def test_the_benchmarks_load_no_botocore_hook() -> None:
    code = PROBE.format(scripts=str(ROOT / "scripts"), root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"added": [], "moto": False}
