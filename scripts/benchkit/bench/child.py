"""The daemon in a child process, its JSON log lines read as they come."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit.env import ROOT, child_env
from benchkit.procfs import ProcFigures, proc_figures
from benchkit.project import DAEMON_MODULE

# Log events the harness waits for or reads fields from.
EVENTS = ("source online", "first scan done", "ready", "stopped", "card can be removed")


class BenchError(Exception):
    """The harness could not measure (the daemon died, a wait timed out): exit non-zero."""


def daemon_env() -> dict[str, str]:
    """The daemon's environment: JSON logs on stderr, no settings from the caller's."""
    env = child_env("DRONESYNC_", "JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Event:
    """A JSON log line of interest and when the harness read it (perf_counter)."""

    at: float
    fields: dict[str, Any]


class Daemon:
    """``dronesync run`` in a child process; its stderr read line by line as it comes.

    ``trace``: the syscalls strace records (the daemon then runs under strace, which writes
    them to ``log.strace``). ``uploaded_events``: also keep every "file uploaded" line.
    """

    def __init__(
        self, config: Path, log: Path, *, trace: str | None = None, uploaded_events: bool = False
    ) -> None:
        self.log_path = log
        self.strace_path = log.with_suffix(".strace")
        argv = daemon_argv = [sys.executable, "-m", DAEMON_MODULE, "run", "--config", str(config)]
        if trace is not None:
            strace = shutil.which("strace") or "strace"
            # --seccomp-bpf: only the traced calls stop the daemon; -y: the file of each fd.
            tracing = ["-f", "--seccomp-bpf", "-y", "-e", f"trace={trace}"]
            argv = [strace, *tracing, "-o", str(self.strace_path), *argv]
        self._watch = [*EVENTS, "file uploaded"] if uploaded_events else list(EVENTS)
        self.events: dict[str, list[Event]] = {}
        self.problems: list[str] = []  # warning and error lines
        self._cond = threading.Condition()
        self._log = log.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=daemon_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if trace is not None:
            self.pid = self._traced_pid(daemon_argv)

    def _traced_pid(self, argv: list[str]) -> int:
        """The daemon's pid: strace's child running ``argv`` (strace forks probes too)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        want = "\0".join(argv) + "\0"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for pid in children.read_text().split() if children.exists() else []:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/cmdline").read_text() == want:
                        return int(pid)
            self.check_alive()
            time.sleep(0.01)
        raise BenchError("strace did not start the daemon within 30 s")

    def _read(self) -> None:
        """Every stderr line to the log file; the lines of interest parsed, with their time."""
        assert self.proc.stderr is not None
        keys = [(f'"{name}"'.encode(), name) for name in self._watch]
        with self._log:
            for line in self.proc.stderr:
                at = time.perf_counter()
                self._log.write(line)
                problem = b'"level": "warning"' in line or b'"level": "error"' in line
                if not problem and not any(key in line for key, _ in keys):
                    continue
                try:
                    fields = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(fields, dict):
                    continue
                if problem and len(self.problems) < 20:
                    self.problems.append(line.decode("utf-8", "replace").strip())
                name = fields.get("event")
                if name in self._watch:
                    with self._cond:
                        self.events.setdefault(name, []).append(Event(at, fields))
                        self._cond.notify_all()

    def check_alive(self) -> None:
        """Raise :class:`BenchError` with the log's tail if the daemon has exited."""
        if self.proc.poll() is not None:
            self._reader.join(timeout=10)
            raise BenchError(f"the daemon exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the daemon's log."""
        with contextlib.suppress(ValueError):  # closed: the reader has ended
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_event(self, name: str, timeout: float, count: int = 1) -> Event:
        """The ``count``-th ``name`` event, waiting for it at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.events.get(name, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no {name!r} log line after {timeout:.0f} s:\n{self.tail()}")
                self._cond.wait(min(left, 0.1))
                if self.proc.poll() is not None and len(self.events.get(name, [])) < count:
                    self._reader.join(timeout=10)
                    if len(self.events.get(name, [])) < count:
                        raise BenchError(
                            f"the daemon exited ({self.proc.returncode}) before {name!r}:\n"
                            f"{self.tail()}"
                        )
            return self.events[name][count - 1]

    def event(self, name: str, count: int = 1) -> Event | None:
        """The ``count``-th ``name`` event if it came already."""
        with self._cond:
            events = self.events.get(name, [])
            return events[count - 1] if len(events) >= count else None

    def figures(self) -> ProcFigures:
        """What /proc says about the daemon and its hashing processes now."""
        self.check_alive()
        return proc_figures(self.pid)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait for the exit; the fields of the "stopped" line."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            raise BenchError(
                f"the daemon did not stop within 120 s of SIGTERM:\n{self.tail()}"
            ) from exc
        self._reader.join(timeout=30)
        if self.proc.returncode != 0:
            raise BenchError(f"the daemon exited {self.proc.returncode} on SIGTERM:\n{self.tail()}")
        stopped = self.events.get("stopped")
        if not stopped:
            raise BenchError(f"no 'stopped' log line:\n{self.tail()}")
        return stopped[-1].fields

    def kill(self) -> None:
        """On a harness error: end the daemon (and strace) without waiting for anything."""
        if self.proc.poll() is None:
            for pid in {self.pid, self.proc.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=10)
