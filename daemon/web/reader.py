"""The page's reads of the journal, in a thread of their own, on a read-only connection.

The daemon's event loop owns the journal's one writing connection; a page read there would
hold up the uploads for as long as it takes. Here every read (and the rendering that follows
it) runs in one worker thread with its own read-only connection, which WAL lets read while
the daemon writes. SQLite lets go of the GIL while it works, so the loop keeps turning.

The status document is computed at most once a second, whoever asks, and in the background
of the requests that ask for it: a page and its live updates in ten browsers cost one
snapshot a second, and none of them waits for it once the first is there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from daemon.journal import Journal
from daemon.status import read_live, snapshot

T = TypeVar("T")
FRESH_S = 1.0  # the daemon writes its live figures once a second
STALE_S = 5.0


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A refresh nobody waited for may fail: its error is for the next caller, not asyncio's."""
    if not future.cancelled():
        future.exception()


class JournalReader:
    """One thread, one read-only journal connection, opened there on first use."""

    def __init__(self, journal_path: Path, state_dir: Path) -> None:
        self.journal_path = journal_path
        self.state_dir = state_dir
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-journal")
        self._journal: Journal | None = None  # touched only in the worker thread
        self._status: tuple[float, dict[str, Any]] | None = None
        self._pending: asyncio.Future[dict[str, Any]] | None = None

    async def call(self, fn: Callable[[Journal], T]) -> T:
        """``fn(journal)`` in the reader's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, fn)

    def _run(self, fn: Callable[[Journal], T]) -> T:
        if self._journal is None:
            self._journal = Journal.open(self.journal_path, readonly=True)
        return fn(self._journal)

    def live(self) -> dict[str, Any]:
        """The daemon's live figures (rates, cards), as ``dronesync status`` reads them."""
        return read_live(self.state_dir, time.time())

    async def status(self) -> dict[str, Any]:
        """The ``status --json`` document of every dataset, computed at most once a second.

        A document older than :data:`FRESH_S` is still answered at once while a new one is
        computed (up to :data:`STALE_S`): the live figures it holds change once a second.
        """
        now = time.monotonic()
        cached = self._status
        if cached is not None and now - cached[0] < FRESH_S:
            return cached[1]
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
            self._pending.add_done_callback(_retrieved)
        if cached is not None and now - cached[0] < STALE_S:
            return cached[1]
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> dict[str, Any]:
        try:
            live = self.live()
            document = await self.call(lambda journal: snapshot(journal, live))
        finally:
            self._pending = None
        self._status = (time.monotonic(), document)
        return document

    async def close(self) -> None:
        """Close the connection in its own thread, then end the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
