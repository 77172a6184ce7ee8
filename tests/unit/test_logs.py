"""Logs under systemd: each event reaches journald as one entry with searchable fields."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon import logs


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A datagram socket where journald's would be: what the daemon sends, as journald gets it."""
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()
    structlog.reset_defaults()  # not bound to this test's captured stderr, closed after it


def _parse(datagram: bytes) -> dict[str, str]:
    """journald's native protocol, decoded."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:  # KEY\n<u64 length><value>\n
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8 : 8 + size].decode()
            rest = after[8 + size + 1 :]
    return fields


def test_an_event_becomes_a_journal_entry_with_its_fields(
    journald: tuple[Path, socket.socket],
) -> None:
    path, sock = journald
    logs.configure("info", journal=path)
    structlog.get_logger("t").warning(
        "file failed",
        dataset="mission-1",
        file="/cards/A/DJI 0001.JPG",
        attempt=3,
        error="HTTP 503\nretry later",
    )
    fields = _parse(sock.recv(65536))
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "dronesync"
    assert fields["DATASET"] == "mission-1"
    assert fields["FILE"] == "/cards/A/DJI 0001.JPG"
    assert fields["ATTEMPT"] == "3"
    assert fields["ERROR"] == "HTTP 503\nretry later"  # a newline survives, length-prefixed
    assert fields["MESSAGE"].startswith("file failed dataset=mission-1")


def test_debug_events_are_filtered_before_they_are_sent(
    journald: tuple[Path, socket.socket],
) -> None:
    path, sock = journald
    logs.configure("info", journal=path)
    structlog.get_logger("t").debug("noise")
    structlog.get_logger("t").info("signal")
    assert _parse(sock.recv(65536))["MESSAGE"] == "signal"


def test_without_journald_events_go_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", journal=tmp_path / "no-journald-here")
    structlog.get_logger("t").info("still seen", dataset="x")
    assert '"event": "still seen"' in capsys.readouterr().err
    structlog.reset_defaults()


def test_under_journal_needs_systemd_and_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    present = tmp_path / "socket"
    present.touch()
    assert not logs.under_journal(present)
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert logs.under_journal(present)
    assert not logs.under_journal(tmp_path / "absent")
