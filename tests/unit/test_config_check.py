"""`dronesync config check`: every broken file gives one line per problem and exit 78."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.config_example import example

ROOT = Path(__file__).resolve().parents[2]

GOOD_TARGET = '[targets.archive]\ntype = "directory"\npath = "/srv/archive"\n'
GOOD_SOURCE = '[[sources]]\npath = "/srv/inbox"\ntarget = "archive"\n'


def _valid(state: Path) -> str:
    return f'state_dir = "{state}"\n' + GOOD_TARGET + GOOD_SOURCE


BROKEN: dict[str, tuple[str, str]] = {
    # name: (TOML body appended to or replacing a valid file, text the error must contain)
    "syntax": ("[targets.archive\n", "TOML syntax error"),
    "unclosed string": ('state_dir = "/tmp\n', "TOML syntax error"),
    "unknown top key": ("colour = 1\n", "colour: unknown key"),
    "unknown upload key": ("[upload]\nworkers = 3\n", "upload.workers: unknown key"),
    "unknown target key": (
        '[targets.b]\ntype = "directory"\npath = "/x"\nurl = "y"\n',
        "targets.b.url: unknown key",
    ),
    "unknown source key": (GOOD_SOURCE + "quiet = 5\n", "sources[1].quiet: unknown key"),
    "wrong type concurrency": ('[upload]\nconcurrency = "four"\n', "upload.concurrency"),
    "zero concurrency": ("[upload]\nconcurrency = 0\n", "upload.concurrency"),
    "absurd concurrency": ("[upload]\nconcurrency = 5000\n", "upload.concurrency"),
    "negative backoff": ("[upload]\nbackoff_initial_s = -1\n", "upload.backoff_initial_s"),
    "tiny bandwidth": ("[upload]\nbandwidth_limit = 10\n", "upload.bandwidth_limit"),
    "missing type": ('[targets.b]\npath = "/x"\n', "targets.b: missing `type`"),
    "unknown type": ('[targets.b]\ntype = "ftp"\npath = "/x"\n', "unknown target type 'ftp'"),
    "missing path": ('[targets.b]\ntype = "directory"\n', "targets.b.path: required"),
    "unknown target": (
        '[[sources]]\npath = "/a"\ntarget = "nas"\n',
        "sources[1].target: no target named 'nas'",
    ),
    "source without target": ('[[sources]]\npath = "/a"\n', "sources[1].target: required"),
    "negative stable": (GOOD_SOURCE + "stable_s = -1\n", "sources[1].stable_s"),
    "absurd quiet": (GOOD_SOURCE + "quiet_s = 1e9\n", "sources[1].quiet_s"),
    "too frequent rescan": (GOOD_SOURCE + "rescan_s = 1\n", "sources[1].rescan_s"),
    "poll too fast": (GOOD_SOURCE + "poll_s = 0.01\n", "sources[1].poll_s"),
    "bad layout": (GOOD_SOURCE + 'layout = "flat"\n', "sources[1].layout"),
    "empty glob": (GOOD_SOURCE + 'include = [""]\n', "sources[1].include: empty glob"),
    "absolute glob": (GOOD_SOURCE + 'exclude = ["/x/*.jpg"]\n', "is absolute"),
    "unclosed bracket glob": (GOOD_SOURCE + 'include = ["[ab.jpg"]\n', "unclosed"),
    "bad dataset placeholder": (GOOD_SOURCE + 'dataset = "{date}"\n', "unknown placeholder"),
    "bad command placeholder": (
        '[targets.b]\ntype = "directory"\npath = "/x"\nprocess_command = ["run", "{dir}"]\n',
        "targets.b.process_command: unknown placeholder {dir}",
    ),
    "empty command": (
        '[targets.b]\ntype = "directory"\npath = "/x"\nprocess_command = []\n',
        "targets.b.process_command: must name a program",
    ),
    "auto_process not bool": (GOOD_SOURCE + 'auto_process = "maybe"\n', "auto_process"),
    "bad log level": ('log_level = "loud"\n', "log_level"),
}


def _check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_config_gives_one_clear_line_and_exit_78(name: str, tmp_path: Path) -> None:
    body, expected = BROKEN[name]
    path = tmp_path / "dronesync.toml"
    # Top-level keys must come before the first table; everything else is appended.
    if body.startswith(("colour", "log_level", "state_dir")):
        text = body + _valid(tmp_path / "state")
    else:
        text = _valid(tmp_path / "state") + body
    path.write_text(text, encoding="utf-8")
    result = _check(path)
    assert result.returncode == 78, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines
    assert all(str(path) in line for line in lines), lines
    assert any(expected in line for line in lines), lines


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "dronesync.toml"
    path.write_text(
        _valid(tmp_path / "s")
        + "[upload]\nconcurrency = 0\n"
        + '[[sources]]\npath = "/a"\ntarget = "nope"\nquiet_s = -5\n',
        encoding="utf-8",
    )
    lines = _check(path).stderr.strip().splitlines()
    assert len(lines) == 3
    assert any("upload.concurrency" in line for line in lines)
    assert any("sources[1].quiet_s" in line for line in lines)
    assert any("sources[1].target" in line for line in lines)


@pytest.mark.parametrize("case", ["missing", "folder", "not utf-8", "no sources"])
def test_unusable_files(case: str, tmp_path: Path) -> None:
    path = tmp_path / "dronesync.toml"
    if case == "folder":
        path.mkdir()
    elif case == "not utf-8":
        path.write_bytes(b'state_dir = "\xff\xfe"\n')
    elif case == "no sources":
        path.write_text(GOOD_TARGET, encoding="utf-8")
    result = _check(path)
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr


def test_a_state_dir_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "dronesync.toml"
    path.write_text(_valid(blocker / "state"), encoding="utf-8")
    result = _check(path)
    assert result.returncode == 78
    assert "state_dir" in result.stderr
    assert "cannot be written" in result.stderr


def test_a_good_file_passes_and_notes_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "dronesync.toml"
    path.write_text(_valid(tmp_path / "state"), encoding="utf-8")
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert "ok (1 sources, 1 targets)" in result.stdout
    assert "does not exist yet" in result.stdout


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "dronesync.toml"
    path.parent.mkdir()
    path.write_text(
        'state_dir = "../state"\n[targets.a]\ntype = "directory"\npath = "archive"\n'
        'process_command = ["./bin/proc", "{dataset_dir}"]\n'
        '[[sources]]\npath = "/abs/inbox"\ntarget = "a"\n',
        encoding="utf-8",
    )
    settings = load_config(path)
    assert settings.state_dir == tmp_path / "state"
    assert settings.targets["a"].path == tmp_path / "conf" / "archive"
    assert settings.targets["a"].process_command == [
        str(tmp_path / "conf" / "bin" / "proc"),
        "{dataset_dir}",
    ]
    assert settings.sources[0].path == Path("/abs/inbox")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dronesync.toml"
    path.write_text(_valid(tmp_path / "state") + "[upload]\nconcurrency = 4\n", encoding="utf-8")
    bad = _check(path, env={**os.environ, "DRONESYNC_UPLOAD__CONCURRENCY": "0"})
    assert bad.returncode == 78
    assert "upload.concurrency" in bad.stderr


def test_the_example_is_the_committed_reference_and_is_valid(tmp_path: Path) -> None:
    text = example()
    assert (ROOT / "config" / "dronesync.toml").read_text(encoding="utf-8") == text
    printed = subprocess.run(
        [sys.executable, "-m", "daemon", "config", "example"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == text
    path = tmp_path / "example.toml"
    path.write_text(text.replace("/var/lib/dronesync", str(tmp_path / "state")), encoding="utf-8")
    assert _check(path).returncode == 0


def test_the_local_default_config_is_valid() -> None:
    settings = load_config(ROOT / "config" / "local.toml")
    assert settings.sources[0].path == ROOT / "var" / "inbox"
    assert settings.targets["archive"].process_command is not None
