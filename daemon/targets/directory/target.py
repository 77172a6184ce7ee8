"""The directory target: a local folder or a mounted NAS share (the embedded default).

Each dataset is a sub-folder named after it; each file keeps its path inside the dataset
folder. A file is copied to a temporary name in its destination folder while it is hashed in
the same read (unless it is still sealed since it was hashed: :mod:`daemon.hashing`), checked
against the recorded hash, and then linked into place with ``link()``,
which never replaces an existing file. If a different file already holds the name, the copy
takes the next free name ``NAME~2.EXT``; if the same content is already there, the upload is a
no-op (so a retry after a crash never makes a second copy).

A file copied into the spool (spool mode) was written by the daemon from the same read that
hashed it and is never changed afterwards; when the spool is on the archive's filesystem it is
hard-linked into place instead of copied, so the card's bytes are read once and written once.

Nothing is called uploaded before it is on the disk, but an upload does not wait for that on
its own: the engine calls :meth:`DirectoryTarget.make_durable` once for every batch of
finished uploads, and one ``syncfs`` (:mod:`daemon.durable`) covers them all instead of two
``fsync`` calls per file.

Processing runs ``process_command`` (``kit.command``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from daemon.durable import DURABILITY
from daemon.errors import (
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TransientTargetError,
)
from daemon.hashing import StableRead, write_all
from daemon.targets.base import DatasetRef, ProcessingStatus, Staging, Transfer, UploadItem
from daemon.targets.directory import STAGING, DirectoryTargetConfig
from daemon.targets.kit.command import CommandRunner

# Errors the operator must fix (permissions, read-only share, bad names): retrying won't help.
# Errors no retry can fix until the operator acts: permissions, a read-only file system, a
# name too long or invalid, and a name that exists as the wrong kind of file (a file where the
# dataset's folder goes: EEXIST from mkdir, ENOTDIR below it; a folder where a file goes).
_PERMANENT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.EINVAL,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
}
# link() refusals that mean "this filesystem pair cannot share a file": copy instead.
_NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES}
MAX_NAME_TRIES = 1000
T = TypeVar("T")


def _target_error(path: Path, exc: OSError) -> Exception:
    message = f"{path}: {exc.strerror or exc}"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        message += " (a file is where a folder should be)"
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentTargetError(message)
    return TransientTargetError(message)


def _alternative(key: bytes, n: int) -> bytes:
    if n == 1:
        return key
    head, sep, name = key.rpartition(b"/")
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem:
        stem, ext = name, b""
    suffix = b"~%d" % n
    return head + sep + stem + suffix + (b"." + ext if ext else b"")


def _same_content(path: Path, sha256: str, size: int) -> bool:
    try:
        info = path.stat()
        if info.st_size != size:
            return False
        with StableRead(path, size, info.st_mtime_ns, expect=sha256) as read:
            for _ in read.chunks():
                pass
            read.finish()
    except FileChangedError:
        return False
    except OSError as exc:
        raise _target_error(path, exc) from exc
    return True


class DirectoryTarget:
    """Copies datasets into sub-folders of a local or mounted folder."""

    poll_interval_s = 1.0

    def __init__(self, name: str, config: DirectoryTargetConfig, log_dir: Path) -> None:
        self.name = name
        self.config = config
        self.root = config.path
        self.staging: Staging | None = Staging(config.path / STAGING, accept=config.staging)
        self._command = CommandRunner(config, log_dir)
        self._can_link = True  # until link() from the spool is refused once
        self._folders: set[Path] = set()  # folders made (or found) by this process
        # A folder on each other filesystem mounted inside the archive that received files.
        self._mounted: dict[int, Path] = {}
        # Links asked for in this turn of the event loop, handed to a thread at its end.
        self._links: list[tuple[DatasetRef, UploadItem, Transfer, asyncio.Future[bytes]]] = []

    def dataset_dir(self, dataset: DatasetRef) -> Path:
        """The folder that receives this dataset."""
        return self.root / dataset.name

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Create the dataset folder."""
        folder = self.dataset_dir(dataset)
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise _target_error(folder, exc) from exc

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Copy one file in a worker thread (file I/O does not block the event loop).

        A spooled or staged copy is only linked into place: the links asked for in the same
        turn of the event loop go to one worker thread together, one hand-over and one
        wake-up of the loop for all (for a small image those cost more than its link).
        """
        if not (item.spooled and self._can_link):
            return await asyncio.to_thread(self._upload, dataset, item, transfer)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes] = loop.create_future()
        if not self._links:
            loop.call_soon(self._hand_over_links)
        self._links.append((dataset, item, transfer, waiter))
        return await waiter

    def _hand_over_links(self) -> None:
        batch, self._links = self._links, []
        jobs = [(dataset, item, transfer) for dataset, item, transfer, _ in batch]
        done = asyncio.get_running_loop().run_in_executor(None, self._upload_all, jobs)

        def answer(future: asyncio.Future[list[bytes | Exception]]) -> None:
            for n, (_, _, _, waiter) in enumerate(batch):
                if waiter.done():
                    continue  # the engine gave up on it (stall, cancel, stop)
                if future.cancelled():  # the loop is closing
                    waiter.cancel()
                elif (error := future.exception()) is not None:
                    waiter.set_exception(error)
                elif isinstance(outcome := future.result()[n], Exception):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)

        done.add_done_callback(answer)

    def _upload_all(
        self, jobs: list[tuple[DatasetRef, UploadItem, Transfer]]
    ) -> list[bytes | Exception]:
        """:meth:`_upload` for each job, in a worker thread; each ends in its key or its error."""
        outcomes: list[bytes | Exception] = []
        for dataset, item, transfer in jobs:
            try:
                outcomes.append(self._upload(dataset, item, transfer))
            except Exception as exc:  # noqa: BLE001 (each file's outcome is its own)
                outcomes.append(exc)
        return outcomes

    def _upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        folder = os.fsencode(self.dataset_dir(dataset))
        for n in range(1, MAX_NAME_TRIES + 1):
            key = _alternative(item.key, n)
            dest = Path(os.fsdecode(folder + b"/" + key))
            if dest.parent not in self._folders:  # one mkdir per folder, not per file
                self._make_folder(dest.parent)
            if item.spooled and self._can_link:
                # A link costs less than a look before it: the name is looked at only when
                # taken (by a copy a killed run left, or by another file).
                linked = self._link_spooled(item, dest, transfer)
                if linked:
                    return key
                if linked is False:
                    if _same_content(dest, item.sha256, item.size):
                        return key
                    continue
            if dest.exists():
                # Looked at first here: a copy that a killed run left is not copied again.
                if _same_content(dest, item.sha256, item.size):
                    _part_name(dest, item).unlink(missing_ok=True)  # left by a killed run
                    return key
                continue
            if self._copy_into_place(item, dest, transfer):
                return key
        raise PermanentTargetError(f"{dataset.name}: no free name for {item.key!r}")

    async def make_durable(self) -> None:
        """Put every file uploaded so far on the disk, names included: one sync per filesystem."""
        await asyncio.to_thread(self._sync)

    def _sync(self) -> None:
        for folder in [self.root, *self._mounted.values()]:
            _make_durable(folder)

    def _copy_into_place(self, item: UploadItem, dest: Path, transfer: Transfer) -> bool:
        """Copy (or link) and verify ``item`` at ``dest``; :meth:`make_durable` makes it safe.

        False if another file took the name meanwhile.
        """
        tmp = _part_name(dest, item)
        try:
            self._copy(item, tmp, transfer)
            try:
                os.link(tmp, dest)
            except FileExistsError:
                return False
            except OSError as exc:
                raise _target_error(dest, exc) from exc
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _make_folder(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            device = folder.stat().st_dev
            if device != self.root.stat().st_dev:  # another filesystem mounted in the archive
                self._mounted.setdefault(device, folder)
        except OSError as exc:
            raise _target_error(folder, exc) from exc
        self._folders.add(folder)

    def _again_in_new_folder(self, dest: Path, call: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``call``, once more after making ``dest``'s folder if someone removed it meanwhile."""
        try:
            return call(*args, **kw)
        except FileNotFoundError:
            if dest.parent.is_dir():
                raise  # the source is what is missing
            self._make_folder(dest.parent)
            return call(*args, **kw)

    def _link_spooled(self, item: UploadItem, dest: Path, transfer: Transfer) -> bool | None:
        """Hard-link the spool's copy to ``dest``.

        False if the name is taken, None when this filesystem cannot link.
        """
        try:
            # The copy is the daemon's own: one lstat checks it (no open, fstat and close).
            info = os.stat(item.path, follow_symlinks=False)
        except OSError as exc:
            raise SourceError(f"{item.path}: cannot open: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(f"{item.path}: not a regular file")
        if info.st_size != item.size or info.st_mtime_ns != item.mtime_ns:
            raise FileChangedError(f"{item.path}: changed since it was hashed")
        try:
            self._again_in_new_folder(dest, os.link, item.path, dest, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise _target_error(dest, exc) from exc
            self._can_link = False  # another filesystem (or a share without links)
            return None
        transfer.progress(item.size)
        return True

    def _copy(self, item: UploadItem, tmp: Path, transfer: Transfer) -> None:
        with item.reading() as read:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            try:
                out = self._again_in_new_folder(tmp, os.open, tmp, flags, 0o644)
            except OSError as exc:
                raise _target_error(tmp, exc) from exc
            try:
                for chunk in read.chunks():
                    try:
                        write_all(out, chunk)
                    except OSError as exc:
                        raise _target_error(tmp, exc) from exc
                    transfer.progress(len(chunk))
            finally:
                os.close(out)
            read.finish()

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Start ``process_command`` (if configured) for the dataset's folder."""
        del keys  # the dataset folder holds exactly the uploaded files
        folder = self.dataset_dir(dataset)
        values = {"dataset": dataset.name, "dataset_dir": str(folder)}
        return await self._command.start(dataset, folder, values)

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """Whether the dataset's ``process_command`` is still running, and how it ended."""
        return await self._command.status(dataset, handle)

    async def aclose(self) -> None:
        """Stop running process commands (the service is stopping)."""
        await self._command.aclose()


def _part_name(dest: Path, item: UploadItem) -> Path:
    """The temporary name of a copy in progress, the same for every attempt of one file.

    An attempt cut short by a crash is overwritten by the next one instead of left behind.
    """
    stem = os.fsencode(dest.name)[:100]
    return dest.parent / os.fsdecode(
        b"." + stem + b"." + item.sha256[:16].encode() + b".dronesync-part"
    )


def _make_durable(folder: Path) -> None:
    """The folder's new entries and the files they name are on the disk when this returns."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            DURABILITY.make_durable(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _target_error(folder, exc) from exc
