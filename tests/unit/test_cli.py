"""The command line as an operator meets it: exit codes and one-line messages."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from tests.conftest import Box, wait_until


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, check=False
    )


def test_status_before_the_first_run_says_what_to_do(box: Box) -> None:
    result = box.cli("status", check=False)
    assert result.returncode == 2
    assert "no journal yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_dataset_is_a_usage_error(box: Box) -> None:
    (box.inbox / "m").mkdir()
    (box.inbox / "m" / "a.jpg").write_bytes(random.Random(1).randbytes(100))
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("m", {}).get("files", {}).get("uploaded"), what="an upload"
    )
    for command in (["process", "nope"], ["cancel", "nope"], ["retry", "nope"], ["status", "nope"]):
        result = box.cli(*command, check=False)
        assert result.returncode == 2, command
        assert "no dataset named 'nope'" in result.stderr
    doc = json.loads(box.cli("status", "--json").stdout)
    assert doc["daemon"]["running"] is True
    assert [d["name"] for d in doc["datasets"]] == ["m"]
    human = box.cli("status").stdout
    assert "m  [" in human
    assert "1 uploaded" in human
    assert box.stop(proc) == 0


def test_a_second_daemon_on_the_same_state_dir_is_refused(box: Box) -> None:
    proc = box.start()
    second = box.cli("run", check=False)
    assert second.returncode == 2
    assert "another dronesync daemon" in second.stderr
    assert box.stop(proc) == 0


def test_usage_errors_exit_2() -> None:
    assert _run("retry").returncode == 2
    assert _run("frobnicate").returncode == 2


def test_version_and_help() -> None:
    assert _run("--version").stdout.startswith("dronesync ")
    assert "status" in _run("--help").stdout
