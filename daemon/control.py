"""Operator requests (retry, process, cancel) travel to the daemon as files in the state folder.

A request is written atomically (temporary name, fsync, rename) into ``<state_dir>/requests``;
the running daemon picks it up within half a second, applies it and deletes it. A request made
while the daemon is stopped, or stopping, stays on disk and is applied at the next start, so
none is ever lost. The daemon holds ``<state_dir>/daemon.lock`` while it runs, which tells the
CLI whether anyone is there to apply it now.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Action = Literal["retry", "process", "cancel"]
REQUESTS = "requests"
LOCK = "daemon.lock"


@dataclass(frozen=True, slots=True)
class Request:
    """One operator request; ``dataset`` None means every dataset (``retry --all``)."""

    action: Action
    dataset: str | None
    path: Path

    @property
    def queued_at(self) -> float | None:
        """When it was made (its name starts with the time in nanoseconds), if known."""
        stamp = self.path.name.split("-", 1)[0]
        return int(stamp) / 1e9 if stamp.isdigit() else None


def submit(state_dir: Path, action: Action, dataset: str | None) -> Path:
    """Write a request for the daemon; returns the file that stands for it."""
    folder = state_dir / REQUESTS
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    tmp = folder / f".{name}.tmp"
    payload = json.dumps({"action": action, "dataset": dataset}).encode()
    with tmp.open("wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    final = folder / f"{name}.json"
    tmp.rename(final)
    return final


def pending(state_dir: Path) -> list[Request]:
    """Requests not applied yet, oldest first; unreadable ones are set aside."""
    requests = []
    for path, request in _read_all(state_dir):
        if request is None:
            path.rename(path.with_suffix(".bad"))
        else:
            requests.append(request)
    return requests


def queued(state_dir: Path) -> list[Request]:
    """Requests not applied yet, oldest first, for ``status``: reading only, changing nothing."""
    try:
        return [request for _, request in _read_all(state_dir) if request is not None]
    except PermissionError:
        return []  # the service's private folder: the journal would not open either


def _read_all(state_dir: Path) -> list[tuple[Path, Request | None]]:
    """Each request file with what it asks (None: unreadable)."""
    folder = state_dir / REQUESTS
    try:
        names = sorted(p for p in folder.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []
    found: list[tuple[Path, Request | None]] = []
    for path in names:
        try:
            data = json.loads(path.read_bytes())
            action = data["action"]
            if action not in ("retry", "process", "cancel"):
                raise ValueError(action)
            found.append((path, Request(action, data.get("dataset"), path)))
        except FileNotFoundError:
            continue  # applied meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            found.append((path, None))
    return found


def answer(request: Request, message: str) -> None:
    """Record what applying a request did, then forget the request."""
    result = request.path.with_suffix(".result")
    tmp = result.with_name(f".{result.name}.tmp")
    tmp.write_text(message, encoding="utf-8")
    tmp.replace(result)
    request.path.unlink(missing_ok=True)


def wait_answer(request_path: Path, timeout_s: float) -> str | None:
    """The daemon's answer to a request, if it comes within ``timeout_s``."""
    result = request_path.with_suffix(".result")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            message = result.read_text(encoding="utf-8")
        except FileNotFoundError:
            time.sleep(0.05)
            continue
        result.unlink(missing_ok=True)
        return message
    return None


class DaemonLock:
    """An exclusive lock on the state folder, held for the daemon's lifetime."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Let go of the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def daemon_running(state_dir: Path) -> bool:
    """Whether a daemon holds the lock on this state folder (read access is enough)."""
    try:
        fd = os.open(state_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
