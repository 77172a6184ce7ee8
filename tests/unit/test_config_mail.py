"""`[notifications.email]`: what a broken table says, and how a good one is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_config, runtime_problems
from daemon.errors import ConfigError
from tests.unit.test_config import STATE, check, config_text

RELAY = 'host = "smtp.example.org"\nfrom = "box@example.org"\nto = ["pilot@example.org"]\n'


def _mail(lines: str = "", relay: str = RELAY) -> str:
    return config_text(tail=f"[notifications.email]\n{relay}{lines}")


def _write(folder: Path, text: str) -> Path:
    path = folder / "dronesync.toml"
    path.write_text(text.replace(STATE, str(folder / "state")), encoding="utf-8")
    return path


BROKEN: dict[str, tuple[str, str, str]] = {
    "no recipient": (
        _mail(relay=RELAY.replace('to = ["pilot@example.org"]\n', "")),
        "to",
        "required",
    ),
    "empty recipient list": (
        _mail(relay=RELAY.replace('["pilot@example.org"]', "[]")),
        "to",
        "at least 1",
    ),
    "recipient is not an address": (
        _mail(relay=RELAY.replace("pilot@example.org", "pilot at example")),
        "to",
        "is not an e-mail address",
    ),
    "sender with a display name": (
        _mail(relay=RELAY.replace('"box@example.org"', '"Box <box@example.org>"')),
        "from",
        "is not an e-mail address",
    ),
    "port written in the host": (
        _mail(relay=RELAY.replace("smtp.example.org", "smtp.example.org:587")),
        "host",
        "give the port in `port`",
    ),
    "unknown security": (_mail('security = "ssl"\n'), "security", "'starttls', 'tls' or 'none'"),
    "user without a password": (_mail('user = "box"\n'), "", "name password_file"),
    "password without a user": (_mail('password_file = "/etc/pw"\n'), "", "set user too"),
    "a password in clear to another machine": (
        _mail('user = "box"\npassword_file = "/etc/pw"\nsecurity = "none"\n'),
        "",
        'use "starttls" or "tls"',
    ),
    "digest hour past 23": (_mail("digest_hour = 24\n"), "digest_hour", "less than or equal"),
    "unknown key": (_mail("cc = []\n"), "cc", "unknown key"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_email_table_names_its_key(name: str, tmp_path: Path) -> None:
    text, key, message = BROKEN[name]
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    where = "notifications.email" + (f".{key}" if key else "")
    assert problem.startswith(f"{path}: {where}: "), problem
    assert message in problem, problem


def test_a_good_table_is_read_with_relative_paths_from_the_files_folder(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _mail(
            'security = "tls"\nuser = "box"\npassword_file = "smtp.password"\n'
            'ca_file = "relay-ca.pem"\ndigest = true\n'
        ),
    )
    email = load_config(path).notifications.email
    assert email is not None
    assert email.sender == "box@example.org"
    assert email.port_or_default == 465
    assert email.password_file == tmp_path / "smtp.password"
    assert email.ca_file == tmp_path / "relay-ca.pem"
    assert email.digest
    assert email.digest_hour == 18


def test_a_password_may_go_in_clear_to_a_relay_on_this_machine(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _mail(
            'user = "box"\npassword_file = "/etc/pw"\nsecurity = "none"\n',
            relay=RELAY.replace("smtp.example.org", "127.0.0.1"),
        ),
    )
    email = load_config(path).notifications.email
    assert email is not None
    assert email.port_or_default == 25


def test_check_refuses_a_password_file_every_user_can_read(tmp_path: Path) -> None:
    secret = tmp_path / "smtp.password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    path = _write(tmp_path, _mail(f'user = "box"\npassword_file = "{secret}"\n'))
    result = check(path)
    assert result.returncode == 78, result.stderr
    assert result.stderr.splitlines() == [
        f"dronesync: {path}: notifications.email.password_file: {secret} is readable by every"
        f" user; run `chmod 600 {secret}`"
    ]
    assert "hunter2" not in result.stderr


def test_a_missing_credential_and_an_unreadable_ca_file_are_problems(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _mail(f'user = "box"\npassword_credential = "smtp"\nca_file = "{tmp_path}/none.pem"\n'),
    )
    problems = runtime_problems(path, load_config(path))
    assert any(
        p.startswith(f"{path}: notifications.email.ca_file: ") and "cannot be read" in p
        for p in problems
    ), problems
    assert any(
        p.startswith(f"{path}: notifications.email.password_credential: ") for p in problems
    ), problems
