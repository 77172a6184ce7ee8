"""The example configuration: printed by the CLI, committed as config/dronesync.toml, valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import IMAGE_PATTERNS, SourceConfig, UploadSettings, load_config
from daemon.config.example import example
from daemon.targets.directory import DirectoryTargetConfig
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.registry import TYPES

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "config" / "dronesync.toml"


def _as_local(text: str, tmp_path: Path) -> Path:
    """The example with its state_dir pointed at a temporary folder."""
    assert 'state_dir = "/var/lib/dronesync"\n' in text
    path = tmp_path / "dronesync.toml"
    path.write_text(text.replace("/var/lib/dronesync", str(tmp_path / "state")), encoding="utf-8")
    return path


def test_config_example_prints_the_committed_file() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "daemon", "config", "example"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert printed.stderr == ""
    assert printed.stdout == COMMITTED.read_text(encoding="utf-8")
    assert printed.stdout == example()


def test_the_example_loads_with_the_defaults_it_shows(tmp_path: Path) -> None:
    settings = load_config(_as_local(example(), tmp_path))
    assert settings.state_dir == tmp_path / "state"
    assert settings.upload == UploadSettings()
    archive = settings.targets["archive"]
    assert isinstance(archive, DirectoryTargetConfig)
    assert archive.path == Path("/srv/drone-archive")
    assert archive.process_command is None  # commented out: optional
    source = settings.sources[0]
    assert source == SourceConfig(path=Path("/srv/drone-inbox"), target="archive")
    assert source.include == IMAGE_PATTERNS


def test_every_commented_out_key_is_valid_once_uncommented(tmp_path: Path) -> None:
    optional = re.compile(
        r"^# ([a-z_]+ = .+|\[targets\.[a-z0-9]+\]|\[notifications\.email\])$", re.MULTILINE
    )
    text = example()
    assert len(optional.findall(text)) >= 3
    settings = load_config(_as_local(optional.sub(r"\1", text), tmp_path))
    assert settings.upload.bandwidth_limit == 10_000_000
    archive = settings.targets["archive"]
    assert isinstance(archive, DirectoryTargetConfig)
    assert archive.process_command == [
        "/usr/local/bin/process-dataset",
        "{dataset_dir}",
    ]
    assert settings.sources[0].poll_s == 10
    email = settings.notifications.email
    assert email is not None
    assert (email.host, email.sender, email.to) == (
        "smtp.example.org",
        "dronesync@example.org",
        ["pilot@example.org"],
    )
    odm = settings.targets["nodeodm"]
    assert isinstance(odm, NodeODMTargetConfig)
    assert odm.url == "http://odm.lan:3000"
    assert odm.token_file == Path("/etc/dronesync/nodeodm.token")
    # Every registered type is in the example, ready to uncomment.
    assert {target.type for target in settings.targets.values()} == set(TYPES)


def test_the_environment_override_named_in_the_header_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "DRONESYNC_UPLOAD__CONCURRENCY=2" in example()
    monkeypatch.setenv("DRONESYNC_UPLOAD__CONCURRENCY", "2")
    assert load_config(_as_local(example(), tmp_path)).upload.concurrency == 2


def test_the_local_config_used_by_scripts_run_is_valid() -> None:
    settings = load_config(ROOT / "config" / "local.toml")
    assert settings.state_dir == ROOT / "var" / "state"
    assert settings.sources[0].path == ROOT / "var" / "inbox"
    archive = settings.targets["archive"]
    assert isinstance(archive, DirectoryTargetConfig)
    command = archive.process_command
    assert command is not None
    assert Path(command[0]).resolve() == ROOT / "scripts" / "demo-process"
    assert Path(command[0]).is_file()


def test_the_box_config_installed_by_scripts_install_is_valid() -> None:
    settings = load_config(ROOT / "config" / "box.toml")
    source = settings.sources[0]
    assert str(source.path) == "/run/dronesync/cards/*"
    assert source.require_mount
    assert source.spool
    assert source.layout == "dcim"
    assert settings.spool.dir == Path("/var/lib/dronesync/spool")
    archive = settings.targets[source.target]
    assert isinstance(archive, DirectoryTargetConfig)
    assert archive.path == Path("/srv/drone-archive")
