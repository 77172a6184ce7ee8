"""The hashing processes, as the event loop sees them: batches out, outcomes back.

Each process (:mod:`daemon.hashworker`) is started when it is first needed and answers its
batches in the order they were sent, so each keeps a queue of the futures waiting for them. A
batch goes to the process with the fewest waiting. A process that ends unexpectedly (killed,
out of memory) ends only the batches it held, each file in a :class:`HashingError`: the hasher
offers those files to the stability gate again, and the next batch starts a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import structlog

from daemon.errors import HashingError
from daemon.hashworker import HEADER_SIZE, Job, Outcome, encode, length

log = structlog.get_logger("dronesync.hasher")

# -S: no site-packages (the process needs only the standard library and this package, found
# through PYTHONPATH below), which saves each process a few MB; -P: nothing imported from the
# working directory.
WORKER_ARGV = (sys.executable, "-P", "-S", "-m", "daemon.hashworker")


def _worker_env() -> dict[str, str]:
    """The daemon's environment, with this package's folder first on PYTHONPATH."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return env


class _Worker:
    """One hashing process and the batches it has not answered yet."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._argv = argv
        # Each batch sent and not answered: its future and its number of files.
        self.waiting: deque[tuple[asyncio.Future[list[Outcome]], int]] = deque()
        self._unsent: list[bytes] = []  # sent once the process has started
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None  # starts the process, reads its answers

    def submit(self, jobs: Sequence[Job]) -> asyncio.Future[list[Outcome]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        self.waiting.append((future, len(jobs)))
        frame = encode(list(jobs))
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.write(frame)
        else:
            self._unsent.append(frame)
            if self._task is None:
                self._task = loop.create_task(self._run(), name="hashing process")
        return future

    async def _run(self) -> None:
        process = await self._start()
        if process is None:
            return
        stdin, stdout = process.stdin, process.stdout
        if stdin is None or stdout is None:  # not with PIPE; for the type checker
            raise RuntimeError("hashing process started without its pipes")
        self._process = process
        for frame in self._unsent:
            stdin.write(frame)
        self._unsent.clear()
        try:
            while True:
                header = await stdout.readexactly(HEADER_SIZE)
                outcomes = _decode(await stdout.readexactly(length(header)))
                future, _ = self.waiting.popleft()
                if not future.done():  # else the hasher stopped waiting (it is closing)
                    future.set_result(outcomes)
        except asyncio.IncompleteReadError:
            code = await process.wait()
            self._process = self._task = None
            log.warning("hashing process ended; its files are read again", exit_code=code)
            self._fail_waiting(f"the hashing process ended (exit code {code})")
        except (pickle.UnpicklingError, ValueError, EOFError, IndexError, MemoryError) as exc:
            # An answer that cannot be read: nothing after it can be trusted either. The
            # process goes, and its files wait for the next one instead of forever.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            self._process = self._task = None
            error = f"unreadable answer from the hashing process: {type(exc).__name__}"
            # One line, no traceback: what happened and what follows is what the operator needs.
            log.error("hashing process replaced; its files are read again", error=error)  # noqa: TRY400
            self._fail_waiting(error)

    async def _start(self) -> asyncio.subprocess.Process | None:
        """The process, started; None (said in one line) if it cannot be."""
        try:
            return await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=_worker_env(),
            )
        except OSError as exc:
            error = f"cannot start a hashing process: {exc.strerror or exc}"
        self._task = None
        log.error("hashing process not started; its files are read again", error=error)
        self._fail_waiting(error)
        return None

    def _fail_waiting(self, error: str) -> None:
        """Each file of each batch not answered ends in ``error``: not the file's fault."""
        self._unsent.clear()
        while self.waiting:
            future, count = self.waiting.popleft()
            if not future.done():
                future.set_result([HashingError(error)] * count)

    async def aclose(self) -> None:
        """End the process now; a copy it was writing is dropped by the spool's next start."""
        task, process = self._task, self._process
        self._task = self._process = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        for future, _ in self.waiting:
            future.cancel()
        self.waiting.clear()


def _decode(data: bytes) -> list[Outcome]:
    outcomes: list[Outcome] = pickle.loads(data)  # noqa: S301 (our own process, see hashworker)
    return outcomes


class HashPool:
    """``count`` hashing processes (see :mod:`daemon.hashworker`)."""

    def __init__(self, count: int, argv: Sequence[str] = WORKER_ARGV) -> None:
        self._workers = [_Worker(argv) for _ in range(count)]

    def submit(self, jobs: Sequence[Job]) -> asyncio.Future[list[Outcome]]:
        """Read ``jobs`` in the process with the fewest batches waiting; outcomes in order."""
        worker = min(self._workers, key=lambda w: len(w.waiting))
        return worker.submit(jobs)

    async def aclose(self) -> None:
        """End every process; batches not answered are cancelled."""
        for worker in self._workers:
            await worker.aclose()
