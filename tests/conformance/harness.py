"""What the conformance suite needs of a target: the target, and a way to look inside its store.

Each target type ships one harness module in ``harnesses/`` (the fixture a new target adds).
A harness builds the target against its real store (a folder, or a local server started by a
fixture), reads back what it stored, injects the faults its store can produce, and builds a
second target on the same store, as a restarted daemon would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import pytest

from daemon.hashing import RACY_NS, hash_file
from daemon.targets.base import DatasetRef, MemoryState, ProcessingStatus, Target, UploadItem

T = TypeVar("T")
DS = DatasetRef(1, "mission")

Fault = Literal["transient", "permanent", "retry_after", "paused"]
FAULTS: tuple[Fault, ...] = ("transient", "permanent", "retry_after", "paused")
DEADLINE_S = 20.0
RETRY_AFTER_S = 7.0  # what a harness's server asks for, when it can


class Harness(Protocol):
    """One target type's view of the store behind its target."""

    target: Target
    # The faults its store can produce; the suite skips the others, saying so.
    faults: frozenset[Fault]

    def stored(self, key: bytes) -> bytes:
        """What the store holds under ``key`` for :data:`DS`, read back its own way."""

    def copies(self) -> int:
        """How many objects the store holds for :data:`DS` (what processing would get)."""

    def inject(self, fault: Fault) -> None:
        """Make the next upload meet ``fault``."""

    def heal(self) -> None:
        """Undo what :meth:`inject` did (a paused target can then go on)."""

    def fail_processing(self) -> None:
        """Make the next processing end in failure."""

    def reopen(self) -> Target:
        """A second target on the same store and the same journal state (a restart)."""


class HarnessFactory(Protocol):
    """Builds a harness in ``tmp``; servers and folders are released by ``stack``."""

    def __call__(self, tmp: Path, stack: contextlib.ExitStack, state: MemoryState) -> Harness:
        """The harness, its target made but no dataset ensured yet."""


_RUNNER: list[asyncio.Runner] = []


@contextlib.contextmanager
def event_loop() -> Any:
    """One event loop per test, as in the daemon: connection pools outlive a single call."""
    with asyncio.Runner() as runner:
        _RUNNER.append(runner)
        try:
            yield
        finally:
            _RUNNER.pop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the test's event loop."""
    return _RUNNER[-1].run(coro)


def leftovers(tmp_path: Path) -> list[Path]:
    """Temporary copies left behind anywhere (there must never be any)."""
    return list(tmp_path.rglob("*.dronesync-part"))


def item_for(path: Path, key: bytes) -> UploadItem:
    """The item as the engine builds it: size, mtime, hash and seal of the file as it is now.

    Hashed as the stability gate lets a file be, a while after its last write (the seal of a
    read in the clock tick of that write is not recorded).
    """
    info = path.stat()
    later = info.st_ctime_ns + 2 * RACY_NS
    hashed = hash_file(path, info.st_size, info.st_mtime_ns, now_ns=later)
    return UploadItem(path, key, hashed.size, hashed.mtime_ns, hashed.sha256, seal=hashed.seal)


def source(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "card" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


async def finish(target: Target, handle: str) -> ProcessingStatus:
    """Poll until processing is no longer running (a test failure after the deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status = await target.processing_status(DS, handle)
        if status.state != "running":
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"processing still running after {DEADLINE_S:g} s")
        await asyncio.sleep(0.02)
