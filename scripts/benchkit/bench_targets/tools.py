"""The local servers and the reference tools (curl, xargs, rclone), each in a process of its own."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from benchkit.env import ROOT, child_env

SERVER_START_S = 60.0


class Placement(Protocol):
    """Where a server runs and how the client reaches it (scripts/bench-link: across a link)."""

    host: str

    def prefix(self) -> list[str]:
        """What runs the server's command there."""
        ...

    def port(self) -> int:
        """A port free there."""
        ...

    def expose(self, url: str) -> str:
        """The URL the client uses to reach the server's ``url``."""
        ...


def listen_args(place: Placement | None) -> list[str]:
    """``--host`` and ``--port`` of a local server: any free port on 127.0.0.1, or there."""
    if place is None:
        return ["--port", "0"]
    return ["--host", place.host, "--port", str(place.port())]


class Server:
    """A local server in a process of its own (no GIL shared with the client measured).

    ``module``: run with ``python -m``, or a script's path (``.py``) run as it is.
    """

    def __init__(
        self, module: str, args: list[str], log: Path, ready: str, prefix: Sequence[str] = ()
    ) -> None:
        self.log = log
        self._log_fh = log.open("wb")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *([] if module.endswith(".py") else ["-m"]), module, *args],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=self._log_fh,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        # A server that hangs before it is ready is killed, which ends the read below.
        timer = threading.Timer(SERVER_START_S, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if ready in line:
                    break
        finally:
            timer.cancel()
        if not self.lines or ready not in self.lines[-1]:
            self.close()
            raise SystemExit(f"{module} did not start; see {log}")
        # Nothing reads its stdout from here on: the servers print only at start.

    def close(self) -> None:
        """SIGTERM, and a kill if the server is not gone within 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_fh.close()


def run_tool(
    argv: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None
) -> str:
    """Run a reference tool, giving its output; a failure stops the benchmark with it."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    return done.stdout


def curl_batches(work: Path, entries: list[list[str]], batch: int, name: str) -> list[Path]:
    """Config files of ``batch`` curl transfers each; one curl process reuses its connection.

    ``entries`` holds, per file, the config lines of its transfer.
    """
    folder = work / "curl" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    configs = []
    for start in range(0, len(entries), batch):
        lines: list[str] = []
        for entry in entries[start : start + batch]:
            lines += [*entry, 'output = "/dev/null"', "silent", "show-error", "fail", "next"]
        path = folder / f"batch-{start:06d}.cfg"
        path.write_text("\n".join(lines[:-1]) + "\n")
        configs.append(path)
    return configs


def xargs_curl(curl: str, configs: list[Path], concurrency: int) -> None:
    """`xargs -P N curl -K BATCH`: N curl processes at a time, as a shell user would run."""
    xargs = shutil.which("xargs") or "xargs"
    stdin = "\n".join(str(c) for c in configs) + "\n"
    run_tool([xargs, "-P", str(concurrency), "-n", "1", curl, "-K"], stdin=stdin)


def quote(value: str) -> str:
    """A string quoted for a curl config file."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tool_version(name: str, *args: str) -> str:
    """The first two words of what the tool says its version is (``curl 7.88.1``)."""
    path = shutil.which(name)
    if path is None:
        return f"no {name}"
    out = subprocess.run([path, *args], capture_output=True, text=True, check=False).stdout
    return " ".join(out.split()[:2]) or f"{name} ?"


def pyodm_missing() -> str | None:
    """Why pyodm's rows are skipped, or None when it is installed."""
    if importlib.util.find_spec("pyodm") is None:
        return "pyodm not installed (pip install pyodm)"
    return None
