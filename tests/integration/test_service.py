"""The daemon under a service manager: sd_notify messages on a real notify socket."""

from __future__ import annotations

import random
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Box, wait_until


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


def _drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.extend(sock.recv(4096).decode().splitlines())
        except BlockingIOError:
            return into


def test_ready_status_watchdog_reload_and_stopping(box: Box, notify_socket: socket.socket) -> None:
    (box.inbox / "m").mkdir()
    (box.inbox / "m" / "a.jpg").write_bytes(random.Random(1).randbytes(1000))
    messages: list[str] = []
    proc = box.start(env={"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "1000000"})
    wait_until(lambda: "READY=1" in _drain(notify_socket, messages), what="READY=1")
    wait_until(
        lambda: any(
            m.startswith("STATUS=") and "datasets" in m for m in _drain(notify_socket, messages)
        ),
        what="a STATUS= line",
    )
    wait_until(lambda: "WATCHDOG=1" in _drain(notify_socket, messages), what="watchdog pings")
    messages.clear()
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "RELOADING=1" in _drain(notify_socket, messages), what="RELOADING=1")
    wait_until(lambda: "READY=1" in _drain(notify_socket, messages), what="READY=1 again")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert "STOPPING=1" in _drain(notify_socket, messages)


def test_without_a_notify_socket_nothing_is_sent(box: Box) -> None:
    proc = box.start()
    assert box.stop(proc) == 0
    assert "Traceback" not in box.log()
