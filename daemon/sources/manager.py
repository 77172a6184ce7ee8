"""The source manager: roots coming and going, scans, watcher hints, and the stability gate.

Each ``[[sources]]`` entry names a folder or a glob of folders (card mounts); every folder it
matches is a *root*, identified in the journal by its path (its *volume*). A root that appears
is watched and scanned at once; one that disappears pauses its datasets with work left, and
nothing in them is inferred deleted. Scans run in a worker thread and are reconciled with the
journal on the event loop; watcher events only make a look sooner.
"""

from __future__ import annotations

import asyncio
import glob
import os
import random
import stat
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from daemon.clock import Clock, wait_event
from daemon.config import SourceConfig
from daemon.journal import DatasetRow, Journal, Known, NewFile
from daemon.sources.filters import FileFilter, is_litter
from daemon.sources.gate import Candidate, StabilityGate
from daemon.sources.mapping import DatasetMapper, Placement
from daemon.sources.mounts import MOUNTINFO, Mount, MountWatcher, card_of, read_mounts
from daemon.sources.scanner import Entry, walk
from daemon.sources.watcher import Hints, Watcher

log = structlog.get_logger("dronesync.sources")

TICK_S = 0.2
# Files to read wait in their root's backlog, not in the gate, while the gate and the hasher
# hold this many: a card of 100,000 images then costs a reference to a path per file waiting
# (the path is the hash cache's key already), not a Candidate, and the gate re-stats only
# the files that will be read soon.
BACKLOG_AT = 4096
SCAN_CHUNK = 1000  # files a scan hands from its walk to the loop at a time
CARD_CHECK_S = 1.0
ACTIVE_STATES = ("collecting", "ready")


@dataclass(slots=True)
class _Met:
    """Files of a root met at one moment, waiting for room in the gate (see BACKLOG_AT)."""

    since: float  # when they were met: their stable_s runs from then
    relpaths: list[bytes]
    datasets: set[int]  # of the files not offered yet, and perhaps of some that were
    taken: int = 0  # relpaths[:taken] were offered


@dataclass(slots=True)
class Root:
    """One folder matched by a source: a volume of files."""

    key: int
    source_index: int
    config: SourceConfig
    path: Path
    base: bytes  # path as bytes, with a trailing slash: the prefix of its files' paths
    mapper: DatasetMapper
    filter: FileFilter
    index: dict[bytes, Known] = field(default_factory=dict)  # files with work left, or met
    settled: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # the rest: size, mtime
    backlog: deque[_Met] = field(default_factory=deque)  # to offer once the gate has room
    online: bool = False
    next_rescan: float = 0.0
    scanning: bool = False
    scanned: bool = False  # one whole scan since it came online: every file is known
    removable: bool = False
    files_left: int = -1

    @property
    def is_card(self) -> bool:
        """A card (a mount point, or spooled): it is told when it can be removed."""
        return self.config.require_mount or self.config.spool

    @property
    def volume(self) -> str:
        """The journal's name for this root."""
        return str(self.path)

    def wanted(self, relpath: bytes) -> bool:
        """Whether a file at ``relpath`` belongs to a dataset and passes the filters."""
        found = self.mapper.split(relpath)
        return found is not None and self.filter.wants(found[2])


def _is_glob(path: Path) -> bool:
    return any(ch in str(path) for ch in "*?[")


class SourceManager:
    """Finds files, keeps the journal's file list current, releases stable files."""

    def __init__(
        self,
        sources: list[SourceConfig],
        journal: Journal,
        clock: Clock,
        on_ready: Callable[[Candidate], None],
        *,
        reading: Callable[[], int] = lambda: 0,
        rng: random.Random | None = None,
        mountinfo: Path = MOUNTINFO,
        on_removable: Callable[[Root], None] | None = None,
    ) -> None:
        self._sources = sources
        self._journal = journal
        self._clock = clock
        self._on_ready = on_ready
        self._reading = reading  # files the gate released that the hasher has not recorded
        self._rng = rng or random.Random()  # noqa: S311 (rescan jitter, not security)
        self.gate = StabilityGate()
        self._roots: dict[tuple[int, Path], Root] = {}
        self._next_key = 0
        self._hints: Hints | None = None
        self._watcher: Watcher | None = None
        self.first_scan_done = asyncio.Event()
        self._mountinfo = mountinfo
        self._on_removable = on_removable or (lambda root: None)
        self._cards_checked_at = 0.0
        self.last_tick = clock.monotonic()  # the watchdog's proof that this loop turns
        self._ticked_at = 0.0  # the gate's last tick (monotonic)
        self._mount_sources = any(c.require_mount for c in sources)
        self._mounts: dict[str, Mount] = read_mounts(mountinfo) if self._mount_sources else {}

    # -- public queries --------------------------------------------------------------------

    def is_online(self, volume: str) -> bool:
        """Whether the folder or card holding ``volume`` is present now.

        Asked when a read fails: the loop may not have noticed yet that the folder went away,
        so the folder itself is looked at too. A file that vanished from a present folder is
        the file's problem; a vanished folder is not.
        """
        roots = [r for r in self._roots.values() if r.volume == volume]
        if not any(r.online for r in roots) or not Path(volume).is_dir():
            return False
        if any(r.config.require_mount for r in roots):
            return volume in read_mounts(self._mountinfo)
        return True

    def root_of(self, volume: str) -> Root | None:
        """The root whose volume this is."""
        for root in self._roots.values():
            if root.volume == volume:
                return root
        return None

    def spools(self, path: bytes) -> bool:
        """Whether the file at ``path`` is on a source in spool mode."""
        root = self._root_for_path(path)
        return root is not None and root.config.spool

    def busy_datasets(self) -> set[int]:
        """Datasets with files still settling or waiting to: not quiet yet."""
        busy = self.gate.busy_datasets()
        for root in self._roots.values():
            for met in root.backlog:
                busy |= met.datasets
        return busy

    def offer_again(self, file_id: int, volume: str, relpath: bytes) -> None:
        """A file changed after it was hashed: watch it until it is stable again."""
        root = self.root_of(volume)
        if root is None or not root.online:
            return
        self._look_at(root, relpath, rehash=True)

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Watch roots, scan, gate, until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        self._hints = Hints(loop)
        self._watcher = Watcher(self._hints)
        hints = self._hints

        def mounts_changed() -> None:  # from the watcher's thread
            loop.call_soon_threadsafe(hints.wakeup.set)

        mounts = MountWatcher(mounts_changed, self._mountinfo) if self._mount_sources else None
        try:
            self._refresh_roots()
            await self._scan_due(initial=True)
            self.first_scan_done.set()
            while not stop.is_set():
                self.last_tick = self._clock.monotonic()
                self._refresh_roots()
                self._drain_hints()
                await self._scan_due()
                self._gate_tick()
                self._check_cards()
                await wait_event(self._hints.wakeup, TICK_S)
                self._hints.wakeup.clear()
        finally:
            self._watcher.close()
            if mounts is not None:
                mounts.close()

    def _refresh_roots(self) -> None:
        if self._mount_sources:
            self._mounts = read_mounts(self._mountinfo)
        seen: set[tuple[int, Path]] = set()
        for index, config in enumerate(self._sources):
            if _is_glob(config.path):
                paths = [Path(p) for p in sorted(glob.glob(str(config.path)))]
            else:
                paths = [config.path]
            for path in paths:
                online = path.is_dir() and (not config.require_mount or str(path) in self._mounts)
                key = (index, path)
                if not online and key not in self._roots:
                    continue
                seen.add(key)
                root = self._roots.get(key)
                if root is None:
                    root = self._new_root(index, config, path)
                    self._roots[key] = root
                if online and not root.online:
                    self._root_appeared(root)
                elif not online and root.online:
                    self._root_vanished(root)
        for key, root in self._roots.items():
            if key not in seen and root.online:
                self._root_vanished(root)

    def _new_root(self, index: int, config: SourceConfig, path: Path) -> Root:
        self._next_key += 1
        return Root(
            key=self._next_key,
            source_index=index,
            config=config,
            path=path,
            base=os.fsencode(path) + b"/",
            mapper=DatasetMapper(config, path, card_of(path, self._mounts)),
            filter=FileFilter(config.include, config.exclude),
        )

    def _root_appeared(self, root: Root) -> None:
        root.online = True
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
        # Read before the first walk, which skips every file it already knows as settled.
        # (Reading it while the walk ran gained nothing: both need the GIL.)
        root.settled = self._journal.settled_files(root.volume)
        root.index = self._journal.open_files(root.volume)
        root.next_rescan = 0.0  # scan at once
        for dataset in self._journal.datasets():
            if dataset.volume == root.volume and dataset.state == "paused":
                self._journal.set_dataset_state(dataset.id, "collecting", "source is back")
                log.info("dataset resumed", dataset=dataset.name, source=root.volume)

    def _root_vanished(self, root: Root) -> None:
        root.online = False
        root.scanned = root.removable = False
        root.files_left = -1
        if self._watcher is not None:
            self._watcher.unwatch(root.key)
        self.gate.discard_where(lambda c: c.base != root.base)
        root.backlog.clear()  # waiting in the journal: the next scan meets them again
        # Files safe in the spool do not need the card: their datasets go on uploading.
        left = self._journal.left_on(root.volume, failed=False)
        for dataset in self._journal.datasets():
            if dataset.volume != root.volume or dataset.state not in ACTIVE_STATES:
                continue
            if left.get(dataset.id, 0):
                self._journal.set_dataset_state(
                    dataset.id, "paused", "source went away with work left; waiting for it"
                )
                log.warning("dataset paused", dataset=dataset.name, source=root.volume)
        log.warning("source offline", source=root.volume)

    # -- cards -----------------------------------------------------------------------------

    def _check_cards(self) -> None:
        """Tell when every wanted file of a card is uploaded or safe in the spool."""
        now = self._clock.monotonic()
        if now - self._cards_checked_at < CARD_CHECK_S:
            return
        self._cards_checked_at = now
        for root in self._roots.values():
            if not (root.is_card and root.online and root.scanned):
                continue
            root.files_left = sum(self._journal.left_on(root.volume).values())
            removable = root.files_left == 0 and not root.scanning
            if removable and not root.removable:
                self._journal.flush()  # on the disk before anyone pulls the card
                log.info("card can be removed", card=root.volume, label=root.mapper.card.label)
                root.removable = True
                self._on_removable(root)
            elif not removable:
                root.removable = False

    def cards(self) -> list[dict[str, object]]:
        """The cards in now, for ``status`` and the STATUS= line."""
        return [
            {
                "path": root.volume,
                "label": root.mapper.card.label,
                "removable": root.removable,
                "files_left": root.files_left,
            }
            for root in self._roots.values()
            if root.is_card and root.online
        ]

    # -- scans -----------------------------------------------------------------------------

    async def _scan_due(self, *, initial: bool = False) -> None:
        now = self._clock.monotonic()
        assert self._hints is not None  # noqa: S101 (set in run)
        for root in list(self._roots.values()):
            wanted = root.key in self._hints.rescan or now >= root.next_rescan
            if not root.online or root.scanning or not wanted:
                continue
            self._hints.rescan.discard(root.key)
            root.scanning = True
            try:
                await self._scan(root)
                root.scanned = True
            finally:
                root.scanning = False
            jitter = self._rng.uniform(0.8, 1.2)
            root.next_rescan = self._clock.monotonic() + root.config.rescan_s * jitter
        if initial:
            log.info("first scan done", files_pending=len(self.gate) + self._backlogged())

    @staticmethod
    def _walk(root: Root, hand_over: Callable[[list[Entry]], bool]) -> None:
        """Walk the root in a worker thread, handing its files over in chunks.

        Only files that need a look are handed over: those the hash cache holds as settled
        (hashed, nothing left to send, size and mtime unchanged) are passed over before the
        include/exclude filter and without an entry, so a restart over 100,000 uploaded files
        costs little more than the walk itself. ``hand_over`` returns false to stop the walk.
        """
        known = root.settled  # read only here; the loop may drop entries meanwhile

        def settled(relpath: bytes, size: int, mtime_ns: int) -> bool:
            return known.get(relpath) == (size, mtime_ns)

        def on_error(path: bytes, exc: OSError) -> None:
            log.warning("cannot read", path=os.fsdecode(path), error=exc.strerror)

        chunk: list[Entry] = []
        for entry in walk(os.fsencode(root.path), root.wanted, on_error, settled):
            chunk.append(entry)
            if len(chunk) >= SCAN_CHUNK:
                if not hand_over(chunk):
                    return
                chunk = []
        if chunk:
            hand_over(chunk)

    async def _scan(self, root: Root) -> None:
        """Walk the root and bring the journal in step, a chunk at a time.

        Each chunk is reconciled in a transaction of its own as soon as the walk hands it
        over, and the gate is ticked between chunks: the first images of a big card are
        hashed while the rest of it is still being walked, and the walk's entries are never
        all held at once. Files missing from the walk are judged only once it is complete.
        """
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[list[Entry] | None] = asyncio.Queue()
        stopped = False  # set when this scan is cancelled: the thread stops at its next chunk

        def hand_over(chunk: list[Entry] | None) -> bool:  # in the walk's thread
            if stopped:
                return False
            loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            return True

        def walk_all() -> None:
            try:
                self._walk(root, hand_over)
            finally:
                hand_over(None)

        # Files waiting to be read that the walk does not meet are gone. Only those known
        # before the walk can be: a first scan of a new card keeps no set of what it met.
        unseen = {relpath for relpath, known in root.index.items() if known.status == "waiting"}
        walker = asyncio.ensure_future(asyncio.to_thread(walk_all))
        try:
            while (chunk := await chunks.get()) is not None:
                with self._journal.transaction():
                    unseen.difference_update(entry.relpath for entry in chunk)
                    self._reconcile(root, chunk, self._clock.time())
                if self._clock.monotonic() - self._ticked_at >= TICK_S:
                    self._gate_tick()
                await asyncio.sleep(0)  # hashes done meanwhile are recorded between chunks
            await walker  # its error, if any
        finally:
            stopped = True
        if not root.path.is_dir():
            return  # vanished during the walk: what is missing is not deleted
        with self._journal.transaction():
            for relpath in unseen:
                known = root.index.get(relpath)
                if known is not None and known.status == "waiting":
                    self._gone(root, relpath, known)

    def _reconcile(
        self, root: Root, entries: list[Entry], now: float, *, rehash: bool = False
    ) -> None:
        """Bring the journal in step with these files of the root, and offer them to the gate.

        The files met for the first time are recorded together: a new card is thousands of
        them, and one journal statement for all costs the event loop far less than one each.
        """
        new: list[tuple[Entry, NewFile]] = []
        for entry in entries:
            known = self._known(root, entry.relpath)
            if known is not None:
                self._offer(root, entry, known, now, rehash=rehash)
                continue
            placement = root.mapper.place(entry.relpath, entry.mtime_ns)
            if placement is None:
                continue
            dataset = self._open_dataset(root, placement, now)
            new.append(
                (
                    entry,
                    NewFile(
                        dataset.id,
                        root.volume,
                        entry.relpath,
                        placement.dspath,
                        entry.size,
                        entry.mtime_ns,
                    ),
                )
            )
        if not new:
            return
        ids = self._journal.add_files([file for _, file in new], now)
        for (entry, file), file_id in zip(new, ids, strict=True):
            known = Known(file_id, file.dataset_id, entry.size, entry.mtime_ns, False, "waiting")
            root.index[entry.relpath] = known
            self._offer(root, entry, known, now)

    def _offer(
        self, root: Root, entry: Entry, known: Known, now: float, *, rehash: bool = False
    ) -> None:
        """Offer a file to the gate, unless its hash is known or its upload checks it itself."""
        if (
            not rehash
            and known.hashed
            and (known.size, known.mtime_ns) == (entry.size, entry.mtime_ns)
        ):
            return  # the hash cache: unchanged since it was hashed
        if known.status == "uploading" and not rehash:
            return  # the upload re-checks size and mtime itself
        if (
            not (rehash or known.hashed)  # a file that changed since it was read goes first
            and (root.backlog or len(self.gate) + self._reading() >= BACKLOG_AT)
        ):
            # Behind the files waiting already: read in the order met. Only its path is kept:
            # its record in the hash cache holds the rest.
            if not root.backlog or root.backlog[-1].since != now:
                root.backlog.append(_Met(now, [], set()))
            met = root.backlog[-1]
            met.relpaths.append(entry.relpath)
            met.datasets.add(known.dataset_id)
            return
        self._admit(root, entry, known, now)

    def _admit(self, root: Root, entry: Entry, known: Known, since: float) -> None:
        changed = self.gate.offer(
            Candidate(
                file_id=known.id,
                dataset_id=known.dataset_id,
                base=root.base,
                relpath=entry.relpath,
                size=entry.size,
                mtime_ns=entry.mtime_ns,
                stable_since=since,
                stable_s=root.config.stable_s,
            )
        )
        if changed:  # written to since it was met: the dataset is not quiet
            self._journal.touch_dataset(known.dataset_id, self._clock.time())

    def _known(self, root: Root, relpath: bytes) -> Known | None:
        """The record of a file; one the compact cache held as settled is read in full."""
        known = root.index.get(relpath)
        if known is None and root.settled.pop(relpath, None) is not None:
            known = self._journal.known_file(root.volume, relpath)
            if known is not None:
                root.index[relpath] = known
        return known

    def _gone(self, root: Root, relpath: bytes, known: Known) -> None:
        self.gate.discard(known.id)
        if not known.hashed:
            self._journal.forget_unhashed(known.id)
            del root.index[relpath]
            return
        row = self._journal.file(known.id)
        if row.status != "waiting":
            # Uploaded (or settled otherwise) since the cache was last told: nothing is lost.
            root.index[relpath] = Known(
                known.id, known.dataset_id, known.size, known.mtime_ns, True, row.status
            )
        elif row.spool_path is None:  # a copy in the spool or in staging is what gets uploaded
            self._journal.mark_failed(known.id, "file disappeared from the source before upload")
            root.index[relpath] = Known(
                known.id, known.dataset_id, known.size, known.mtime_ns, True, "failed"
            )

    # -- hints -----------------------------------------------------------------------------

    def _drain_hints(self) -> None:
        assert self._hints is not None  # noqa: S101 (set in run)
        roots = {r.key: r for r in self._roots.values()}
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
        if any(is_litter(part) for part in relpath.split(b"/")):
            return
        full = root.base + relpath
        try:
            info = os.stat(full, follow_symlinks=False)
        except OSError:
            known = root.index.get(relpath)
            if known is not None and known.status == "waiting" and not known.hashed:
                self._gone(root, relpath, known)
            return
        # One lstat answers every question (a symlink is neither a folder nor a file here).
        if stat.S_ISDIR(info.st_mode):
            assert self._hints is not None  # noqa: S101 (set in run)
            self._hints.request_rescan(root.key)
            return
        if not stat.S_ISREG(info.st_mode) or not root.wanted(relpath):
            return
        with self._journal.transaction():
            entry = Entry(relpath, info.st_size, info.st_mtime_ns)
            self._reconcile(root, [entry], self._clock.time(), rehash=rehash)

    # -- the gate --------------------------------------------------------------------------

    def _backlogged(self) -> int:
        return sum(
            len(met.relpaths) - met.taken for root in self._roots.values() for met in root.backlog
        )

    def _refill(self) -> None:
        """Offer files from the backlogs while the gate and the hasher have room."""
        room = BACKLOG_AT - len(self.gate) - self._reading()
        for root in self._roots.values():
            while room > 0 and root.backlog:
                met = root.backlog[0]
                while room > 0 and met.taken < len(met.relpaths):
                    relpath = met.relpaths[met.taken]
                    met.taken += 1
                    known = self._known(root, relpath)
                    if known is None or known.hashed or known.status == "uploading":
                        continue  # forgotten, or read meanwhile
                    self._admit(root, Entry(relpath, known.size, known.mtime_ns), known, met.since)
                    room -= 1
                if met.taken == len(met.relpaths):
                    root.backlog.popleft()

    def _gate_tick(self) -> None:
        self._ticked_at = self._clock.monotonic()
        self._refill()
        verdict = self.gate.tick(self._clock.time())
        now = self._clock.time()
        for candidate in verdict.changed:
            self._journal.touch_dataset(candidate.dataset_id, now)
        for candidate in verdict.vanished:
            root = self._root_of(candidate)
            if root is None or not root.online:
                continue
            known = root.index.get(candidate.relpath)
            if known is not None and not known.hashed:
                self._gone(root, candidate.relpath, known)
        for candidate in verdict.ready:
            self._on_ready(candidate)

    def _root_for_path(self, path: bytes) -> Root | None:
        for root in self._roots.values():
            if path.startswith(root.base):
                return root
        return None

    def _root_of(self, candidate: Candidate) -> Root | None:
        for root in self._roots.values():
            if root.base == candidate.base:
                return root
        return None

    def note_hashed(self, candidate: Candidate, status: str) -> None:
        """Keep the in-memory hash cache in step with what the journal recorded."""
        # A second candidate for the same file, offered while it was being read, has nothing
        # new to show: it leaves the gate instead of being read again.
        self.gate.settled(candidate)
        root = self._root_of(candidate)
        if root is None:
            return
        relpath = candidate.relpath
        root.settled.pop(relpath, None)
        root.index[relpath] = Known(
            candidate.file_id,
            candidate.dataset_id,
            candidate.size,
            candidate.mtime_ns,
            True,
            # Read from the journal, each row's status is a string of its own: one shared
            # string instead of 100,000 copies of "waiting" (5.6 MB for a card that size).
            sys.intern(status),
        )

    def open_dataset_for(self, candidate: Candidate) -> int:
        """The dataset that takes this file now (a later generation once processing began)."""
        root = self._root_of(candidate)
        if root is None:
            return candidate.dataset_id
        placement = root.mapper.place(candidate.relpath, candidate.mtime_ns)
        if placement is None:
            return candidate.dataset_id
        return self._open_dataset(root, placement, self._clock.time()).id

    def _open_dataset(self, root: Root, placement: Placement, now: float) -> DatasetRow:
        """The dataset that takes this folder's files now, with the source's settings."""
        return self._journal.open_dataset(
            volume=root.volume,
            folder=placement.folder,
            name=placement.dataset,
            target=root.config.target,
            source=str(root.config.path),
            auto_process=root.config.auto_process,
            quiet_s=root.config.quiet_s,
            now=now,
        )
