"""The stability gate: files wait here until closed and unchanged for ``stable_s``.

Candidates come from scans and watcher events; the gate re-stats them on every tick. A change
restarts the clock and counts as activity for the dataset (its quiet period starts again).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from daemon.sources.openfiles import FileId, open_for_writing


@dataclass(slots=True)
class Candidate:
    """A file waiting to become stable.

    Its path is kept in two parts, the source's folder (one ``bytes`` shared by all its
    files) and the path inside it (the same object as the source's index key): a card of
    100,000 files then costs no path of its own per file while they wait.
    """

    file_id: int
    dataset_id: int
    base: bytes  # the source's folder, with a trailing slash
    relpath: bytes
    size: int
    mtime_ns: int
    stable_since: float
    stable_s: float
    spool: bool = False  # its source is in spool mode: the read copies it into the spool

    @property
    def path(self) -> bytes:
        """The file's full path."""
        return self.base + self.relpath


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one tick decided."""

    ready: list[Candidate]
    vanished: list[Candidate]
    changed: list[Candidate]


class StabilityGate:
    """Holds files until they are stable. Not thread-safe: the event loop owns it."""

    def __init__(self, open_check: Callable[[set[FileId]], set[FileId]] = open_for_writing) -> None:
        self._pending: dict[int, Candidate] = {}
        self._open_check = open_check

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, file_id: int) -> bool:
        return file_id in self._pending

    def offer(self, candidate: Candidate) -> bool:
        """Watch a file (again); a known one keeps its clock unless its stat differs.

        True when the file was already here and has changed: an event or a scan noticed a
        write before a tick did, and the caller counts it as the dataset's activity.
        """
        known = self._pending.get(candidate.file_id)
        if known and (known.size, known.mtime_ns) == (candidate.size, candidate.mtime_ns):
            return False
        self._pending[candidate.file_id] = candidate
        return known is not None

    def discard(self, file_id: int) -> None:
        """Stop watching a file."""
        self._pending.pop(file_id, None)

    def settled(self, hashed: Candidate) -> None:
        """``hashed`` was read and recorded: a candidate still here for it, unchanged, goes."""
        known = self._pending.get(hashed.file_id)
        if known is not None and (known.size, known.mtime_ns) == (hashed.size, hashed.mtime_ns):
            del self._pending[hashed.file_id]

    def discard_where(self, keep: Callable[[Candidate], bool]) -> None:
        """Drop every candidate for which ``keep`` is false."""
        self._pending = {k: c for k, c in self._pending.items() if keep(c)}

    def busy_datasets(self) -> set[int]:
        """Datasets with a file still settling (they are not quiet)."""
        return {c.dataset_id for c in self._pending.values()}

    def tick(self, now: float) -> Verdict:
        """Re-stat every candidate; return those ready, vanished or changed since last time."""
        ready: list[Candidate] = []
        vanished: list[Candidate] = []
        changed: list[Candidate] = []
        # Device and inode of the files ready to go, for the open-for-writing check. Kept
        # here, not on the candidates: those wait on until hashed, 100,000 of them at times.
        file_ids: dict[int, FileId] = {}
        for candidate in list(self._pending.values()):
            try:
                info = os.stat(candidate.path, follow_symlinks=False)
            except OSError:
                vanished.append(candidate)
                del self._pending[candidate.file_id]
                continue
            if not stat.S_ISREG(info.st_mode):
                vanished.append(candidate)
                del self._pending[candidate.file_id]
                continue
            if (info.st_size, info.st_mtime_ns) != (candidate.size, candidate.mtime_ns):
                candidate.size, candidate.mtime_ns = info.st_size, info.st_mtime_ns
                candidate.stable_since = now
                changed.append(candidate)
                continue
            if now - candidate.stable_since >= candidate.stable_s:
                ready.append(candidate)
                file_ids[candidate.file_id] = (info.st_dev, info.st_ino)
        if ready:
            still_open = self._open_check(set(file_ids.values()))
            held = [c for c in ready if file_ids[c.file_id] in still_open]
            for candidate in held:
                candidate.stable_since = now
            ready = [c for c in ready if file_ids[c.file_id] not in still_open]
        for candidate in ready:
            del self._pending[candidate.file_id]
        return Verdict(ready, vanished, changed)
