"""`dronesync config check` on a corpus of broken files, and how a good file is read.

Every broken file must end the real CLI with exit 78 (EX_CONFIG, so systemd does not restart
it), no traceback, and one line per problem that names the file and the key to fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.errors import ConfigError
from daemon.targets.directory import DirectoryTargetConfig

STATE = "@STATE@"  # replaced by a per-case state folder


def config_text(
    *, top: str = "", upload: str = "", target: str = "", source: str = "", tail: str = ""
) -> str:
    """A valid file with extra lines added to each table (``tail`` goes at the very end)."""
    return (
        f'state_dir = "{STATE}"\n{top}'
        f"[upload]\n{upload}"
        f'[targets.archive]\ntype = "directory"\npath = "/srv/archive"\n{target}'
        f'[[sources]]\npath = "/srv/inbox"\ntarget = "archive"\n{source}'
        f"{tail}"
    )


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``dronesync config check --config PATH``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


@dataclass(frozen=True)
class Case:
    """One broken configuration and what its error line must say."""

    text: str | None  # the file's text; None: ``make`` builds the situation
    key: str | None  # the key the line names (None: the file itself is the problem)
    message: str
    make: Callable[[Path], Path] | None = None
    lines: int = 1


def _write(folder: Path, text: str) -> Path:
    path = folder / "dronesync.toml"
    path.write_text(text.replace(STATE, str(folder / "state")), encoding="utf-8")
    return path


def _missing(folder: Path) -> Path:
    return folder / "dronesync.toml"


def _directory(folder: Path) -> Path:
    path = folder / "dronesync.toml"
    path.mkdir()
    return path


def _not_utf8(folder: Path) -> Path:
    path = folder / "dronesync.toml"
    path.write_bytes(config_text(top='log_level = "info" # caf\xe9\n').encode("latin-1"))
    return path


def _state_under_a_file(folder: Path) -> Path:
    (folder / "a-file").write_text("")
    return _write(folder, config_text().replace(STATE, str(folder / "a-file" / "state")))


def _config_under_a_file(folder: Path) -> Path:
    (folder / "a-file").write_text("")
    return folder / "a-file" / "dronesync.toml"


def _symlink_loop(folder: Path) -> Path:
    (folder / "one.toml").symlink_to(folder / "two.toml")
    (folder / "two.toml").symlink_to(folder / "one.toml")
    return folder / "one.toml"


def _layout(folder: Path, *, sources: list[str], target: str = "archive", extra: str = "") -> Path:
    """A file whose paths (relative to ``folder``) make the folders overlap some way."""
    tables = f'[targets.archive]\ntype = "directory"\npath = "{folder / target}"\n{extra}'
    for source in sources:
        tables += f'[[sources]]\npath = "{folder / source}"\ntarget = "archive"\n'
    return _write(folder, f'state_dir = "{STATE}"\n{tables}')


def _target_is_a_file(folder: Path) -> Path:
    (folder / "archive").write_text("not a folder")
    return _layout(folder, sources=["inbox"])


def _target_under_a_file(folder: Path) -> Path:
    (folder / "nas").write_text("not a folder")
    return _layout(folder, sources=["inbox"], target="nas/archive")


def _symlinked_source_twice(folder: Path) -> Path:
    (folder / "inbox").mkdir()
    (folder / "link").symlink_to(folder / "inbox")
    return _layout(folder, sources=["inbox", "link"])


def _command(folder: Path, program: str, mode: int | None = None) -> Path:
    if mode is not None:
        (folder / program).write_text("#!/bin/sh\n")
        (folder / program).chmod(mode)
        program = str(folder / program)
    return _layout(
        folder, sources=["inbox"], extra=f'process_command = ["{program}", "{{dataset}}"]\n'
    )


# Run through the real CLI: one process each (about a third of a second apiece).
def _odm(folder: Path, secret: str | None, mode: int = 0o600, key: str = "token_file") -> Path:
    """A NodeODM target whose token file holds ``secret`` (None: no such file)."""
    token = folder / "node.token"
    if secret is not None:
        token.write_text(secret)
        token.chmod(mode)
    odm = f'[targets.odm]\ntype = "nodeodm"\nurl = "http://127.0.0.1:3000"\n{key} = '
    odm += f'"{token}"\n' if key == "token_file" else '"node-token"\n'
    return _write(folder, config_text(tail=odm))


def _secret(folder: Path, mode: int) -> Path:
    path = folder / "pix4d.secret"
    path.write_text("s3cret")
    path.chmod(mode)
    return path


def _pix4d(folder: Path, secret_line: str) -> Path:
    cloud = f'[targets.cloud]\ntype = "pix4dcloud"\nclient_id = "box"\n{secret_line}\n'
    return _write(folder, config_text(tail=cloud))


CLI_CASES: dict[str, Case] = {
    "token file readable by every user": Case(
        None,
        "targets.odm.token_file",
        "readable by every user; run `chmod 600",
        make=lambda f: _odm(f, "s3cret", 0o644),
    ),
    "token file missing": Case(
        None, "targets.odm.token_file", "does not exist", make=lambda f: _odm(f, None)
    ),
    "token file empty": Case(
        None, "targets.odm.token_file", "is empty", make=lambda f: _odm(f, "")
    ),
    "credential named outside systemd": Case(
        None,
        "targets.odm.token_credential",
        "$CREDENTIALS_DIRECTORY is not set",
        make=lambda f: _odm(f, None, key="token_credential"),
    ),
    "pix4dcloud without a client secret": Case(
        None,
        "targets.cloud.client_secret_file",
        "required; name the file",
        make=lambda f: _pix4d(f, ""),
    ),
    "pix4dcloud secret readable by every user": Case(
        None,
        "targets.cloud.client_secret_file",
        "readable by every user",
        make=lambda f: _pix4d(f, f'client_secret_file = "{_secret(f, 0o604)}"'),
    ),
    "nodeodm url is not a URL": Case(
        config_text(tail='[targets.odm]\ntype = "nodeodm"\nurl = "odm.lan:3000"\n'),
        "targets.odm.url",
        "is not an http:// or https:// URL",
    ),
    "webhook url is not a URL": Case(
        config_text(top='[notifications]\nwebhook_url = "hooks"\n'),
        "notifications.webhook_url",
        "is not an http:// or https:// URL",
    ),
    "unknown notification event": Case(
        config_text(top='[notifications]\nevents = ["card_eaten"]\n'),
        "notifications.events[0]",
        "processing_started",
    ),
    # TOML itself
    "unclosed table header": Case(config_text(tail="[upload\n"), None, "TOML syntax error"),
    # unknown keys, at every level
    "unknown top-level key": Case(config_text(top="colour = 1\n"), "colour", "unknown key"),
    "unknown upload key": Case(config_text(upload="workers = 3\n"), "upload.workers", "unknown"),
    "unknown target key": Case(
        config_text(target='url = "https://x"\n'), "targets.archive.url", "unknown key"
    ),
    "unknown source key": Case(config_text(source="quiet = 5\n"), "sources[0].quiet", "unknown"),
    # wrong types
    "concurrency is text": Case(
        config_text(upload='concurrency = "four"\n'), "upload.concurrency", "integer"
    ),
    # targets and sources
    "target without type": Case(
        config_text(tail='[targets.b]\npath = "/srv/b"\n'), "targets.b", "missing `type`"
    ),
    "unknown target type": Case(
        config_text(tail='[targets.b]\ntype = "ftp"\npath = "/srv/b"\n'),
        "targets.b",
        "unknown target type 'ftp'",
    ),
    "source names an unknown target": Case(
        config_text().replace('target = "archive"', 'target = "nas"'),
        "sources[0].target",
        "no target named 'nas'",
    ),
    "no sources": Case(config_text().split("[[sources]]")[0], "sources", "no [[sources]] table"),
    # globs
    "empty glob": Case(config_text(source='include = [""]\n'), "sources[0].include", "empty glob"),
    "absolute glob": Case(
        config_text(source='exclude = ["/srv/*.jpg"]\n'), "sources[0].exclude", "absolute"
    ),
    "unclosed [ in a glob": Case(
        config_text(source='include = ["[ab.jpg"]\n'), "sources[0].include", "unclosed"
    ),
    # durations and counts out of range
    "negative stable_s": Case(
        config_text(source="stable_s = -1\n"), "sources[0].stable_s", "greater than or equal"
    ),
    "absurd quiet_s": Case(
        config_text(source="quiet_s = 1e9\n"), "sources[0].quiet_s", "less than or equal"
    ),
    "rescan_s too frequent": Case(
        config_text(source="rescan_s = 1\n"), "sources[0].rescan_s", "greater than or equal"
    ),
    "zero concurrency": Case(
        config_text(upload="concurrency = 0\n"), "upload.concurrency", "greater than or equal"
    ),
    # templates
    "unknown dataset placeholder": Case(
        config_text(source='dataset = "{flight}-{folder}"\n'),
        "sources[0].dataset",
        "unknown placeholder {flight}",
    ),
    "unknown command placeholder": Case(
        config_text(target='process_command = ["/usr/bin/proc", "{dir}"]\n'),
        "targets.archive.process_command",
        "unknown placeholder {dir}",
    ),
    "empty process_command": Case(
        config_text(target="process_command = []\n"),
        "targets.archive.process_command",
        "must name a program",
    ),
    # folders that overlap: what is written or watched comes back, or is taken twice
    "archive inside a watched source": Case(
        None,
        "targets.archive.path",
        "is inside the watched sources[0].path",
        make=lambda f: _layout(f, sources=["inbox"], target="inbox/archive"),
    ),
    "archive is the watched source": Case(
        None,
        "targets.archive.path",
        "is inside the watched sources[0].path",
        make=lambda f: _layout(f, sources=["inbox"], target="inbox"),
    ),
    "source inside the archive": Case(
        None,
        "sources[0].path",
        "is inside targets.archive.path",
        make=lambda f: _layout(f, sources=["archive/inbox"]),
    ),
    "archive inside a card mount glob": Case(
        None,
        "targets.archive.path",
        "is inside the watched sources[0].path",
        make=lambda f: _layout(f, sources=["cards/*"], target="cards/usb0/archive"),
    ),
    "spool inside a watched source": Case(
        None,
        "spool.dir",
        "is inside the watched sources[0].path",
        make=lambda f: _layout(f, sources=["inbox"], extra=f'[spool]\ndir = "{f}/inbox/spool"\n'),
    ),
    "the same source twice": Case(
        None,
        "sources[1].path",
        "is already watched by sources[0].path",
        make=lambda f: _layout(f, sources=["inbox", "inbox/"]),
    ),
    "the same source through a symlink": Case(
        None, "sources[1].path", "already watched", make=_symlinked_source_twice
    ),
    "a source inside another": Case(
        None,
        "sources[1].path",
        "is inside sources[0].path",
        make=lambda f: _layout(f, sources=["inbox", "inbox/drone-2"]),
    ),
    "a source around another": Case(
        None,
        "sources[1].path",
        "is around sources[0].path",
        make=lambda f: _layout(f, sources=["inbox/drone-2", "inbox"]),
    ),
    "a folder source inside a card glob": Case(
        None,
        "sources[1].path",
        "is inside sources[0].path",
        make=lambda f: _layout(f, sources=["cards/*", "cards/usb0/DCIM"]),
    ),
    "two card globs that match the same mounts": Case(
        None,
        "sources[1].path",
        "is inside sources[0].path",
        make=lambda f: _layout(f, sources=["cards/usb*", "cards/*/DCIM"]),
    ),
    # paths and programs the daemon would trip on later
    "archive path is a regular file": Case(
        None, "targets.archive.path", "is a regular file, not a folder", make=_target_is_a_file
    ),
    "archive path under a regular file": Case(
        None, "targets.archive.path", "a part of it is a regular file", make=_target_under_a_file
    ),
    "process_command program missing": Case(
        None,
        "targets.archive.process_command",
        "does not exist",
        make=lambda f: _command(f, str(f / "bin" / "process")),
    ),
    "process_command program not executable": Case(
        None,
        "targets.archive.process_command",
        "cannot be executed",
        make=lambda f: _command(f, "process.sh", 0o644),
    ),
    "process_command program is a folder": Case(
        None,
        "targets.archive.process_command",
        "is a folder, not a program",
        make=lambda f: _command(f, str(f)),
    ),
    "process_command bare name not on PATH": Case(
        None,
        "targets.archive.process_command",
        "'no-such-dronesync-program' is not an executable program on PATH",
        make=lambda f: _command(f, "no-such-dronesync-program"),
    ),
    "notifications command missing": Case(
        config_text(top='[notifications]\ncommand = ["/nonexistent/notify-pilot"]\n'),
        "notifications.command",
        "does not exist",
    ),
    # the file and the machine
    "state_dir under a regular file": Case(
        None, "state_dir", "cannot be written", make=_state_under_a_file
    ),
    "file not found": Case(None, None, "file not found", make=_missing),
    "file is a folder": Case(None, None, "is a folder", make=_directory),
    "file is not UTF-8": Case(None, None, "not UTF-8", make=_not_utf8),
    "file under a regular file": Case(None, None, "cannot be read", make=_config_under_a_file),
    "file is a symlink loop": Case(None, None, "cannot be read", make=_symlink_loop),
}

# More of the same kinds, read in-process by load_config (what the CLI prints, minus its prefix).
MORE_CASES: dict[str, Case] = {
    "unclosed string": Case(
        config_text().replace('"/srv/inbox"', '"/srv/inbox'), None, "TOML syntax error"
    ),
    "include is not a list": Case(
        config_text(source='include = "*.jpg"\n'), "sources[0].include", "valid list"
    ),
    "auto_process is not a bool": Case(
        config_text(source='auto_process = "maybe"\n'), "sources[0].auto_process", "boolean"
    ),
    "key given twice": Case(
        config_text(upload="concurrency = 2\nconcurrency = 3\n"), None, "TOML syntax error"
    ),
    "upload is not a table": Case(
        config_text().replace("[upload]\n", "upload = 3\n"), "upload", "dictionary"
    ),
    "state_dir is a number": Case(
        config_text().replace(f'"{STATE}"', "5"), "state_dir", "not a valid path"
    ),
    "empty state_dir": Case(config_text().replace(STATE, ""), "state_dir", "empty path"),
    "log_level not a level": Case(config_text(top='log_level = "loud"\n'), "log_level", "debug"),
    "layout not a layout": Case(
        config_text(source='layout = "flat"\n'), "sources[0].layout", "subfolders"
    ),
    "target without path": Case(
        config_text(tail='[targets.b]\ntype = "directory"\n'), "targets.b.path", "required"
    ),
    "empty target path": Case(
        config_text().replace('"/srv/archive"', '""'), "targets.archive.path", "empty path"
    ),
    "source without target": Case(
        config_text().replace('target = "archive"\n', ""), "sources[0].target", "required"
    ),
    "empty source path": Case(
        config_text().replace('"/srv/inbox"', '" "'), "sources[0].path", "empty path"
    ),
    "stable_s not a number": Case(
        config_text(source="stable_s = nan\n"), "sources[0].stable_s", "less than or equal"
    ),
    "poll_s too fast": Case(config_text(source="poll_s = 0.01\n"), "sources[0].poll_s", "0.5"),
    "absurd concurrency": Case(
        config_text(upload="concurrency = 5000\n"), "upload.concurrency", "less than or equal"
    ),
    "negative backoff": Case(
        config_text(upload="backoff_initial_s = -1\n"), "upload.backoff_initial_s", "greater"
    ),
    "bandwidth limit below 1 KiB/s": Case(
        config_text(upload="bandwidth_limit = 10\n"), "upload.bandwidth_limit", "1024"
    ),
    "process_timeout_s infinite": Case(
        config_text(target="process_timeout_s = inf\n"),
        "targets.archive.process_timeout_s",
        "less than or equal",
    ),
    "unbalanced dataset brace": Case(
        config_text(source='dataset = "{folder"\n'), "sources[0].dataset", "literal brace"
    ),
    "attribute in a placeholder": Case(
        config_text(source='dataset = "{folder.upper}"\n'),
        "sources[0].dataset",
        "unknown placeholder {folder.upper}",
    ),
    "blank program in process_command": Case(
        config_text(target='process_command = [" ", "{dataset}"]\n'),
        "targets.archive.process_command",
        "must name a program",
    ),
    "exclude is not a list of text": Case(
        config_text(source="exclude = [1]\n"), "sources[0].exclude[0]", "valid string"
    ),
}


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Run the CLI on every case at once (each is its own process; this only saves time)."""
    paths: dict[str, Path] = {}
    for index, (name, case) in enumerate(CLI_CASES.items()):
        folder = tmp_path_factory.mktemp(f"case{index}")
        if case.make is not None:
            paths[name] = case.make(folder)
        else:
            assert case.text is not None
            paths[name] = _write(folder, case.text)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1) * 2) as pool:
        results = dict(zip(paths, pool.map(check, paths.values()), strict=True))
    return {name: (paths[name], results[name]) for name in paths}


def test_the_cli_corpus_is_large_enough() -> None:
    assert len(CLI_CASES) >= 25


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_a_broken_file_gives_exit_78_and_one_line_naming_file_and_key(
    name: str, outcomes: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]
) -> None:
    case = CLI_CASES[name]
    path, result = outcomes[name]
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "ok (" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == case.lines, lines
    prefix = f"dronesync: {path}: "
    assert all(line.startswith(prefix) for line in lines), lines
    if case.key is not None:
        prefix += f"{case.key}: "
    assert any(line.startswith(prefix) and case.message in line for line in lines), lines


@pytest.mark.parametrize("name", list(MORE_CASES))
def test_load_config_names_file_and_key_for_more_broken_files(name: str, tmp_path: Path) -> None:
    case = MORE_CASES[name]
    assert case.text is not None
    path = _write(tmp_path, case.text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert len(problems) == case.lines, problems
    assert all(p.startswith(f"{path}: ") and "\n" not in p for p in problems), problems
    prefix = f"{path}: {case.key}: " if case.key is not None else f"{path}: "
    assert any(p.startswith(prefix) and case.message in p for p in problems), problems


def test_three_problems_are_reported_together(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        config_text(
            upload="concurrency = 0\n",
            target='url = "https://x"\n',
            source="quiet_s = -5\n",
        ).replace('target = "archive"', 'target = "nas"'),
    )
    result = check(path)
    assert result.returncode == 78
    lines = result.stderr.splitlines()
    keys = sorted(line.removeprefix(f"dronesync: {path}: ").split(":")[0] for line in lines)
    assert keys == [
        "sources[0].quiet_s",
        "sources[0].target",
        "targets.archive.url",
        "upload.concurrency",
    ]


def test_a_valid_file_passes_and_notes_folders_that_do_not_exist_yet(tmp_path: Path) -> None:
    path = _write(tmp_path, config_text())
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"{path}: ok (1 sources, 1 targets)" in result.stdout
    assert "sources[0].path: /srv/inbox does not exist yet" in result.stdout
    assert (tmp_path / "state").is_dir()  # checked by writing into it


def test_relative_paths_are_relative_to_the_config_files_folder(tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    path = conf / "dronesync.toml"
    path.write_text(
        'state_dir = "../state"\n'
        '[targets.a]\ntype = "directory"\npath = "archive"\n'
        'process_command = ["./bin/proc", "{dataset_dir}", "notes.txt"]\n'
        '[targets.b]\ntype = "directory"\npath = "/abs/b"\n'
        'process_command = ["process-dataset"]\n'
        '[[sources]]\npath = "inbox/cards"\ntarget = "a"\n'
        '[[sources]]\npath = "/abs/inbox"\ntarget = "b"\n',
        encoding="utf-8",
    )
    settings = load_config(path)
    assert settings.state_dir == tmp_path / "state"
    a, b = settings.targets["a"], settings.targets["b"]
    assert isinstance(a, DirectoryTargetConfig)
    assert isinstance(b, DirectoryTargetConfig)
    assert a.path == conf / "archive"
    # a program named with a folder is found next to the file; arguments are left alone
    assert a.process_command == [
        str(conf / "bin" / "proc"),
        "{dataset_dir}",
        "notes.txt",
    ]
    assert b.path == Path("/abs/b")
    # a bare program name is looked up on PATH as a shell would
    assert b.process_command == ["process-dataset"]
    assert [s.path for s in settings.sources] == [conf / "inbox" / "cards", Path("/abs/inbox")]


def test_the_environment_overrides_one_key_and_keeps_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, config_text(upload="concurrency = 4\nattempts = 5\n"))
    assert load_config(path).upload.concurrency == 4
    monkeypatch.setenv("DRONESYNC_UPLOAD__CONCURRENCY", "2")
    settings = load_config(path)
    assert settings.upload.concurrency == 2
    assert settings.upload.attempts == 5
    assert settings.sources[0].target == "archive"


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("DRONESYNC_UPLOAD__CONCURRENCY", "abc", "upload.concurrency"),
        ("DRONESYNC_UPLOAD__CONCURRENCY", "0", "upload.concurrency"),
        # a list cannot be indexed from the environment: the variable replaces it
        ("dronesync_sources__0__quiet_s", "5", "sources"),
        ("DRONESYNC_UPLOAD", "{not json", "upload"),
    ],
)
def test_a_bad_environment_value_names_the_variable_not_the_file(
    tmp_path: Path, variable: str, value: str, key: str
) -> None:
    path = _write(tmp_path, config_text(upload="concurrency = 4\n"))
    bad = check(path, env={**os.environ, variable: value})
    assert bad.returncode == 78
    assert "Traceback" not in bad.stderr
    lines = bad.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"dronesync: environment variable {variable}: {key}: "), lines
    assert lines[0].endswith("fix or unset the variable")
    assert str(path) not in lines[0]


def test_a_file_error_still_names_the_file_when_the_environment_sets_another_key(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, config_text(upload="concurrency = 0\n"))
    bad = check(path, env={**os.environ, "DRONESYNC_UPLOAD__ATTEMPTS": "3"})
    assert bad.returncode == 78
    assert bad.stderr.startswith(f"dronesync: {path}: upload.concurrency: ")


@pytest.mark.parametrize(
    ("sources", "target"),
    [
        (["inbox", "inbox2"], "archive"),  # a shared prefix of the text is not a parent
        (["inbox"], "inbox-archive"),
        (["cards/a*", "cards/b*"], "archive"),  # globs that cannot match the same folder
        (["fields/*-north", "fields/*-south"], "archive"),  # nor by what they end with
        (["cards/*"], "archive"),
        (["cards/usb*/DCIM", "cards/backup"], "cards-archive"),
    ],
)
def test_folders_side_by_side_are_not_taken_for_overlapping(
    tmp_path: Path, sources: list[str], target: str
) -> None:
    settings = load_config(_layout(tmp_path, sources=sources, target=target))
    assert len(settings.sources) == len(sources)


def test_a_program_found_on_path_or_named_by_a_placeholder_passes(tmp_path: Path) -> None:
    path = _layout(
        tmp_path,
        sources=["inbox"],
        extra='process_command = ["sh", "-c", "true"]\n'
        '[targets.other]\ntype = "directory"\npath = "other"\n'
        'process_command = ["{dataset_dir}/process.sh"]\n',
    )
    result = check(path)
    assert result.returncode == 0, result.stderr


def _without_dac_override(argv: list[str]) -> list[str]:
    """``argv`` run without the capability that lets root write any folder: as another user."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]


def test_a_state_dir_this_user_cannot_write_warns_in_check_and_fails_the_daemon(
    tmp_path: Path,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = _write(tmp_path, config_text().replace(STATE, str(locked / "state")))
    cli = [sys.executable, "-m", "daemon"]

    checked = subprocess.run(
        _without_dac_override([*cli, "config", "check", "--config", str(path)]),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.startswith(
        f"dronesync: warning: {path}: state_dir: {locked / 'state'} cannot be written by this"
        " user (Permission denied)"
    )
    assert f"{path}: ok (1 sources, 1 targets)" in checked.stdout

    run = subprocess.run(
        _without_dac_override([*cli, "run", "--config", str(path)]),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 78
    assert "Traceback" not in run.stderr
    assert f"dronesync: {path}: state_dir: " in run.stderr
    assert not (locked / "state").exists()


def test_load_config_lists_every_problem_in_the_error(tmp_path: Path) -> None:
    path = _write(tmp_path, config_text(source="stable_s = -1\nrescan_s = 1\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.split(": ")[1] for p in caught.value.problems] == [
        "sources[0].stable_s",
        "sources[0].rescan_s",
    ]
    assert all(p.startswith(f"{path}: ") for p in caught.value.problems)


def test_a_secret_this_user_cannot_read_warns_in_check(tmp_path: Path) -> None:
    path = _odm(tmp_path, "s3cret", 0o200)  # the owner's, and not readable: another user's
    checked = subprocess.run(
        _without_dac_override(
            [sys.executable, "-m", "daemon", "config", "check", "--config", str(path)]
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == (
        f"dronesync: warning: {path}: targets.odm.token_file: {tmp_path / 'node.token'}"
        " cannot be read by this user; check its owner and mode\n"
    )
    assert f"{path}: ok (1 sources, 2 targets)" in checked.stdout
