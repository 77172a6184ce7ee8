"""The state_dir found without the settings model, against the model, case by case.

Each case is a real file (and environment) read both ways: ``state_dir_of`` must give the
model's state_dir or say it is unsure, ``checked_state_dir`` must give it only when the
daemon's record matches the file as it is now, and a file that cannot be read fails both ways
with the same lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.config import load_checked, load_config
from daemon.configfile import (
    CHECKED,
    checked_state_dir,
    read_config,
    remember,
    state_dir_of,
)
from daemon.errors import ConfigError

TMP = "@TMP@"  # replaced by the test's folder


def config_text(top: str = "", upload: str = "") -> str:
    """A valid file but for what ``top`` and ``upload`` add."""
    return (
        f"{top}\n[upload]\n{upload}\n"
        '[targets.archive]\ntype = "directory"\npath = "/srv/archive"\n'
        '[[sources]]\npath = "/srv/inbox"\ntarget = "archive"\n'
    )


@dataclass(frozen=True)
class Case:
    """A file in ``folder`` (under the test's folder), the environment, what to expect."""

    top: str = ""
    env: dict[str, str] = field(default_factory=dict)
    folder: str = "etc"
    upload: str = ""
    unsure: bool = False  # the light reading leaves it to the model
    valid: bool = True


CASES = {
    "default": Case(),
    "STATE_DIRECTORY": Case(env={"STATE_DIRECTORY": f"{TMP}/systemd"}),
    "STATE_DIRECTORY with several": Case(env={"STATE_DIRECTORY": f"{TMP}/one:{TMP}/two"}),
    "STATE_DIRECTORY empty": Case(env={"STATE_DIRECTORY": ""}),
    "STATE_DIRECTORY relative": Case(env={"STATE_DIRECTORY": "rel"}),
    "explicit": Case(top=f'state_dir = "{TMP}/state"'),
    "explicit, trailing slash": Case(top=f'state_dir = "{TMP}/state/"'),
    "explicit, dots inside": Case(top=f'state_dir = "{TMP}/a/../state/./x"'),
    "relative": Case(top='state_dir = "state"'),
    "relative, up": Case(top='state_dir = "../var/state"', folder="etc/dronesync"),
    "relative, spaces": Case(top='state_dir = " my state "'),
    "tilde, taken as a name": Case(top='state_dir = "~/state"'),
    "environment": Case(env={"DRONESYNC_STATE_DIR": f"{TMP}/env"}),
    "environment over the file": Case(
        top=f'state_dir = "{TMP}/file"', env={"DRONESYNC_STATE_DIR": f"{TMP}/env"}
    ),
    "environment, relative": Case(env={"DRONESYNC_STATE_DIR": "from-env"}),
    "environment, lower case": Case(env={"dronesync_state_dir": f"{TMP}/lower"}),
    "environment, mixed case": Case(env={"Dronesync_State_Dir": f"{TMP}/mixed"}),
    "environment, another key": Case(
        top=f'state_dir = "{TMP}/state"', env={"DRONESYNC_LOG_LEVEL": "debug"}
    ),
    "environment, a table": Case(env={"DRONESYNC_UPLOAD__CONCURRENCY": "2"}),
    "DRONESYNC_CONFIG is not a key": Case(env={"DRONESYNC_CONFIG": "/nowhere.toml"}),
    "environment, two spellings": Case(
        env={"DRONESYNC_STATE_DIR": f"{TMP}/a", "dronesync_state_dir": f"{TMP}/b"}, unsure=True
    ),
    "environment, below the key": Case(env={"DRONESYNC_STATE_DIR__X": f"{TMP}/x"}, unsure=True),
    "upper-case key": Case(top=f'STATE_DIR = "{TMP}/upper"', unsure=True),
    "empty": Case(top='state_dir = ""', unsure=True, valid=False),
    "blank": Case(top='state_dir = "  "', unsure=True, valid=False),
    "a number": Case(top="state_dir = 5", unsure=True, valid=False),
    "a table": Case(top=f'state_dir = {{ path = "{TMP}/x" }}', unsure=True, valid=False),
    "environment, blank": Case(env={"DRONESYNC_STATE_DIR": " "}, unsure=True, valid=False),
    "environment, empty": Case(env={"DRONESYNC_STATE_DIR": ""}, unsure=True, valid=False),
    "invalid elsewhere": Case(
        top=f'state_dir = "{TMP}/state"', upload="concurrency = 0", valid=False
    ),
    "invalid in the environment": Case(
        top=f'state_dir = "{TMP}/state"', env={"DRONESYNC_LOG_LEVEL": "loud"}, valid=False
    ),
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DRONESYNC_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)


def _setup(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.replace(TMP, str(tmp_path)))
    path = tmp_path / case.folder / "dronesync.toml"
    path.parent.mkdir(parents=True)
    path.write_text(config_text(case.top, case.upload).replace(TMP, str(tmp_path)), "utf-8")
    return path


def _model(path: Path) -> tuple[Path, str] | list[str]:
    try:
        settings, checked = load_checked(path)
    except ConfigError as exc:
        return exc.problems
    return settings.state_dir, checked


@pytest.mark.parametrize("name", CASES)
def test_the_light_reading_gives_the_models_state_dir(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    path = _setup(case, tmp_path, monkeypatch)
    model = _model(path)
    light = state_dir_of(path, read_config(path)[1])
    assert isinstance(model, tuple) is case.valid, model
    if case.unsure:
        assert light is None
    elif isinstance(model, tuple):
        assert light == model[0]


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.valid])
def test_the_record_gives_the_state_dir_of_the_file_the_model_accepted(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    if "STATE_DIRECTORY" not in case.env:
        monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "default"))  # not the host's
    path = _setup(case, tmp_path, monkeypatch)
    model = _model(path)
    assert isinstance(model, tuple)
    state_dir, checked = model
    assert checked_state_dir(path) is None  # nothing recorded yet: the model decides
    state_dir.mkdir(parents=True, exist_ok=True)
    remember(state_dir, checked)
    expected = None if case.unsure else state_dir
    assert checked_state_dir(path) == expected


def test_a_record_holds_for_that_file_and_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _setup(CASES["explicit"], tmp_path, monkeypatch)
    settings, checked = load_checked(path)
    settings.state_dir.mkdir()
    remember(settings.state_dir, checked)
    assert checked_state_dir(path) == settings.state_dir

    good = path.read_text("utf-8")
    path.write_text(good.replace("[upload]\n", "[upload]\nconcurrency = 0\n"), "utf-8")
    assert checked_state_dir(path) is None
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems == [f"{path}: upload.concurrency: {_ge_one()} (got 0)"]

    path.write_text(good, "utf-8")
    assert checked_state_dir(path) == settings.state_dir
    monkeypatch.setenv("DRONESYNC_LOG_LEVEL", "loud")
    assert checked_state_dir(path) is None
    monkeypatch.delenv("DRONESYNC_LOG_LEVEL")

    (settings.state_dir / CHECKED).write_bytes(b"\xff")
    assert checked_state_dir(path) is None


def _ge_one() -> str:
    return "Input should be greater than or equal to 1"


def test_a_record_cannot_be_left_where_the_user_may_not_write(tmp_path: Path) -> None:
    missing = tmp_path / "not-made"
    remember(missing, "0" * 64)  # a shortcut lost, not an error
    assert not missing.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("syntax", b"state_dir = \n"),
        ("not UTF-8", b'state_dir = "\xff"\n'),
        ("missing", None),
        ("a folder", b""),
    ],
)
def test_a_file_that_cannot_be_read_fails_alike(
    name: str, content: bytes | None, tmp_path: Path
) -> None:
    path = tmp_path / "dronesync.toml"
    if name == "a folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as light:
        checked_state_dir(path)
    with pytest.raises(ConfigError) as model:
        load_config(path)
    assert light.value.problems == model.value.problems
    assert len(light.value.problems) == 1
