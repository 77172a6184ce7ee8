"""The command line as an operator meets it: exit codes and one-line messages."""

from __future__ import annotations

import json
import os
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


def _into_closed_pipe(box: Box, *args: str) -> subprocess.CompletedProcess[str]:
    """``dronesync ARGS`` with its output read by nobody: ``| head`` after head has ended."""
    read, write = os.pipe()
    os.close(read)  # closed before the command writes a byte: every write meets EPIPE
    try:
        return subprocess.run(
            [sys.executable, "-m", "daemon", *args, "--config", str(box.config)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)


def test_output_into_a_closed_pipe_ends_quietly_with_141(box: Box) -> None:
    (box.inbox / "m").mkdir()
    for index in range(3):
        (box.inbox / "m" / f"{index}.jpg").write_bytes(random.Random(index).randbytes(100))
    proc = box.start()
    wait_until(lambda: box.datasets().get("m", {}).get("files", {}).get("uploaded") == 3)
    assert box.stop(proc) == 0
    for command in (
        ["status"],
        ["status", "--files"],
        ["status", "--json"],
        ["status", "m", "--files", "--json"],
        ["config", "check"],
    ):
        result = _into_closed_pipe(box, *command)
        assert result.stderr == "", (command, result.stderr)
        assert result.returncode == 141, command


def test_status_files_escapes_control_characters_in_names(box: Box) -> None:
    dataset = box.inbox / "m"
    dataset.mkdir()
    hostile = {
        b"two\n    uploaded  forged.jpg": 1,
        b"clear\x1b[2J\x1b]0;title\x07.jpg": 2,
        b"latin-\xe9.jpg": 3,
        b"back\rspace\x08.jpg": 4,
    }
    for name, seed in hostile.items():
        with open(os.fsencode(dataset) + b"/" + name, "wb") as fh:
            fh.write(random.Random(seed).randbytes(100))
    proc = box.start()
    wait_until(lambda: box.datasets().get("m", {}).get("files", {}).get("uploaded") == 4)
    assert box.stop(proc) == 0

    out = box.cli("status", "--files").stdout
    file_lines = [line for line in out.splitlines() if line.startswith("    ")]
    assert len(file_lines) == 4, out  # one line per file: no name forged another
    assert all(line.startswith("    uploaded  ") for line in file_lines), file_lines
    assert not any(ch in out for ch in "\x1b\x07\r\x08"), repr(out)
    assert "    uploaded  two\\n    uploaded  forged.jpg" in out
    assert "clear\\x1b[2J\\x1b]0;title\\x07.jpg" in out
    assert "latin-\\xe9.jpg" in out
    # the JSON keeps the name as it is (escaped by JSON itself)
    names = {f["path"] for f in box.status(files=True)["datasets"][0]["file_list"]}
    assert "two\n    uploaded  forged.jpg" in names


HEAVY = ("pydantic", "pydantic_settings", "asyncio", "httpx", "watchdog", "structlog", "botocore")


def _heavy_imports_of_status(box: Box) -> list[str]:
    """The daemon's heavy dependencies that ``dronesync status`` imported."""
    code = (
        "import json, sys; from daemon.cli import main; main(['status', '--config', sys.argv[1]]);"
        f" print(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(box.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [str(name) for name in json.loads(result.stdout.splitlines()[-1])]


def test_status_skips_the_settings_model_only_for_the_file_the_daemon_checked(box: Box) -> None:
    assert "pydantic_settings" in _heavy_imports_of_status(box)  # nothing checked it yet
    assert box.stop(box.start()) == 0
    assert _heavy_imports_of_status(box) == []

    box.config.write_text(box.config.read_text("utf-8") + "[spool]\nmax_gb = 0\n", "utf-8")
    refused = box.cli("status", check=False)
    assert refused.returncode == 78
    assert "spool.max_gb" in refused.stderr
    assert refused.stderr == box.cli("config", "check", check=False).stderr
