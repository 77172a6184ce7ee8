"""Structured logs: one event per file outcome, to the journal under systemd.

Under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set, and journald's socket there) each
event goes to the journal with its fields as journal fields (``DATASET=``, ``FILE=``,
``SHA256=`` ...), so ``journalctl -u dronesync DATASET=mission-1`` finds them; the message
stays readable on its own. Elsewhere: a console renderer on a terminal, JSON lines otherwise.
The journal's native protocol (one datagram of fields) is spoken directly: it is a stable
interface, and unlike ``journal.send()`` a missing journald is noticed rather than silent.
The ``httpx`` logger stays at WARNING so request lines (which may carry URLs with tokens)
never reach the log.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_FIELD_SAFE = re.compile(r"[^A-Z0-9_]")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def journal_fields(event_dict: MutableMapping[str, Any]) -> dict[str, str]:
    """The journal fields of one event: MESSAGE, PRIORITY, and each key in upper case."""
    event = dict(event_dict)
    message = str(event.pop("event", ""))
    level = str(event.pop("level", "info"))
    event.pop("timestamp", None)  # the journal stamps entries itself
    fields = {
        "MESSAGE": " ".join([message, *(f"{k}={v}" for k, v in event.items())]),
        "PRIORITY": str(_PRIORITY.get(level, 6)),
        "SYSLOG_IDENTIFIER": "dronesync",
    }
    for key, value in event.items():
        name = _FIELD_SAFE.sub("_", key.upper()).lstrip("_") or "FIELD"
        fields.setdefault(name, str(value))
    return fields


def _encode(fields: dict[str, str]) -> bytes:
    """The native protocol: ``KEY=value`` lines; a value with a newline is length-prefixed."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """The last processor under systemd: sends the event to journald, falls back to stderr."""

    def __init__(self, path: Path = JOURNAL_SOCKET) -> None:
        self._path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._fallback = structlog.processors.JSONRenderer()

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        """Send ``event_dict``; only when journald cannot take it, render it for stderr."""
        try:
            self._sock.sendto(_encode(journal_fields(event_dict)), self._path)
        except OSError:
            return str(self._fallback(logger, method, event_dict))  # journald went away
        raise structlog.DropEvent

    def close(self) -> None:
        """Close the socket (logging was configured again)."""
        self._sock.close()


_sender: list[JournalSender] = []  # the one in use, closed when logging is configured again


def under_journal(path: Path = JOURNAL_SOCKET) -> bool:
    """Whether this process runs under systemd with journald listening."""
    started_by_systemd = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    return started_by_systemd and path.exists()


def configure(
    level: str = "info",
    *,
    console: bool | None = None,
    journal: Path | None = None,
    final: bool = False,
) -> None:
    """Set up structlog for the process.

    ``journal``: send events to the journald socket at this path (default: journald's own
    socket when running under systemd). ``console`` defaults to "stderr is a terminal".
    ``final``: this configuration holds for the life of the process, so each module's logger
    is assembled once, on its first use, instead of on every call (the daemon logs a line per
    file; the assembly was a fifth of a line's cost: 24 µs a line, 20 µs cached).
    """
    if journal is None and under_journal():
        journal = JOURNAL_SOCKET
    if console is None:
        console = sys.stderr.isatty()
    while _sender:
        _sender.pop().close()
    renderer: structlog.typing.Processor
    if journal is not None:
        _sender.append(JournalSender(journal))
        renderer = _sender[0]
    elif console:
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=final,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
