"""The unit file: systemd itself checks it, and its hardening stays at 2.0 or better."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dronesync.service"
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _installed_copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists: point it at this environment's dronesync.
    program = Path(sys.executable).parent / "dronesync"
    text = UNIT.read_text().replace("/opt/dronesync/venv/bin/dronesync", str(program))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_security_exposure_is_2_or_better(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_the_unit_knows_the_exit_codes_and_reload() -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "RestartPreventExitStatus=78" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "StateDirectory=dronesync" in text


def _settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_lets_the_daemon_listen_for_its_status_page() -> None:
    unit = _settings(UNIT.read_text())
    families = " ".join(unit.get("RestrictAddressFamilies", [])).split()
    assert {"AF_INET", "AF_INET6"} <= set(families), families
    assert unit.get("PrivateNetwork", ["no"])[-1] in ("no", "false")
    deny = " ".join(unit.get("IPAddressDeny", [])).split()
    allow = " ".join(unit.get("IPAddressAllow", [])).split()
    if "any" in deny:
        assert "localhost" in allow or "127.0.0.0/8" in allow, allow
    assert not unit.get("SocketBindDeny"), "the page binds [web] listen"
