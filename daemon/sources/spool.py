"""The spool: verified copies of card images on local disk, waiting for their upload.

A card gives its bytes once, at card speed: each image is copied into the spool while it is
hashed (``hashing.spool_file``), and the upload reads the copy. The spool is bounded
(``max_gb``, and ``min_free_gb`` left on its disk): when a copy would not fit, copying waits
with a clear message and the file stays on the card, waiting; nothing is dropped. A copy is
deleted once its file is uploaded or found to be a duplicate. Copies are named by the
journal's file id, so no card name (hostile or not) ever becomes a local path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import structlog

from daemon.config import SpoolSettings
from daemon.durable import DURABILITY
from daemon.journal import Journal

log = structlog.get_logger("dronesync.spool")

GB = 1024**3


class Spool:
    """The spool folder and the space it may use."""

    def __init__(self, settings: SpoolSettings, journal: Journal) -> None:
        assert settings.dir is not None  # noqa: S101 (built only when configured)
        self.folder = settings.dir
        self._max = int(settings.max_gb * GB)
        self._min_free = int(settings.min_free_gb * GB)
        self._journal = journal
        self._used = 0
        self.full_message: str | None = None

    def path_for(self, file_id: int) -> Path:
        """Where the copy of journal file ``file_id`` goes."""
        return self.folder / f"{file_id}.img"

    def recover(self) -> None:
        """At start: drop copies no longer needed or never recorded; count the rest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        wanted: set[str] = set()
        for file_id, path, size, status in self._journal.spooled():
            if status in ("uploaded", "duplicate") or not os.path.exists(path):
                self._journal.set_spool(file_id, None)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            wanted.add(os.fsdecode(path))
            self._used += size
        for entry in os.scandir(self.folder):
            if entry.path not in wanted:  # a .part of a copy cut short, or never recorded
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
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
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            free = 0
        if self._used + size > self._max or free - size < self._min_free:
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
        return True

    def unreserve(self, size: int) -> None:
        """A reserved copy was not made (the file changed, a read failed)."""
        self._used = max(0, self._used - size)

    def remove(self, file_id: int, path: bytes, size: int) -> None:
        """The copy is no longer needed: delete it and free its space."""
        self._journal.set_spool(file_id, None)
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.unreserve(size)
