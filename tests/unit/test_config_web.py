"""The ``[web]`` table: listen addresses, and a password wherever the LAN can reach the page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import WebSettings, load_config, runtime_findings
from daemon.config.model import parse_listen
from daemon.errors import ConfigError


def _config(tmp_path: Path, web: str) -> Path:
    path = tmp_path / "dronesync.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f"[web]\n{web}\n"
        f'[targets.archive]\ntype = "directory"\npath = "{tmp_path / "archive"}"\n'
        f'[[sources]]\npath = "{tmp_path / "inbox"}"\ntarget = "archive"\n',
        encoding="utf-8",
    )
    return path


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("listen", "address", "loopback"),
    [
        ("127.0.0.1:8710", ("127.0.0.1", 8710), True),
        ("[::1]:8710", ("::1", 8710), True),
        ("localhost:9000", ("localhost", 9000), True),
        ("0.0.0.0:8710", ("0.0.0.0", 8710), False),
        ("192.168.1.20:80", ("192.168.1.20", 80), False),
        ("", None, True),
    ],
)
def test_listen_addresses(listen: str, address: tuple[str, int] | None, loopback: bool) -> None:
    web = WebSettings(listen=listen)
    assert web.address == address
    assert web.on_loopback is loopback


@pytest.mark.parametrize("listen", ["8710", "box.lan:8710", "127.0.0.1:99999", "[nope]:1", ":x"])
def test_bad_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ValueError, match=r"port|address|HOST:PORT"):
        parse_listen(listen)


def test_the_default_is_loopback_on_port_8710(tmp_path: Path) -> None:
    settings = load_config(_config(tmp_path, ""))
    assert settings.web.listen == "127.0.0.1:8710"
    assert runtime_findings(tmp_path / "dronesync.toml", settings) == ([], [])


def test_the_lan_without_a_password_is_a_configuration_error(tmp_path: Path) -> None:
    path = _config(tmp_path, 'listen = "0.0.0.0:8710"')
    result = _check(path)
    assert result.returncode == 78, result.stderr
    assert f"{path}: web.listen: 0.0.0.0:8710 is reachable from other machines" in result.stderr
    assert "web.password_file" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_lan_with_a_private_password_file_is_fine(tmp_path: Path) -> None:
    secret = tmp_path / "web.password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o600)
    path = _config(tmp_path, 'listen = "0.0.0.0:8710"\npassword_file = "web.password"')
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert load_config(path).web.password_file == secret  # relative to the file's folder


def test_a_password_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "web.password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    result = _check(_config(tmp_path, f'listen = "0.0.0.0:8710"\npassword_file = "{secret}"'))
    assert result.returncode == 78
    assert "web.password_file" in result.stderr
    assert "chmod 600" in result.stderr


def test_a_credential_without_its_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = _config(tmp_path, 'password_credential = "dronesync-web"')
    problems, _ = runtime_findings(path, load_config(path))
    assert any("web.password_credential" in line for line in problems), problems


def test_an_unknown_key_names_the_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(_config(tmp_path, "port = 8710"))
    assert any("web.port: unknown key" in line for line in error.value.problems)
