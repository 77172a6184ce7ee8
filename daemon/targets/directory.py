"""The directory target: a local folder or a mounted NAS share (the embedded default).

Each dataset is a sub-folder named after it; each file keeps its path inside the dataset
folder. A file is copied to a temporary name in its destination folder while it is hashed in
the same read, checked against the recorded hash, and then linked into place with ``link()``,
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

Processing runs ``process_command`` once per dataset; its output goes to
``<state_dir>/processing/<dataset>.log`` and its exit code decides processed or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from daemon.config import DirectoryTargetConfig
from daemon.durable import DURABILITY
from daemon.errors import (
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TransientTargetError,
)
from daemon.hashing import CHUNK, open_regular, read_chunks
from daemon.targets.base import DatasetRef, ProcessingStatus, Transfer, UploadItem

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
# Runs process_command: first records its own pid in a file ($1), so a daemon killed while
# starting it never starts a second one; then records the command's exit code in a file ($0),
# so a daemon restarted while the command ran (in its own session) still learns how it ended.
_RECORD_EXIT = (
    'echo $$ > "$1.tmp" && mv -f "$1.tmp" "$1"; shift; '
    'code=0; "$@" || code=$?; echo "$code" > "$0.tmp"; mv -f "$0.tmp" "$0"; exit "$code"'
)


@dataclass(slots=True)
class _Run:
    process: asyncio.subprocess.Process
    log: Path
    started: float


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
        if path.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise _target_error(path, exc) from exc
    return digest.hexdigest() == sha256


class DirectoryTarget:
    """Copies datasets into sub-folders of a local or mounted folder."""

    poll_interval_s = 1.0

    def __init__(self, name: str, config: DirectoryTargetConfig, log_dir: Path) -> None:
        self.name = name
        self.config = config
        self.root = config.path
        self.log_dir = log_dir
        self._runs: dict[int, _Run] = {}
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
        src, info = open_regular(item.path)
        try:
            if info.st_size != item.size or info.st_mtime_ns != item.mtime_ns:
                raise FileChangedError(f"{item.path}: changed since it was hashed")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            try:
                out = self._again_in_new_folder(tmp, os.open, tmp, flags, 0o644)
            except OSError as exc:
                raise _target_error(tmp, exc) from exc
            try:
                digest = self._pump(src, out, item, tmp, transfer)
            finally:
                os.close(out)
            after = os.fstat(src)
        finally:
            os.close(src)
        if after.st_size != item.size or after.st_mtime_ns != item.mtime_ns:
            raise FileChangedError(f"{item.path}: changed while it was being uploaded")
        if digest != item.sha256:
            raise FileChangedError(f"{item.path}: content differs from its recorded hash")

    @staticmethod
    def _pump(src: int, out: int, item: UploadItem, tmp: Path, transfer: Transfer) -> str:
        digest = hashlib.sha256()
        for chunk in read_chunks(src, item.size, item.path):
            digest.update(chunk)
            written = 0
            while written < len(chunk):
                try:
                    written += os.write(out, chunk[written:])
                except OSError as exc:
                    raise _target_error(tmp, exc) from exc
            transfer.progress(len(chunk))
        return digest.hexdigest()

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Start ``process_command`` (if configured) for the dataset's folder."""
        del keys  # the dataset folder holds exactly the uploaded files
        command = self.config.process_command
        if not command:
            return ""
        pid_file = self._pid_file(dataset)
        try:
            # Started already, by a daemon killed before it could record the start: the
            # same run is followed, never a second one.
            return pid_file.read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        values = {"dataset": dataset.name, "dataset_dir": str(self.dataset_dir(dataset))}
        argv = [arg.format(**values) for arg in command]
        if shutil.which(argv[0]) is None:
            raise PermanentTargetError(
                f"cannot run process_command {argv[0]!r}: not found or not executable"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{dataset.name}.log"
        exit_file = self._exit_file(dataset)
        exit_file.unlink(missing_ok=True)
        with log.open("ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {argv!r}\n".encode())
            out.flush()
            try:
                process = await asyncio.create_subprocess_exec(
                    "/bin/sh",
                    "-c",
                    _RECORD_EXIT,
                    str(exit_file),
                    str(pid_file),
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=self.dataset_dir(dataset),
                    start_new_session=True,
                )
            except OSError as exc:
                raise PermanentTargetError(
                    f"cannot run process_command {argv[0]!r}: {exc.strerror}"
                ) from exc
        self._runs[dataset.id] = _Run(process, log, time.monotonic())
        return str(process.pid)

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """Whether the dataset's ``process_command`` is still running, and how it ended."""
        status = await self._status(dataset, handle)
        if status.state != "running":
            self._pid_file(dataset).unlink(missing_ok=True)  # a later `process` runs it anew
        return status

    async def _status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        if not handle:
            return ProcessingStatus("done", "no process_command configured")
        run = self._runs.get(dataset.id)
        if run is None:
            return self._status_after_restart(dataset, handle)
        code = run.process.returncode
        if code is None:
            if time.monotonic() - run.started > self.config.process_timeout_s:
                _terminate(run.process)
                await run.process.wait()
                del self._runs[dataset.id]
                return ProcessingStatus(
                    "failed", f"process_command ran past process_timeout_s; see {run.log}"
                )
            return ProcessingStatus("running")
        del self._runs[dataset.id]
        if code == 0:
            return ProcessingStatus("done", f"process_command exited 0; output in {run.log}")
        return ProcessingStatus("failed", f"process_command exited {code}; see {run.log}")

    def _pid_file(self, dataset: DatasetRef) -> Path:
        return self.log_dir / f"{dataset.name}.pid"

    def _exit_file(self, dataset: DatasetRef) -> Path:
        return self.log_dir / f"{dataset.name}.exit"

    def _status_after_restart(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """The command outlived a daemon that was killed: its exit file tells how it ended."""
        log = self.log_dir / f"{dataset.name}.log"
        try:
            code = int(self._exit_file(dataset).read_text(encoding="ascii").strip())
        except FileNotFoundError:
            try:
                os.kill(int(handle), 0)
            except (OSError, ValueError):
                return ProcessingStatus(
                    "failed",
                    "processing was interrupted by a restart; `dronesync process` runs it again",
                )
            return ProcessingStatus("running", f"process_command (pid {handle}) still running")
        except (OSError, ValueError):
            return ProcessingStatus("failed", f"cannot read how process_command ended; see {log}")
        if code == 0:
            return ProcessingStatus("done", f"process_command exited 0; output in {log}")
        return ProcessingStatus("failed", f"process_command exited {code}; see {log}")

    async def aclose(self) -> None:
        """Stop running process commands (the service is stopping)."""
        for run in self._runs.values():
            if run.process.returncode is None:
                _terminate(run.process)
        for run in self._runs.values():
            await run.process.wait()
        self._runs.clear()


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


def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the command's whole process group (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
