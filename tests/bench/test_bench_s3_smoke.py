"""A tiny run of scripts/bench-targets' s3 target, so the benchmark keeps working.

The sizes say nothing about speed (files of a few MiB, the smallest parts S3 allows): the tests
check that both rows are measured beside rclone, or skipped with the reason when it is missing.
scripts/test installs rclone when it runs as root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.bench import run_script
from tests.bench.test_bench_smoke import SCRIPT, measured, table

# Two files just above the smallest multipart threshold (in parts on both sides), and a few
# small images (one PUT each).
TINY = [
    "--targets", "s3", "--runs", "1", "--no-settle",
    "--s3-big-files", "2", "--s3-big-mb", "6", "--multipart-threshold-mb", "5",
    "--part-size-mb", "5", "--files", "6", "--s3-file-mb", "0.1-0.3",
]  # fmt: skip


def run_bench(tmp: Path, env: dict[str, str] | None = None) -> str:
    return run_script(SCRIPT, [*TINY, "--tmp", str(tmp)], timeout=120, env=env)


def test_both_scenarios_are_measured_beside_rclone(tmp_path: Path) -> None:
    out = run_bench(tmp_path)
    rows = table(out)
    assert [(row[0], row[1]) for row in rows] == [
        ("s3", "2 x 6 MiB, 5 MiB parts"),
        ("s3", "6 x 0.1-0.3 MiB, 4 at a time"),
    ], out
    for row in rows:
        assert row[2] == "rclone copy --transfers 4 **", row
        assert measured(row) == (shutil.which("rclone") is not None), row
    assert "** --transfers 4 --s3-upload-cutoff 5M --s3-chunk-size 5M" in out, out
    assert "s3 big dronesync" in out, out  # its CPU per GB
    assert not list(tmp_path.iterdir()), "the benchmark left files behind"


def test_without_rclone_its_rows_say_so_and_dronesync_still_runs(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    (tmp_path / "work").mkdir()
    out = run_bench(tmp_path / "work", env={**os.environ, "PATH": str(empty)})
    rows = table(out)
    assert [row[3] for row in rows] == ["skipped: rclone not found on PATH"] * 2, out
    assert "s3 many dronesync" in out, out
