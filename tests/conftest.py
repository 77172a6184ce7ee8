"""Shared fixtures: a real daemon process on real folders, and waiting on conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from daemon.journal import Journal
from daemon.status import read_live, snapshot

if TYPE_CHECKING:
    from tests.fakes.s3store import S3Store

DEADLINE_S = 60.0


def wait_until(
    predicate: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last: {value!r}")
        time.sleep(0.05)


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` and set its times back: only its ctime tells it changed.

    Written again until the ctime has moved: a kernel without fine-grained timestamps moves
    it once a clock tick, and a file written twice within one tick looks unchanged.
    """
    info = path.stat()

    def rewritten() -> bool:
        path.write_bytes(data)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        return path.stat().st_ctime_ns != info.st_ctime_ns

    wait_until(rewritten, timeout=5, what=f"the ctime of {path} to move")


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


@dataclass
class Box:
    """An ingest box in a temporary folder: inbox, archive, state and a config file."""

    root: Path
    inbox: Path = field(init=False)
    archive: Path = field(init=False)
    state: Path = field(init=False)
    config: Path = field(init=False)
    process_log: Path = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inbox = self.root / "inbox"
        self.archive = self.root / "archive"
        self.state = self.root / "state"
        self.config = self.root / "dronesync.toml"
        self.process_log = self.root / "processed.log"
        self.inbox.mkdir()

    def write_config(
        self,
        *,
        upload: str = "",
        source: str = "",
        target: str = "",
        extra: str = "",
        source_target: str = "archive",
        source_path: str | None = None,
        web: str = 'listen = "127.0.0.1:0"',
    ) -> None:
        """A config with short timings; extra TOML lines go into each table.

        ``extra`` holds more tables (another target, ``[notifications]``); ``source_target``
        names the target the inbox feeds; ``source_path`` watches another folder or glob;
        ``web`` is the ``[web]`` table (by default a free port, so that boxes run side by side).
        """
        command = [
            sys.executable,
            "-c",
            "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')",
            str(self.process_log),
            "{dataset}",
        ]
        self.config.write_text(
            f'state_dir = "{self.state}"\nlog_level = "debug"\n'
            f"[upload]\nbackoff_initial_s = 0.1\nbackoff_max_s = 0.5\n{upload}\n"
            f"[web]\n{web}\n"
            f'[targets.archive]\ntype = "directory"\npath = "{self.archive}"\n'
            f"process_command = {toml_list(command)}\n{target}\n{extra}\n"
            f'[[sources]]\npath = "{source_path or self.inbox}"\ntarget = "{source_target}"\n'
            f"stable_s = 0.3\nquiet_s = 1.5\nrescan_s = 5\n{source}\n",
            encoding="utf-8",
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``dronesync ARGS --config ...`` as a user would."""
        result = subprocess.run(
            [sys.executable, "-m", "daemon", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"dronesync {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``dronesync run`` in the background (``env``: extra variables)."""
        (self.state / "live.json").unlink(missing_ok=True)
        with (self.root / "daemon.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.procs.append(proc)
        wait_until(
            lambda: (self.state / "live.json").exists() or proc.poll() is not None,
            what="the daemon to start",
        )
        assert proc.poll() is None, self.log()
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the process to end."""
        proc.send_signal(sig)
        return proc.wait(timeout=30)

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def status(self, dataset: str | None = None, *, files: bool = False) -> dict[str, Any]:
        """What ``status --json`` shows, read in-process (cheap enough to poll)."""
        path = self.state / "journal.sqlite3"
        if not path.exists():
            return {"daemon": {"running": False}, "datasets": []}
        journal = Journal.open(path, readonly=True)
        try:
            return snapshot(
                journal, read_live(self.state, time.time()), dataset=dataset, files=files
            )
        finally:
            journal.close()

    def datasets(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.status()["datasets"]}

    def processed_runs(self) -> list[str]:
        if not self.process_log.exists():
            return []
        return self.process_log.read_text().split()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    """A temporary ingest box; any daemon left running is killed at the end.

    A failing test's report carries the end of the daemon's log: a flake seen only in CI is
    otherwise a timeout with nothing to read.
    """
    b = Box(tmp_path)
    b.write_config()
    yield b
    b.cleanup()
    report_logs(request, {"daemon": b})


LOG_TAIL_LINES = 150


def report_logs(request: pytest.FixtureRequest, boxes: dict[str, Box]) -> None:
    """On a failed test, add the end of each box's daemon log to its report (teardown)."""
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for name, made in boxes.items():
        tail = "\n".join(made.log().splitlines()[-LOG_TAIL_LINES:])
        report.sections.append((f"{name} log (end)", tail))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep the call phase's report on the item, for fixtures that add to it on failure."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture
def store() -> Iterator[S3Store]:
    """A bucket in moto (server mode) on 127.0.0.1, behind the fault proxy."""
    from tests.fakes.s3store import S3Store  # noqa: PLC0415 (moto, for the tests that use it)

    with S3Store() as running:
        yield running
