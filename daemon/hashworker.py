"""A hashing process: reads, hashes and copies the batches of files the daemon sends it.

Run as ``python -m daemon.hashworker`` by :class:`daemon.sources.hashpool.HashPool`. It reads
batches from stdin and writes each batch's outcomes to stdout, in order, until stdin ends.

Why a process and not a thread: a card of small images is a great many short system calls
(open, read, write, close), and a hashing *thread* hands the GIL to the event loop at every one
of them and then waits to get it back. On a two-core box those hand-overs, not the hashing,
bounded the rate (about ten context switches per image). A process has a GIL of its own: one
hand-over per batch, through a pipe. This module imports nothing heavier than
:mod:`daemon.hashing`, so each process costs a few MB.

Each message is a 4-byte big-endian length and a pickle: a list of jobs ``(path, size,
mtime_ns, copy_to)`` one way, a list of outcomes (:class:`~daemon.hashing.Hashed` or the
file's error) the other. Pickle is safe here: both ends are this package, over a pipe that
only they hold.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from collections.abc import Sequence
from typing import BinaryIO

from daemon.errors import DronesyncError
from daemon.hashing import Hashed, StrPath, hash_file, spool_file

# One file to read: its path, the size and mtime the stability gate saw, and where to copy it
# while hashing (a spool or staging copy), or None.
Job = tuple[StrPath, int, int, StrPath | None]
# What one file read ends in: its hash, or why it was not hashed.
Outcome = Hashed | BaseException

_HEADER = struct.Struct(">I")


def read_batch(jobs: Sequence[Job]) -> list[Outcome]:
    """Hash (or copy while hashing) each file; one that cannot be read ends in its error.

    Copies are not made durable here: the daemon makes every copy finished meanwhile durable
    with one ``syncfs`` before it records any of them.
    """
    outcomes: list[Outcome] = []
    for path, size, mtime_ns, dest in jobs:
        try:
            if dest is None:
                outcomes.append(hash_file(path, size, mtime_ns))
            else:
                outcomes.append(spool_file(path, size, mtime_ns, dest, durable=False))
        except DronesyncError as exc:
            outcomes.append(exc)
        except Exception as exc:  # noqa: BLE001 (a bug: the daemon logs it, the batch goes on)
            outcomes.append(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return outcomes


def encode(message: object) -> bytes:
    """One message: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def length(header: bytes) -> int:
    """The length of the message that follows ``header`` (the first 4 bytes of a message)."""
    (size,) = _HEADER.unpack(header)
    return int(size)


HEADER_SIZE = _HEADER.size


def _read_message(stream: BinaryIO) -> object | None:
    header = stream.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE:
        return None  # the daemon closed the pipe: it is stopping
    message: object = pickle.loads(stream.read(length(header)))  # noqa: S301 (see the docstring)
    return message


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer each batch read from ``requests`` with its outcomes, until ``requests`` ends."""
    while (jobs := _read_message(requests)) is not None:
        answers.write(encode(read_batch(jobs)))  # type: ignore[arg-type]
        answers.flush()


def main() -> None:
    """The process's entry point: stdin and stdout are the pipes to the daemon."""
    # Ctrl-C in a terminal reaches the whole process group: the daemon decides when this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Answers get a descriptor of their own, and fd 1 becomes stderr: nothing printed by
    # accident can garble them.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
