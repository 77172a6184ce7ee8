"""The page's reads of the journal, in a thread of their own, on a read-only connection.

The daemon's event loop owns the journal's one writing connection; a page read there would
hold up the uploads for as long as it takes. Here every read (and the rendering that follows
it) runs in one worker thread with its own read-only connection, which WAL lets read while
the daemon writes. SQLite lets go of the GIL while it works, so the loop keeps turning.

The status document is computed at most once per :data:`STATUS_TTL_S`, whoever asks: a page
and its live updates in ten browsers cost one snapshot a second.
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
STATUS_TTL_S = 0.5


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
        """The ``status --json`` document of every dataset, at most :data:`STATUS_TTL_S` old."""
        now = time.monotonic()
        if self._status is not None and now - self._status[0] < STATUS_TTL_S:
            return self._status[1]
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.call(lambda j: snapshot(j, self.live())))
            pending = self._pending
            try:
                document = await asyncio.shield(pending)
            finally:
                self._pending = None
            self._status = (time.monotonic(), document)
            return document
        return await asyncio.shield(self._pending)

    async def close(self) -> None:
        """Close the connection in its own thread, then end the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
