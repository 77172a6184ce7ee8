"""The spool: verified copies of card images on local disk, waiting for their upload.

A card gives its bytes once, at card speed: each image is copied into the spool while it is
hashed (``hashing.spool_file``), and the upload reads the copy. The spool is bounded
(``max_gb``, and ``min_free_gb`` left on its disk): when a copy would not fit, copying waits
with a clear message and the file stays on the card, waiting; nothing is dropped. A copy is
deleted once its file is uploaded or found to be a duplicate. Copies are named by the
journal's file id, so no card name (hostile or not) ever becomes a local path.

A directory target on a filesystem with hard links gets a spool of its own without asking:
its *staging* folder, ``.dronesync-staging`` in the target's folder. Files of sources without
spool mode are copied there while they are hashed and linked into their dataset folder by the
upload, so the card is read once instead of twice (once to hash, once to copy), and the bytes
the archive keeps are the ones that were hashed. Staging takes no more room than the archive
needs anyway; when the disk is short of it, files are hashed without a copy, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from daemon.config import SpoolSettings
from daemon.durable import DURABILITY
from daemon.journal import Journal

if TYPE_CHECKING:
    from daemon.targets.base import Staging

log = structlog.get_logger("dronesync.spool")

GB = 1024**3
STAGING_MIN_FREE = GB  # staging stops well before the archive's disk is full
# The disk's free space is asked again after this much was reserved (or when near the
# margin), not for every copy: a statvfs per small image costs the event loop more than
# the copy's bookkeeping.
RECHECK_BYTES = 64 * 1024**2


class Spool:
    """The spool folder and the space it may use."""

    def __init__(self, settings: SpoolSettings, journal: Journal, *, staging: bool = False) -> None:
        assert settings.dir is not None  # noqa: S101 (built only when configured)
        self.folder = settings.dir
        self._prefix = os.fsencode(settings.dir / "x")[:-1]  # the folder, with one "/"
        self._max = int(settings.max_gb * GB)
        self._min_free = int(settings.min_free_gb * GB)
        self._journal = journal
        self._used = 0
        self._free = 0  # free bytes on the disk at the last look, less what was reserved since
        self._since_look = RECHECK_BYTES  # bytes reserved since that look: look at once
        self.staging = staging  # a directory target's own: when full, files go unstaged
        self.accepting = True  # takes new copies (a retired staging folder only drains)
        self.full_message: str | None = None

    @classmethod
    def for_staging(cls, staging: Staging, journal: Journal) -> Spool | None:
        """The spool of a target's staging folder (``Target.staging``).

        Accepting, with hard links in that folder, it takes new copies. Otherwise it only
        serves the copies staged before (staging turned off since): None if there are none.
        """
        folder = staging.folder
        settings = SpoolSettings(dir=folder, max_gb=100_000, min_free_gb=STAGING_MIN_FREE / GB)
        if staging.accept and _links(folder):
            return cls(settings, journal, staging=True)
        if not folder.is_dir():
            return None
        spool = cls(settings, journal, staging=True)
        spool.accepting = False
        return spool

    def path_for(self, file_id: int) -> Path:
        """Where the copy of journal file ``file_id`` goes."""
        return self.folder / f"{file_id}.img"

    def copy_path(self, file_id: int) -> bytes:
        """:meth:`path_for` as the journal records it, without making a Path on the way."""
        return b"%s%d.img" % (self._prefix, file_id)

    def recover(self) -> None:
        """At start: drop copies no longer needed or never recorded; count the rest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        wanted: set[str] = set()
        mine = os.fsencode(self.folder) + b"/"
        for file_id, path, size, status in self._journal.spooled():
            if not path.startswith(mine):
                continue  # another spool's copy
            if status in ("uploaded", "duplicate") or not os.path.exists(path):
                self._journal.set_spool(file_id, None)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            wanted.add(os.fsdecode(path))
            self._used += size
        for entry in os.scandir(self.folder):
            if entry.path not in wanted:  # a copy (or .part) cut short, or never recorded
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        if not self.staging:
            log.info("spool ready", folder=str(self.folder), used_bytes=self._used)

    @property
    def used(self) -> int:
        """Bytes held or reserved in the spool."""
        return self._used

    def make_durable(self) -> None:
        """Copies made so far, and their names, are on the disk (blocks: call in a thread)."""
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            DURABILITY.make_durable(fd)
        finally:
            os.close(fd)

    def reserve(self, size: int) -> bool:
        """Room for a copy of ``size`` bytes? Reserves it when there is."""
        free = self._free_space(size)
        if self._used + size > self._max or free - size < self._min_free:
            if self.staging:
                return False  # hashed without a copy: nothing waits for staging
            message = (
                f"spool full ({self._used / GB:.1f} of {self._max / GB:.1f} GB used,"
                f" {free / GB:.1f} GB free on its disk): copying off cards waits for uploads"
            )
            if self.full_message is None:
                log.warning("spool full; copying waits", folder=str(self.folder))
            self.full_message = message
            return False
        if self.full_message is not None:
            log.info("spool has room again", folder=str(self.folder))
            self.full_message = None
        self._used += size
        self._free -= size
        self._since_look += size
        return True

    def _free_space(self, size: int) -> int:
        """Free bytes on the spool's disk, looked up again when the estimate may be stale."""
        if self._since_look >= RECHECK_BYTES or self._free - size < self._min_free:
            try:
                self._free = shutil.disk_usage(self.folder).free
            except OSError:
                self._free = 0
            self._since_look = 0
        return self._free

    def unreserve(self, size: int) -> None:
        """A reserved copy was not made (the file changed, a read failed)."""
        self._used = max(0, self._used - size)

    def remove(self, file_id: int, path: bytes, size: int) -> None:
        """The copy is no longer needed: forget it in the journal, delete it, free its space."""
        self._journal.set_spool(file_id, None)
        self.discard(path, size)

    def discard(self, path: bytes, size: int) -> None:
        """Delete a copy the journal no longer names, and free its space."""
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.unreserve(size)

    def discard_all(self, copies: list[tuple[bytes, int]]) -> None:
        """:meth:`discard` for many copies, deleted by a worker thread (off the event loop).

        Their room counts as free at once; a copy left by a stop before its thread ran is
        deleted at the next start (:meth:`recover`).
        """
        for _, size in copies:
            self.unreserve(size)
        paths = [path for path, _ in copies]
        asyncio.get_running_loop().run_in_executor(None, _unlink_all, paths)


def _unlink_all(paths: list[bytes]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _links(folder: Path) -> bool:
    """Whether ``folder`` can be made and its filesystem has hard links (a probe)."""
    first, linked = folder / "link-probe", folder / "link-probe.linked"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        first.touch()
        try:
            os.link(first, linked)
        finally:
            first.unlink()
        linked.unlink()
    except OSError:
        return False  # a share without hard links (or not writable yet): uploads copy
    return True
