"""Making written files durable together: group commit for the filesystem.

A file is only called uploaded (or copied into the spool) once its bytes and its name are on
the disk. Doing that with ``fsync`` on the file and on its folder costs two journal commits of
the filesystem per file: for small images that, not the copying, is what bounds the rate.
Here every thread that needs its writes durable waits for one ``syncfs`` that *started after*
its writes ended; while one runs, the threads that arrive queue for the next, which covers all
of them. The callers ask once per batch, not per file: the upload engine for the uploads that
landed meanwhile, the hasher for the spool or staging copies it made, each gathering for up
to :data:`GATHER_S` first. A sync of a filesystem with nothing dirty is nearly free.

``syncfs`` reports a writeback error of the filesystem (Linux ≥ 5.8 per open file), so a
failed sync fails every file that waited for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable

# Writers that can wait a moment (copies not yet recorded, uploads not yet called uploaded)
# gather for up to GATHER_S, or until GATHER_FILES are ready, before they ask for a sync: each
# sync makes the filesystem commit its journal, and every file created or linked meanwhile
# waits for that commit, so a sync per few files slows the copying it is meant to protect.
GATHER_S = 0.05
GATHER_FILES = 64


def _load_syncfs() -> ctypes._NamedFuncPointer | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):  # not glibc/musl on Linux: fall back to fsync
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def syncfs(fd: int) -> None:
    """Write back everything dirty on the filesystem that holds ``fd`` (``fsync`` if unknown)."""
    if _SYNCFS is None:
        os.fsync(fd)
        return
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno() or errno.EIO
        raise OSError(code, os.strerror(code))


class GroupSync:
    """One filesystem's group commit: callers share the ``syncfs`` calls."""

    def __init__(self, sync: Callable[[int], None] = syncfs) -> None:
        self._syncfs = sync
        self._cond = threading.Condition()
        self._started = 0  # syncs begun
        self._finished = 0  # syncs ended (in order: one runs at a time)
        self._running = False
        self._waiters: dict[int, int] = {}  # sync number -> callers waiting for it
        self._failed: dict[int, OSError] = {}  # failed syncs someone still waits for

    def wait(self, fd: int) -> None:
        """Return once a sync that began after this call has ended; raise its error if any.

        ``fd`` is any open descriptor on the filesystem (the caller's written file).
        """
        with self._cond:
            needed = self._started + 1
            self._waiters[needed] = self._waiters.get(needed, 0) + 1
            while self._finished < needed:
                if self._running:
                    self._cond.wait()
                else:
                    self._sync(fd)
            self._waiters[needed] -= 1
            error = self._failed.get(needed)
            if not self._waiters[needed]:
                del self._waiters[needed]
                self._failed.pop(needed, None)
        if error is not None:
            raise OSError(error.errno, error.strerror)

    def _sync(self, fd: int) -> None:
        """Run the next sync with the lock released; called with the lock held."""
        self._running = True
        self._started += 1
        number = self._started
        self._cond.release()
        error: OSError | None = None
        try:
            self._syncfs(fd)
        except OSError as exc:
            error = exc
        finally:
            self._cond.acquire()
            self._running = False
            self._finished = number
            if error is not None and number in self._waiters:
                self._failed[number] = error
            self._cond.notify_all()


class Durability:
    """Group syncs by filesystem (``st_dev``), shared by every writer in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, GroupSync] = {}

    def make_durable(self, fd: int) -> None:
        """Block until what was written through ``fd``, and its name, is on the disk."""
        device = os.fstat(fd).st_dev
        with self._lock:
            group = self._groups.setdefault(device, GroupSync())
        group.wait(fd)


DURABILITY = Durability()
