"""Group commit: every writer waits for a sync that began after its write, and shares it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from daemon import durable
from daemon.durable import GroupSync
from tests.conftest import wait_until


def test_a_lone_writer_gets_its_own_sync(tmp_path: Path) -> None:
    path = tmp_path / "a"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"image")
        GroupSync().wait(fd)  # returns: nothing to wait for but its own sync
    finally:
        os.close(fd)
    assert path.read_bytes() == b"image"


def test_writers_arriving_during_a_sync_share_the_next_one() -> None:
    """While one sync runs, every writer that arrives is covered by one more, not one each."""
    first_running = threading.Event()
    release_first = threading.Event()
    calls: list[int] = []

    def syncfs(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            first_running.set()
            assert release_first.wait(10)

    group = GroupSync(syncfs)
    first = threading.Thread(target=group.wait, args=(1,))
    first.start()
    assert first_running.wait(10)
    late = [threading.Thread(target=group.wait, args=(2,)) for _ in range(6)]
    for thread in late:
        thread.start()
    # All six are queued behind the running sync before it is let go.
    wait_until(lambda: group._waiters.get(2) == 6, what="six writers queued")
    release_first.set()
    for thread in [first, *late]:
        thread.join(10)
    assert len(calls) == 2


def test_a_failed_sync_fails_the_writer_that_waited_for_it_and_is_not_remembered() -> None:
    results: list[OSError | None] = []

    def syncfs(fd: int) -> None:
        if not results:
            raise OSError(5, "Input/output error")

    group = GroupSync(syncfs)
    with pytest.raises(OSError, match="Input/output error"):
        group.wait(1)
    results.append(None)
    group.wait(1)  # the next sync succeeds, and so does its writer
    assert group._failed == {}


def test_the_real_syncfs_accepts_any_descriptor_on_the_filesystem(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        durable.syncfs(fd)
        durable.DURABILITY.make_durable(fd)
    finally:
        os.close(fd)
