"""The intake: scans and looks bring the journal in step; files go through the gate to a reader.

Scans run in a worker thread and are reconciled with the journal on the event loop, a chunk
at a time. Each file met is offered to the stability gate unless the hash cache (size and
mtime unchanged since it was hashed) says there is nothing to read; while the gate and the
reader hold enough, files wait in their root's backlog as paths. Files the gate releases go
to the reader (the hasher), which says how many it holds and tells what it recorded.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Callable
from typing import Protocol

import structlog

from daemon.clock import Clock
from daemon.journal import Journal, Known, NewFile
from daemon.sources.datasets import Datasets
from daemon.sources.filters import is_litter
from daemon.sources.gate import Candidate, StabilityGate
from daemon.sources.roots import Met, Root, Roots
from daemon.sources.scanner import Entry, walk

log = structlog.get_logger("dronesync.sources")

TICK_S = 0.2
# Files to read wait in their root's backlog, not in the gate, while the gate and the reader
# hold this many: a card of 100,000 images then costs a reference to a path per file waiting
# (the path is the hash cache's key already), not a Candidate, and the gate re-stats only
# the files that will be read soon.
BACKLOG_AT = 4096
SCAN_CHUNK = 1000  # files a scan hands from its walk to the loop at a time


class Reader(Protocol):
    """Who reads the files the gate releases (the hasher)."""

    def submit(self, candidate: Candidate) -> None:
        """Read this file (it is stable)."""

    @property
    def pending(self) -> int:
        """Files released to it and not recorded yet."""


class _NoReader:
    """Until a reader is connected (the manager does not run without one)."""

    pending = 0

    def submit(self, candidate: Candidate) -> None:
        del candidate


class Intake:
    """Keeps the journal's file list current and releases stable files to the reader."""

    def __init__(self, journal: Journal, clock: Clock, roots: Roots, datasets: Datasets) -> None:
        self._journal = journal
        self._clock = clock
        self._roots = roots
        self._datasets = datasets
        self.gate = StabilityGate()
        self.reader: Reader = _NoReader()
        self._ticked_at = 0.0  # the gate's last tick (monotonic)

    # -- a root comes and goes ------------------------------------------------------------

    def load(self, root: Root) -> None:
        """The root came online: its files with work left, read before the first walk.

        The files with nothing left to do are not read here: a walk asks the journal for them
        folder by folder (:meth:`_walk`), so a card slot that held a year of cards costs
        neither the memory nor the start-up of a record per file it ever held.
        """
        root.recorded.clear()
        root.index = self._journal.open_files(root.volume)

    def drop(self, root: Root) -> None:
        """The root went offline: its files leave the gate and the backlog."""
        self.gate.discard_where(lambda c: c.base != root.base)
        root.backlog.clear()  # waiting in the journal: the next scan meets them again

    # -- scans -----------------------------------------------------------------------------

    def _walk(self, root: Root, hand_over: Callable[[list[Entry]], bool]) -> None:
        """Walk the root in a worker thread, handing its files over in chunks.

        Only files that need a look are handed over: those the hash cache holds as settled
        (hashed, nothing left to send, size and mtime unchanged) are passed over before the
        include/exclude filter and without an entry, so a restart over 100,000 uploaded files
        costs little more than the walk itself. ``hand_over`` returns false to stop the walk.

        The hash cache is read folder by folder, on a read-only connection of this thread's
        own: one folder's records at a time. A file the journal has that the walk hands over
        goes into ``root.recorded``, so the loop reads its record instead of adding it.
        """
        reader = type(self._journal).open(self._journal.path, readonly=True)
        folder: bytes | None = None
        records: dict[bytes, tuple[int, int, bool]] = {}

        def settled(relpath: bytes, size: int, mtime_ns: int) -> bool:
            nonlocal folder, records
            parent = relpath.rpartition(b"/")[0]
            if parent != folder:  # the walk meets a folder's files one after another
                folder, records = parent, reader.folder_files(root.volume, parent)
            found = records.get(relpath)
            if found is None or relpath in root.index:  # new, or the loop knows it already
                return False
            if found[2] and found[:2] == (size, mtime_ns):
                return True
            root.recorded[relpath] = (size, mtime_ns)
            return False

        def on_error(path: bytes, exc: OSError) -> None:
            log.warning("cannot read", path=os.fsdecode(path), error=exc.strerror)

        chunk: list[Entry] = []
        try:
            for entry in walk(os.fsencode(root.path), root.wanted, on_error, settled):
                chunk.append(entry)
                if len(chunk) >= SCAN_CHUNK:
                    if not hand_over(chunk):
                        return
                    chunk = []
            if chunk:
                hand_over(chunk)
        finally:
            reader.close()

    async def scan(self, root: Root) -> None:
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
        root.loose = 0
        walker = asyncio.ensure_future(asyncio.to_thread(walk_all))
        try:
            while (chunk := await chunks.get()) is not None:
                with self._journal.transaction():
                    unseen.difference_update(entry.relpath for entry in chunk)
                    self._reconcile(root, chunk, self._clock.time())
                if self._clock.monotonic() - self._ticked_at >= TICK_S:
                    self.tick()
                await asyncio.sleep(0)  # hashes done meanwhile are recorded between chunks
            await walker  # its error, if any
        finally:
            stopped = True
        if not root.path.is_dir():
            return  # vanished during the walk: what is missing is not deleted
        _tell_loose(root)
        with self._journal.transaction():
            for relpath in unseen:
                known = root.index.get(relpath)
                if known is not None and known.status == "waiting":
                    self._gone(root, relpath, known)

    def _reconcile(
        self,
        root: Root,
        entries: list[Entry],
        now: float,
        *,
        rehash: bool = False,
        lookup: bool = False,
    ) -> None:
        """Bring the journal in step with these files of the root, and offer them to the gate.

        The files met for the first time are recorded together: a new card is thousands of
        them, and one journal statement for all costs the event loop far less than one each.
        ``lookup``: the entries come from no walk, so the journal is asked for those not in
        the index (a walk has said already which files it has).
        """
        new: list[tuple[Entry, NewFile]] = []
        for entry in entries:
            known = self._known(root, entry.relpath, lookup=lookup)
            if known is not None:
                self._offer(root, entry, known, now, rehash=rehash)
                continue
            placement = root.mapper.place(entry.relpath, entry.mtime_ns)
            if placement is None:
                continue
            dataset = self._datasets.open(root, placement, now)
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
            and (root.backlog or len(self.gate) + self.reader.pending >= BACKLOG_AT)
        ):
            # Behind the files waiting already: read in the order met. Only its path is kept:
            # its record in the hash cache holds the rest.
            if not root.backlog or root.backlog[-1].since != now:
                root.backlog.append(Met(now, [], set()))
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
                spool=root.config.spool,
            )
        )
        if changed:  # written to since it was met: the dataset is not quiet
            self._journal.touch_dataset(known.dataset_id, self._clock.time())

    def _known(self, root: Root, relpath: bytes, *, lookup: bool = False) -> Known | None:
        """The record of a file; one the walk found recorded (or ``lookup``) is read in full."""
        known = root.index.get(relpath)
        if known is None and (root.recorded.pop(relpath, None) is not None or lookup):
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

    def look_at(self, root: Root, relpath: bytes, *, rehash: bool = False) -> bool:
        """Look at one path of the root (a watcher's hint); True when it asks for a rescan."""
        if any(is_litter(part) for part in relpath.split(b"/")):
            return False
        full = root.base + relpath
        try:
            info = os.stat(full, follow_symlinks=False)
        except OSError:
            known = root.index.get(relpath)
            if known is not None and known.status == "waiting" and not known.hashed:
                self._gone(root, relpath, known)
            return False
        # One lstat answers every question (a symlink is neither a folder nor a file here).
        if stat.S_ISDIR(info.st_mode):
            return True
        if not stat.S_ISREG(info.st_mode) or not root.wanted(relpath):
            return False
        with self._journal.transaction():
            entry = Entry(relpath, info.st_size, info.st_mtime_ns)
            self._reconcile(root, [entry], self._clock.time(), rehash=rehash, lookup=True)
        return False

    # -- the gate --------------------------------------------------------------------------

    def backlogged(self) -> int:
        """Files waiting in the roots' backlogs."""
        return sum(len(met.relpaths) - met.taken for root in self._roots for met in root.backlog)

    def busy_datasets(self) -> set[int]:
        """Datasets with files still settling or waiting to: not quiet yet."""
        busy = self.gate.busy_datasets()
        for root in self._roots:
            for met in root.backlog:
                busy |= met.datasets
        return busy

    def _refill(self) -> None:
        """Offer files from the backlogs while the gate and the reader have room."""
        room = BACKLOG_AT - len(self.gate) - self.reader.pending
        for root in self._roots:
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

    def tick(self) -> None:
        """Refill the gate, re-stat what it holds, and release the stable files."""
        self._ticked_at = self._clock.monotonic()
        self._refill()
        verdict = self.gate.tick(self._clock.time())
        now = self._clock.time()
        for candidate in verdict.changed:
            self._journal.touch_dataset(candidate.dataset_id, now)
        for candidate in verdict.vanished:
            root = self._roots.by_base(candidate.base)
            if root is None or not root.online:
                continue
            known = root.index.get(candidate.relpath)
            if known is not None and not known.hashed:
                self._gone(root, candidate.relpath, known)
        for candidate in verdict.ready:
            self.reader.submit(candidate)

    def note_hashed(self, candidate: Candidate, status: str) -> None:
        """Keep the in-memory hash cache in step with what the journal recorded."""
        # A second candidate for the same file, offered while it was being read, has nothing
        # new to show: it leaves the gate instead of being read again.
        self.gate.settled(candidate)
        root = self._roots.by_base(candidate.base)
        if root is None:
            return
        relpath = candidate.relpath
        root.recorded.pop(relpath, None)
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


def _tell_loose(root: Root) -> None:
    """Say once (until the count changes) that files lie in a source's top, in no dataset."""
    if root.loose and root.loose != root.loose_told:
        log.warning(
            "files in the top of a source belong to no dataset; put them in a sub-folder"
            ' (one per flight), or set layout = "single" for this source',
            source=str(root.path),
            files=root.loose,
        )
    root.loose_told = root.loose
