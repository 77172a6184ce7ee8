"""A target's ``process_command``: run once per dataset, followed across restarts.

Its output goes to ``<state_dir>/processing/<dataset>.log`` and its exit code decides processed
or failed. The command runs in its own session and records its pid and its exit code in files
beside the log, so a daemon restarted while it ran follows the same run instead of starting a
second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daemon.errors import PermanentTargetError
from daemon.targets.base import DatasetRef, ProcessingStatus


class CommandConfig(Protocol):
    """The keys of a target's table the runner reads."""

    @property
    def process_command(self) -> list[str] | None:
        """The command, with ``{placeholders}`` in its arguments; None: nothing to run."""

    @property
    def process_timeout_s(self) -> float:
        """A run that lasts longer is stopped, and failed."""


# Runs process_command: first records its own pid in a file ($1), so a daemon killed while
# starting it never starts a second one; then records the command's exit code in a file ($0),
# so a daemon restarted while the command ran (in its own session) still learns how it ended.
_RECORD_EXIT = (
    'echo $$ > "$1.tmp" && mv -f "$1.tmp" "$1"; shift; '
    'code=0; "$@" || code=$?; echo "$code" > "$0.tmp"; mv -f "$0.tmp" "$0"; exit "$code"'
)


@dataclass(slots=True)
class _Run:
    process: asyncio.subprocess.Process
    log: Path
    started: float


class CommandRunner:
    """Starts and follows ``process_command`` for each dataset of one target."""

    def __init__(self, config: CommandConfig, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self._runs: dict[int, _Run] = {}

    async def start(self, dataset: DatasetRef, folder: Path, values: dict[str, str]) -> str:
        """Start the command in ``folder``, ``values`` in its placeholders; its pid ("": none)."""
        command = self.config.process_command
        if not command:
            return ""
        pid_file = self._pid_file(dataset)
        try:
            # Started already, by a daemon killed before it could record the start: the
            # same run is followed, never a second one.
            return pid_file.read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        argv = [arg.format(**values) for arg in command]
        if shutil.which(argv[0]) is None:
            raise PermanentTargetError(
                f"cannot run process_command {argv[0]!r}: not found or not executable"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{dataset.name}.log"
        exit_file = self._exit_file(dataset)
        exit_file.unlink(missing_ok=True)
        with log.open("ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {argv!r}\n".encode())
            out.flush()
            try:
                process = await asyncio.create_subprocess_exec(
                    "/bin/sh",
                    "-c",
                    _RECORD_EXIT,
                    str(exit_file),
                    str(pid_file),
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=folder,
                    start_new_session=True,
                )
            except OSError as exc:
                raise PermanentTargetError(
                    f"cannot run process_command {argv[0]!r}: {exc.strerror}"
                ) from exc
        self._runs[dataset.id] = _Run(process, log, time.monotonic())
        return str(process.pid)

    async def status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """Whether the dataset's command is still running, and how it ended."""
        status = await self._status(dataset, handle)
        if status.state != "running":
            self._pid_file(dataset).unlink(missing_ok=True)  # a later `process` runs it anew
        return status

    async def _status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        if not handle:
            return ProcessingStatus("done", "no process_command configured")
        run = self._runs.get(dataset.id)
        if run is None:
            return self._status_after_restart(dataset, handle)
        code = run.process.returncode
        if code is None:
            if time.monotonic() - run.started > self.config.process_timeout_s:
                _terminate(run.process)
                await run.process.wait()
                del self._runs[dataset.id]
                return ProcessingStatus(
                    "failed", f"process_command ran past process_timeout_s; see {run.log}"
                )
            return ProcessingStatus("running")
        del self._runs[dataset.id]
        if code == 0:
            return ProcessingStatus("done", f"process_command exited 0; output in {run.log}")
        return ProcessingStatus("failed", f"process_command exited {code}; see {run.log}")

    def _pid_file(self, dataset: DatasetRef) -> Path:
        return self.log_dir / f"{dataset.name}.pid"

    def _exit_file(self, dataset: DatasetRef) -> Path:
        return self.log_dir / f"{dataset.name}.exit"

    def _status_after_restart(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """The command outlived a daemon that was killed: its exit file tells how it ended."""
        log = self.log_dir / f"{dataset.name}.log"
        try:
            code = int(self._exit_file(dataset).read_text(encoding="ascii").strip())
        except FileNotFoundError:
            try:
                os.kill(int(handle), 0)
            except (OSError, ValueError):
                return ProcessingStatus(
                    "failed",
                    "processing was interrupted by a restart; `dronesync process` runs it again",
                )
            return ProcessingStatus("running", f"process_command (pid {handle}) still running")
        except (OSError, ValueError):
            return ProcessingStatus("failed", f"cannot read how process_command ended; see {log}")
        if code == 0:
            return ProcessingStatus("done", f"process_command exited 0; output in {log}")
        return ProcessingStatus("failed", f"process_command exited {code}; see {log}")

    async def aclose(self) -> None:
        """Stop running commands (the service is stopping)."""
        for run in self._runs.values():
            if run.process.returncode is None:
                _terminate(run.process)
        for run in self._runs.values():
            await run.process.wait()
        self._runs.clear()


def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the command's whole process group (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
