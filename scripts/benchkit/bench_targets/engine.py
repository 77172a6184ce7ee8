"""dronesync's side of a failure row: the daemon's own upload engine, on a journal of its own.

Retries are where the engine's choices show (quick retries, parking, backoff, which file a
free worker takes next), so the rows with a failing server run the engine itself rather than
a copy of its rules: a real journal in a temporary folder, the files recorded as hashed, and
``UploadEngine`` until every file is uploaded or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

from benchkit.project import (
    DatasetRef,
    FileRow,
    Journal,
    NodeODMTarget,
    Pix4DCloudTarget,
    SystemClock,
    UploadEngine,
    UploadItem,
    UploadSettings,
    WebODMTarget,
)

TARGET = "bench"
VOLUME = "/"  # files are located by id (``locate``), never through it
POLL_S = 0.05
STUCK_S = 600.0  # longer than any backoff of the [upload] defaults
# As the soak's: at 30 % refused, the default 8 fail a file of a 100-file run in 150 by bad
# luck (0.3 ** 8 each), and the row would measure nothing; the link's use is the same.
ATTEMPTS = 100


class _Online:
    """The sources as the engine sees them here: present, and never changing."""

    def is_online(self, volume: str) -> bool:
        return True

    def offer_again(self, file_id: int, volume: str, relpath: bytes) -> None:
        raise AssertionError(f"file {file_id} changed during the benchmark")


class EngineRun:
    """One dataset of a fresh journal, uploaded by a running engine with the ``[upload]`` defaults.

    All but ``attempts`` (:data:`ATTEMPTS`).

    ``async with EngineRun(target, name, concurrency) as run``: ``run.ref`` is the dataset as
    the target sees it (for a warm-up or the commit); each :meth:`upload` records files and
    waits until the engine has uploaded them.
    """

    def __init__(
        self,
        target: NodeODMTarget | Pix4DCloudTarget | WebODMTarget,
        name: str,
        concurrency: int,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="dronesync-bench-journal-")
        try:
            self._journal = Journal.open(Path(self._tmp.name) / "journal.sqlite3")
        except BaseException:
            self._tmp.cleanup()
            raise
        self._paths: dict[int, Path] = {}
        dataset = self._journal.open_dataset(
            volume=VOLUME,
            folder=b"",
            name=name,
            target=TARGET,
            source=VOLUME,
            auto_process=False,
            quiet_s=0,
            now=time.time(),
        )
        self.ref = DatasetRef(dataset.id, dataset.name)
        self._engine = UploadEngine(
            self._journal,
            {TARGET: target},
            UploadSettings(concurrency=concurrency, attempts=ATTEMPTS),
            SystemClock(),
            _Online(),
            locate=lambda row: self._paths[row.id],
        )
        self._running: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EngineRun:
        self._running = asyncio.create_task(self._engine.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)
        self._journal.close()
        self._tmp.cleanup()

    async def upload(self, items: list[UploadItem]) -> list[bytes]:
        """Record ``items`` as hashed and waiting, and wait until all are uploaded; every key.

        Raises when a file ends failed: the row would not be one data set's transfer.
        """
        self._record(items)
        self._engine.wake()
        wanted = len(self._paths)
        done, moved = -1, time.monotonic()
        while True:
            assert self._running is not None
            if self._running.done():
                self._running.result()  # the engine's error
                raise RuntimeError("the upload engine stopped")
            files = self._journal.counts([self.ref.id])[self.ref.id].files
            if files["failed"]:
                raise RuntimeError(f"{files['failed']} file(s) failed: {files}")
            if files["uploaded"] == wanted:
                return self._journal.uploaded_keys(self.ref.id)
            if files["uploaded"] != done:
                done, moved = files["uploaded"], time.monotonic()
            elif time.monotonic() - moved > STUCK_S:  # a pause or a wait spends no attempt
                raise RuntimeError(f"no upload for {STUCK_S:g} s: {files}")
            await asyncio.sleep(POLL_S)

    def _record(self, items: list[UploadItem]) -> None:
        now = time.time()
        for item in items:
            file_id = self._journal.add_file(
                dataset_id=self.ref.id,
                volume=VOLUME,
                relpath=os.fsencode(item.path),
                dspath=item.key,
                size=item.size,
                mtime_ns=item.mtime_ns,
                now=now,
            )
            row: FileRow = self._journal.record_hash(
                file_id,
                dataset_id=self.ref.id,
                size=item.size,
                mtime_ns=item.mtime_ns,
                sha256=item.sha256,
                duplicate_scope="dataset",
                now=now,
                seal=item.seal,
            )
            if row.status != "waiting":
                raise RuntimeError(f"{item.path}: {row.status}, not waiting (same content twice?)")
            self._paths[file_id] = item.path


async def run_dataset(
    stack: contextlib.AsyncExitStack,
    target: NodeODMTarget | Pix4DCloudTarget | WebODMTarget,
    run_id: int,
    concurrency: int,
    *,
    engine: bool,
) -> tuple[EngineRun | None, DatasetRef]:
    """The dataset of run ``run_id``: the engine's (retries, the engine's own), or a plain one."""
    name = f"bench-{run_id}"
    if not engine:
        return None, DatasetRef(run_id, name)
    run = await stack.enter_async_context(EngineRun(target, name, concurrency))
    return run, run.ref
