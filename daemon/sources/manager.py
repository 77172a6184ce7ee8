"""The source manager: roots coming and going, scans, watcher hints, and the stability gate.

A root that appears is watched and scanned at once; one that disappears pauses its datasets
with work left, and nothing in them is inferred deleted. Watcher events only make a look
sooner. The parts: :mod:`roots` (which folders), :mod:`intake` (scans, the hash cache, the
backlog and the gate), :mod:`datasets` (generations, pause and resume), :mod:`cards`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.clock import Clock, wait_event
from daemon.config import SourceConfig
from daemon.journal import Journal
from daemon.sources.cards import Cards
from daemon.sources.datasets import Datasets
from daemon.sources.gate import Candidate, StabilityGate
from daemon.sources.intake import TICK_S, Intake, Reader
from daemon.sources.mounts import MOUNTINFO, MountWatcher
from daemon.sources.roots import Root, Roots
from daemon.sources.watcher import Hints, Watcher

log = structlog.get_logger("dronesync.sources")


class SourceManager:
    """Finds files, keeps the journal's file list current, releases stable files.

    Stable files go to the reader given to :meth:`release_to` (the hasher), which tells back
    what it recorded (:meth:`note_hashed`) and which files changed (:meth:`offer_again`).
    """

    def __init__(
        self,
        sources: list[SourceConfig],
        journal: Journal,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        mountinfo: Path = MOUNTINFO,
        on_removable: Callable[[Root], None] | None = None,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (rescan jitter, not security)
        self._roots = Roots(sources, mountinfo)
        self._datasets = Datasets(journal, clock)
        self._intake = Intake(journal, clock, self._roots, self._datasets)
        self._cards = Cards(journal, clock, on_removable)
        self._hints: Hints | None = None
        self._watcher: Watcher | None = None
        self._connected = False
        self.first_scan_done = asyncio.Event()
        self.last_tick = clock.monotonic()  # the watchdog's proof that this loop turns

    def release_to(self, reader: Reader) -> None:
        """Send the files the gate releases to ``reader``, which says how many it holds."""
        self._intake.reader = reader
        self._connected = True

    @property
    def gate(self) -> StabilityGate:
        """The stability gate: files waiting to be stable."""
        return self._intake.gate

    # -- what the hasher and the uploads ask and tell --------------------------------------

    def is_online(self, volume: str) -> bool:
        """Whether the folder or card holding ``volume`` is present now."""
        return self._roots.is_online(volume)

    def offer_again(self, file_id: int, volume: str, relpath: bytes) -> None:
        """A file changed after it was hashed: watch it until it is stable again."""
        del file_id  # the path says which file; the journal knows its id
        root = self._roots.by_volume(volume)
        if root is None or not root.online:
            return
        self._look_at(root, relpath, rehash=True)

    def note_hashed(self, candidate: Candidate, status: str) -> None:
        """Keep the in-memory hash cache in step with what the journal recorded."""
        self._intake.note_hashed(candidate, status)

    def open_dataset_for(self, candidate: Candidate) -> int:
        """The dataset that takes this file now (a later generation once processing began)."""
        return self._datasets.now_for(
            self._roots.by_base(candidate.base),
            candidate.relpath,
            candidate.mtime_ns,
            candidate.dataset_id,
        )

    def busy_datasets(self) -> set[int]:
        """Datasets with files still settling or waiting to: not quiet yet."""
        return self._intake.busy_datasets()

    def cards(self) -> list[dict[str, object]]:
        """The cards in now, for ``status`` and the STATUS= line."""
        return self._cards.listing(self._roots)

    def loose(self) -> dict[str, int]:
        """Files lying in the top of a "subfolders" source, by folder: in no dataset."""
        return {str(root.path): root.loose for root in self._roots if root.online and root.loose}

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Watch roots, scan, gate, until ``stop`` is set."""
        if not self._connected:
            raise RuntimeError("no reader for the files the gate releases: call release_to")
        loop = asyncio.get_running_loop()
        self._hints = Hints(loop)
        self._watcher = Watcher(self._hints)
        hints = self._hints

        def mounts_changed() -> None:  # from the watcher's thread
            loop.call_soon_threadsafe(hints.wakeup.set)

        mountinfo = self._roots.mountinfo
        mounts = MountWatcher(mounts_changed, mountinfo) if self._roots.need_mounts else None
        try:
            self._refresh_roots()
            await self._scan_due(initial=True)
            self.first_scan_done.set()
            while not stop.is_set():
                self.last_tick = self._clock.monotonic()
                self._refresh_roots()
                self._drain_hints()
                await self._scan_due()
                self._intake.tick()
                self._cards.check(self._roots)
                await wait_event(self._hints.wakeup, TICK_S, self._clock)
                self._hints.wakeup.clear()
        finally:
            self._watcher.close()
            if mounts is not None:
                mounts.close()

    def _refresh_roots(self) -> None:
        for root in self._roots.refresh():
            if root.online:
                self._root_appeared(root)
            else:
                self._root_vanished(root)

    def _root_appeared(self, root: Root) -> None:
        assert self._watcher is not None  # noqa: S101 (set in run)
        try:
            # Watched first: what changes from now on is a hint, even during the first scan.
            self._watcher.watch(root.key, root.path, root.config.poll_s)
        except OSError as exc:
            # inotify limits (ENOSPC) or a vanished mount: periodic rescans still find files.
            log.warning(
                "cannot watch source; relying on rescans (raise fs.inotify.max_user_watches)",
                source=root.volume,
                error=str(exc),
            )
        log.info("source online", source=root.volume)
        self._intake.load(root)
        root.next_rescan = 0.0  # scan at once
        self._datasets.resume(root)

    def _root_vanished(self, root: Root) -> None:
        root.scanned = root.removable = False
        root.files_left = -1
        if self._watcher is not None:
            self._watcher.unwatch(root.key)
        self._intake.drop(root)
        self._datasets.pause(root)
        log.warning("source offline", source=root.volume)

    async def _scan_due(self, *, initial: bool = False) -> None:
        now = self._clock.monotonic()
        assert self._hints is not None  # noqa: S101 (set in run)
        for root in list(self._roots):
            wanted = root.key in self._hints.rescan or now >= root.next_rescan
            if not root.online or root.scanning or not wanted:
                continue
            self._hints.rescan.discard(root.key)
            root.scanning = True
            try:
                await self._intake.scan(root)
                root.scanned = True
            finally:
                root.scanning = False
            jitter = self._rng.uniform(0.8, 1.2)
            root.next_rescan = self._clock.monotonic() + root.config.rescan_s * jitter
        if initial:
            pending = len(self.gate) + self._intake.backlogged()
            log.info("first scan done", files_pending=pending)

    def _drain_hints(self) -> None:
        assert self._hints is not None  # noqa: S101 (set in run)
        roots = self._roots.by_key()
        seen: set[tuple[int, bytes]] = set()
        while not self._hints.queue.empty():
            key, path = self._hints.queue.get_nowait()
            if (key, path) in seen:
                continue
            seen.add((key, path))
            root = roots.get(key)
            if root is None or not root.online:
                continue
            base = root.base
            if not path.startswith(base):
                self._hints.request_rescan(key)
                continue
            self._look_at(root, path[len(base) :])

    def _look_at(self, root: Root, relpath: bytes, *, rehash: bool = False) -> None:
        if self._intake.look_at(root, relpath, rehash=rehash):
            assert self._hints is not None  # noqa: S101 (set in run)
            self._hints.request_rescan(root.key)
