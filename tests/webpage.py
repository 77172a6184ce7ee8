"""The status page in tests and benchmarks: a journal made to order, and the server run in-process.

``fill`` writes datasets and files through the journal's own API (statuses as the daemon sets
them); ``PageServer`` runs :func:`daemon.web.serve` on an event loop in a thread, on a free
port of 127.0.0.1, and stops it as the daemon's session end does (by cancelling the task).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from daemon import control
from daemon.config import WebSettings
from daemon.journal import HashRecord, Journal, NewFile
from daemon.web import URL_FILE, serve

JOURNAL = "journal.sqlite3"


@dataclass
class Spec:
    """One dataset to write: how many files in each status, and the error of the failed ones."""

    name: str
    waiting: int = 0
    uploaded: int = 0
    failed: int = 0
    retrying: int = 0
    duplicate: int = 0
    error: str = "HTTP 500 from the target"
    target: str = "archive"
    state: str = "collecting"
    size: int = 1_000_000
    names: list[str] = field(default_factory=list)  # file names, else IMG_00001.JPG ...


def fill(journal: Journal, specs: list[Spec], now: float | None = None) -> None:
    """Write the datasets and files of ``specs`` into ``journal``."""
    now = time.time() if now is None else now
    with journal.transaction():
        for spec in specs:
            _fill_one(journal, spec, now)
    journal.flush()


def _fill_one(journal: Journal, spec: Spec, now: float) -> None:
    ds = journal.open_dataset(
        volume=f"/srv/inbox/{spec.name}",
        folder=b".",
        name=spec.name,
        target=spec.target,
        source="/srv/inbox",
        auto_process=True,
        quiet_s=600,
        now=now,
    )
    kinds = (
        ["uploaded"] * spec.uploaded
        + ["failed"] * spec.failed
        + ["retrying"] * spec.retrying
        + ["waiting"] * spec.waiting
    )
    names = spec.names or [f"IMG_{i:05d}.JPG" for i in range(len(kinds))]
    new = [
        NewFile(ds.id, ds.volume, name.encode(), name.encode(), spec.size, i)
        for i, name in enumerate(names)
    ]
    ids = journal.add_files(new, now)
    rows = journal.find_files(ids)
    records = [
        HashRecord(
            rows[file_id],
            ds.id,
            item.size,
            item.mtime_ns,
            hashlib.sha256(f"{spec.name}/{file_id}".encode()).hexdigest(),
            "target",
        )
        for file_id, item in zip(ids, new, strict=True)
    ]
    hashed = journal.record_hashes(records, now)
    uploaded = []
    for row, kind in zip(hashed, kinds, strict=True):
        if kind == "uploaded":
            uploaded.append((row, row.dspath))
        elif kind == "failed":
            journal.mark_failed(row.id, spec.error)
        elif kind == "retrying":
            journal.mark_uploading(row.id)
            journal.mark_retry(row.id, spec.error, now + 60)
    journal.mark_all_uploaded(uploaded, now)
    for i in range(spec.duplicate):  # same content as the first uploaded file
        name = f"COPY_{i:05d}.JPG".encode()
        (file_id,) = journal.add_files([NewFile(ds.id, ds.volume, name, name, spec.size, 0)], now)
        original = journal.file(uploaded[0][0].id)
        assert original.sha256 is not None
        journal.record_hash(
            file_id,
            dataset_id=ds.id,
            size=spec.size,
            mtime_ns=0,
            sha256=original.sha256,
            duplicate_scope="target",
            now=now,
        )
    if spec.state != "collecting":
        journal.set_dataset_state(ds.id, spec.state)


def page_url(state_dir: Path, timeout: float = 60.0) -> str:
    """The URL of the page a daemon (or a ``PageServer``) serves for ``state_dir``."""
    path = state_dir / URL_FILE
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path}: the status page did not start")
        time.sleep(0.02)
    return str(json.loads(path.read_text())["url"])


class PageServer:
    """``daemon.web.serve`` on its own event loop in a thread, for as long as the block runs."""

    def __init__(self, state_dir: Path, web: WebSettings) -> None:
        self.state_dir = state_dir
        self.web = web
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.task: asyncio.Task[None] | None = None

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; the page's URL."""
        self._thread.start()

        async def begin() -> asyncio.Task[None]:
            coroutine = serve(self.web, self.state_dir, self.state_dir / JOURNAL)
            return asyncio.create_task(coroutine, name="web")

        self.task = asyncio.run_coroutine_threadsafe(begin(), self.loop).result(timeout)
        try:
            return page_url(self.state_dir, timeout)
        finally:
            if self.task.done():
                self.task.result()  # raises what stopped it

    def stop(self) -> None:
        """Cancel the task as a session's end does, wait for it to end, then end the loop."""
        task = self.task

        async def end() -> None:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@contextmanager
def answering(
    state_dir: Path, reply: str = "0 failed file(s) back to waiting"
) -> Iterator[list[str]]:
    """A stand-in for the daemon's request loop: answers each request with ``reply``.

    Yields the actions applied, as "action dataset" strings.
    """
    applied: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for request in control.pending(state_dir):
                applied.append(f"{request.action} {request.dataset}")
                control.answer(request, reply)
            stop.wait(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield applied
    finally:
        stop.set()
        thread.join(timeout=5)
