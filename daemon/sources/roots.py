"""Roots: the folders the ``[[sources]]`` entries match now, coming and going.

Each entry names a folder or a glob of folders (card mounts); every folder it matches is a
*root*, identified in the journal by its path (its *volume*). A root is online while its
folder exists (and, for ``require_mount``, is a mount point); one that goes away stays known,
offline, until it comes back.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config import SourceConfig
from daemon.journal import Known
from daemon.sources.filters import FileFilter
from daemon.sources.mapping import DatasetMapper
from daemon.sources.mounts import MOUNTINFO, Mount, card_of, read_mounts


@dataclass(slots=True)
class Met:
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
    # Files the walk met that the journal has and the index does not: read when reconciled.
    recorded: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    backlog: deque[Met] = field(default_factory=deque)  # to offer once the gate has room
    online: bool = False
    next_rescan: float = 0.0
    scanning: bool = False
    scanned: bool = False  # one whole scan since it came online: every file is known
    removable: bool = False
    files_left: int = -1
    # Files the walk met at the top of a "subfolders" source: in no dataset folder, so never
    # taken. Counted by each walk; ``loose_told`` is the count last said in the log.
    loose: int = 0
    loose_told: int = 0

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
        if found is None:
            if self.config.layout == "subfolders" and b"/" not in relpath:
                self.loose += self.filter.wants(relpath)
            return False
        return self.filter.wants(found[2])


def _is_glob(path: Path) -> bool:
    return any(ch in str(path) for ch in "*?[")


class Roots:
    """Every root met since the start, online or not, and the mounts they may need."""

    def __init__(self, sources: list[SourceConfig], mountinfo: Path = MOUNTINFO) -> None:
        self._sources = sources
        self._roots: dict[tuple[int, Path], Root] = {}
        self._next_key = 0
        self.mountinfo = mountinfo
        self.need_mounts = any(c.require_mount for c in sources)
        self._mounts: dict[str, Mount] = read_mounts(mountinfo) if self.need_mounts else {}

    def __iter__(self) -> Iterator[Root]:
        return iter(self._roots.values())

    def refresh(self) -> list[Root]:
        """Look at the folders again; the roots that came online or went offline, in order.

        Each returned root's ``online`` says which: what follows from it is the caller's.
        """
        if self.need_mounts:
            self._mounts = read_mounts(self.mountinfo)
        changed: list[Root] = []
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
                if online != root.online:
                    root.online = online
                    changed.append(root)
        for key, root in self._roots.items():
            if key not in seen and root.online:
                root.online = False
                changed.append(root)
        return changed

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
            return volume in read_mounts(self.mountinfo)
        return True

    def by_volume(self, volume: str) -> Root | None:
        """The root whose volume this is."""
        for root in self._roots.values():
            if root.volume == volume:
                return root
        return None

    def by_base(self, base: bytes) -> Root | None:
        """The root whose folder (with its trailing slash) is ``base``."""
        for root in self._roots.values():
            if root.base == base:
                return root
        return None

    def by_key(self) -> dict[int, Root]:
        """Every root by its key (the watcher's name for it)."""
        return {root.key: root for root in self._roots.values()}
