"""Content identity: SHA-256, read in chunks into one reused buffer per thread.

:func:`hash_file` makes the hash trustworthy for a file that might still be changing: it
refuses anything that is not a regular file, reads exactly the size the stability gate saw,
and compares size and mtime before and after reading. hashlib releases the GIL, so worker
threads hash in parallel with the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import struct
import threading
import time
from collections.abc import Iterator
from functools import cache
from typing import NamedTuple

from daemon.errors import FileChangedError, SourceError, SpoolError

# A path as the hot paths take it: a str costs nothing to make, a Path a few microseconds.
StrPath = str | os.PathLike[str]

CHUNK = 1024 * 1024
_buffers = threading.local()


def chunk_buffer() -> bytearray:
    """A read buffer of :data:`CHUNK` bytes for the calling thread, made once and reused.

    A fresh 1 MiB ``bytearray`` per file is a zeroed ``mmap`` and its page faults: for a
    small image that costs more than reading and hashing it.
    """
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = bytearray(CHUNK)
    return buffer


class Hashed(NamedTuple):
    """A file's content hash, the size and mtime it had while being read, and its seal.

    (A named tuple, not a dataclass: the hashing processes import this module, and
    ``dataclasses`` would cost each of them a MB.)
    """

    sha256: str
    size: int
    mtime_ns: int
    seal: int | None = None  # :func:`seal_of` the file read, when it may be recorded


_SEAL = struct.Struct("<16sQQQqqq")
# A ctime this near the read's start may yet be shared by a write in the same clock tick
# (FAT's 10 ms, a coarse kernel clock's jiffy, ext's second): the read records no seal.
RACY_NS = 2_000_000_000


@cache
def _boot_id() -> bytes | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return bytes.fromhex(fh.read().strip().replace("-", ""))
    except (OSError, ValueError):
        return None


# Per device, which of its two paths held the disk's sequence number last time (a disk's own,
# or a partition's disk's): tried first, so a read is one open of sysfs, not two.
_DISKSEQ_PATHS: dict[int, tuple[str, str]] = {}


def _diskseq(dev: int) -> int | None:
    """The kernel's sequence number of the disk holding ``dev`` (a partition's is its disk's).

    Read afresh each time (a medium changed in a reader renews it), with ``os.open``: a
    file object costs twice the open itself, and this runs twice for every file read.
    """
    paths = _DISKSEQ_PATHS.get(dev)
    if paths is None:
        base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        paths = (f"{base}/diskseq", f"{base}/../diskseq")
    for n, path in enumerate(paths):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            value = int(os.read(fd, 32))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        _DISKSEQ_PATHS[dev] = paths if n == 0 else (paths[1], paths[0])
        return value
    return None


def seal_of(info: os.stat_result) -> int | None:
    """What tells, later in the same boot, that a file is still the very file that was read.

    The boot, the disk's sequence number, the device, the inode number, size, mtime and ctime,
    folded into 64 bits. No one can set a ctime: a write, a truncation or a ``utime`` moves it,
    and another file renamed into place is another inode. The kernel gives every disk it
    attaches a new sequence number (``diskseq``), and a new one when a reader's medium changes,
    so a card swapped for another, even one with the same names, sizes and mtimes, is another
    disk; a reboot is another boot. None where no disk stands behind the file (FUSE, NFS,
    tmpfs, btrfs: no sequence number, and inode numbers that may repeat), or on a kernel
    without ``diskseq`` (before 5.15).
    """
    boot = _boot_id()
    if boot is None or os.major(info.st_dev) == 0:
        return None
    disk = _diskseq(info.st_dev)
    if disk is None:
        return None
    packed = _SEAL.pack(
        boot,
        disk,
        info.st_dev,
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little", signed=True)


def open_regular(path: StrPath) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without following a symlink or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open: {exc.strerror}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SourceError(f"{path}: not a regular file")
    # O_NONBLOCK stays: it has no effect on a regular file (open(2)), and every system call
    # saved per file is a hand-over of the GIL saved on a card of small images.
    if info.st_size > CHUNK and hasattr(os, "posix_fadvise"):
        # Read-ahead is a hint: a seccomp filter or an odd filesystem may refuse it.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd, info


def read_chunks(fd: int, size: int, path: StrPath) -> Iterator[memoryview]:
    """The ``size`` bytes of ``fd`` from its offset, as views of the thread's buffer.

    Reads stop at ``size`` (no read just to meet the end); a file that ends sooner changed
    since it was seen, and one that grew shows in the caller's ``fstat`` afterwards. A view
    is valid until the next one is taken.
    """
    buffer = chunk_buffer()
    view = memoryview(buffer)
    left = size
    while left:
        try:
            count = os.readv(fd, [view[: min(left, CHUNK)]])
        except OSError as exc:
            raise SourceError(f"{path}: read error: {exc.strerror}") from exc
        if not count:
            raise FileChangedError(f"{path}: shorter than when it was seen stable")
        left -= count
        yield view[:count]


class StableRead:
    """One read of a file that must be the one seen before: hashed as it is read, checked after.

    ``seen`` names when the size and mtime were taken ("seen stable", "hashed"), ``doing`` what
    the read is for ("hashed", "uploaded"); both go into the error. With ``expect`` (the
    recorded SHA-256) the last chunk is withheld unless the content matches it, so a caller
    that sends chunks as they come never sends a whole file that is not the recorded one.
    With ``hash_content`` false the bytes are not hashed here: the caller vouches for them
    another way (the store checks them against ``expect``, or the file is the daemon's own
    copy); size and mtime are still checked. Nor are they when the open file still has
    ``seal``, the :func:`seal_of` it had when ``expect`` was taken: it is that very read's
    file, unchanged. Use as a context manager: the file is open inside the block only.
    """

    __slots__ = (
        "_ctime_ns",
        "_digest",
        "_doing",
        "_expect",
        "_fd",
        "_mtime_ns",
        "_path",
        "_seal",
        "_seen",
        "_size",
    )

    def __init__(
        self,
        path: StrPath,
        size: int,
        mtime_ns: int,
        *,
        expect: str | None = None,
        seen: str = "seen stable",
        doing: str = "hashed",
        hash_content: bool = True,
        seal: int | None = None,
    ) -> None:
        self._path = path
        self._size = size
        self._mtime_ns = mtime_ns
        self._expect = expect
        self._seen = seen
        self._doing = doing
        self._digest = hashlib.sha256() if hash_content or expect is None else None
        self._seal = seal
        self._ctime_ns = 0
        self._fd = -1

    def __enter__(self) -> StableRead:
        fd, before = open_regular(self._path)
        if before.st_size != self._size or before.st_mtime_ns != self._mtime_ns:
            os.close(fd)
            raise FileChangedError(f"{self._path}: changed since it was {self._seen}")
        self._fd = fd
        sealed = seal_of(before)
        if self._seal is not None and sealed == self._seal and self._expect is not None:
            self._digest = None  # the very file hashed into ``expect``, unchanged since
        self._seal = sealed
        self._ctime_ns = before.st_ctime_ns
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    @property
    def hashes(self) -> bool:
        """Whether the content is hashed as it is read (else it is left to the caller)."""
        return self._digest is not None

    @property
    def seal(self) -> int | None:
        """The open file's :func:`seal_of`, as it was opened (None: it has none)."""
        return self._seal

    def seal_to_record(self, started_ns: int) -> int | None:
        """The seal, unless the ctime was within :data:`RACY_NS` of ``started_ns``.

        A write in the clock tick of that ctime would leave it as it was: what this read saw
        may not be what the file holds, and no later read may be spared on its word.
        """
        if abs(started_ns - self._ctime_ns) < RACY_NS:
            return None
        return self._seal

    @property
    def fd(self) -> int:
        """The open file (for a caller that seeks back to send it again)."""
        return self._fd

    def chunks(self) -> Iterator[memoryview]:
        """The file's bytes (views of the thread's buffer, each valid until the next)."""
        left = self._size
        digest = self._digest
        for chunk in read_chunks(self._fd, self._size, self._path):
            if digest is not None:
                digest.update(chunk)
            left -= len(chunk)
            if not left:
                self._check_content()
            yield chunk
        if not self._size:
            self._check_content()

    def finish(self) -> str:
        """The content's SHA-256, once the file is known unchanged by the read.

        Without ``hash_content``, that is ``expect``, not verified here.
        """
        self._check_unchanged()
        self._check_content()
        if self._digest is not None:
            return self._digest.hexdigest()
        return self._expect or ""  # not hashed here: only with an ``expect``

    def _check_unchanged(self) -> None:
        after = os.fstat(self._fd)
        if (
            after.st_size != self._size
            or after.st_mtime_ns != self._mtime_ns
            or seal_of(after) != self._seal  # written and its mtime set back
        ):
            raise FileChangedError(f"{self._path}: changed while it was being {self._doing}")

    def _check_content(self) -> None:
        if self._digest is None:
            return  # not hashed here: the caller vouches for the content
        if self._expect is not None and self._digest.hexdigest() != self._expect:
            self._check_unchanged()  # the likelier story, when it is the true one
            raise FileChangedError(f"{self._path}: content differs from its recorded hash")


def hash_file(path: StrPath, size: int, mtime_ns: int, *, now_ns: int | None = None) -> Hashed:
    """Hash ``path``, which the stability gate saw with ``size`` and ``mtime_ns``.

    Raises FileChangedError when the file is not the one the gate saw, before or after
    reading, so that a file being written is never recorded with a partial hash. ``now_ns``
    is when the read starts (wall clock), for its seal.
    """
    started = time.time_ns() if now_ns is None else now_ns
    with StableRead(path, size, mtime_ns) as read:
        for _ in read.chunks():
            pass
        return Hashed(read.finish(), size, mtime_ns, read.seal_to_record(started))


def spool_file(
    path: StrPath, size: int, mtime_ns: int, dest: StrPath, *, durable: bool = True
) -> Hashed:
    """Copy ``path`` to ``dest`` while hashing it: one read of the card for both.

    A first copy is written straight to ``dest``: nothing records it before this returns, and
    a copy cut short (by a change of the file, a full disk or a crash) is deleted, here or by
    the spool's next start, which drops every copy the journal does not name. Where ``dest``
    exists already (a copy recorded earlier, for a file that changed since), the new copy is
    written to ``dest.part`` and renamed over it only once complete, so the recorded one stays
    whole until then. On a card of small images the rename saved is a system call per file,
    and a wait on the folder's lock while the other hashing process creates its copy there.
    The copy is on the disk, name included, when this returns, unless ``durable`` is false:
    then the caller makes it durable (with other copies).
    """
    written: StrPath | None = None  # the file this call created, deleted if the copy fails
    try:
        with StableRead(path, size, mtime_ns, doing="copied") as read:
            out, written = _create_copy(dest)
            try:
                for chunk in read.chunks():
                    try:
                        write_all(out, chunk)
                    except OSError as exc:
                        raise SpoolError(
                            f"{written}: cannot write the spool: {exc.strerror}"
                        ) from exc
                digest = read.finish()
                # The copy carries the card's mtime: the upload checks it as for the card.
                os.utime(out, ns=(mtime_ns, mtime_ns))
                if written != dest:
                    os.replace(written, dest)
                    written = None  # dest now: whole, and what the hash describes
                try:
                    if durable:
                        # Imported here: hashing processes never sync; ctypes costs each a MB.
                        from daemon.durable import DURABILITY  # noqa: PLC0415

                        DURABILITY.make_durable(out)
                except OSError as exc:
                    raise SpoolError(f"{dest}: cannot write the spool: {exc.strerror}") from exc
            finally:
                os.close(out)
    except BaseException:
        if written is not None:
            with contextlib.suppress(OSError):
                os.unlink(written)
        raise
    # No seal: a copy just written is in its ctime's clock tick, and needs none (spooled).
    return Hashed(digest, size, mtime_ns)


def write_all(fd: int, chunk: memoryview | bytes) -> None:
    """Write the whole of ``chunk`` (a write may take part of it); OSError as the system says."""
    written = 0
    while written < len(chunk):
        written += os.write(fd, chunk[written:])


def _create_copy(dest: StrPath) -> tuple[int, StrPath]:
    """Open a new file for the copy: ``dest`` itself if it does not exist, else ``dest.part``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    # 0644 like a copy in the archive: the directory target may hard-link this file.
    try:
        return os.open(dest, flags | os.O_EXCL, 0o644), dest
    except FileExistsError:
        part = os.fspath(dest) + ".part"
        try:
            return os.open(part, flags | os.O_TRUNC, 0o644), part
        except OSError as exc:
            raise SpoolError(f"{part}: cannot write the spool: {exc.strerror}") from exc
    except OSError as exc:
        raise SpoolError(f"{dest}: cannot write the spool: {exc.strerror}") from exc
