"""The hashing processes: batches go out through a pipe and their outcomes come back in order;
a process that ends is replaced, and the files it held end in HashingError, not in a failure."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sys
import time
from pathlib import Path

from daemon.errors import HashingError, SourceError
from daemon.hashing import Hashed
from daemon.hashworker import Job, Outcome
from daemon.sources.hashpool import HashPool
from tests.conftest import Box, wait_until

DEADLINE_S = 20.0


def _children_of(pid: int) -> set[int]:
    """The live children of ``pid``: its hashing processes."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if stat[1] == str(pid) and stat[0] != "Z":
            found.add(int(entry.name))
    return found


def _children() -> set[int]:
    """This process's children: the pool's hashing processes."""
    return _children_of(os.getpid())


def _images(folder: Path, count: int) -> list[tuple[Path, bytes]]:
    """Images whose names a card may really hold: not UTF-8, with a newline, very long."""
    rng = random.Random(7)
    folder.mkdir()
    names = [b"DJI_%04d.JPG" % n for n in range(count)]
    names[1] = b"caf\xe9.JPG"  # Latin-1 from an old camera
    names[2] = b"two\nlines.JPG"
    names[3] = b"x" * 250 + b".JPG"
    images = []
    for name in names:
        path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
        data = rng.randbytes(rng.randrange(1, 300_000))
        path.write_bytes(data)
        images.append((path, data))
    return images


def _job(path: Path, copy_to: Path | None = None) -> Job:
    info = path.stat()
    return (os.fsdecode(path), info.st_size, info.st_mtime_ns, copy_to and os.fsdecode(copy_to))


def test_each_batch_comes_back_whole_and_in_order(tmp_path: Path) -> None:
    images = _images(tmp_path / "card", 40)
    spool = tmp_path / "spool"
    spool.mkdir()
    jobs = [
        _job(path, spool / f"{n}.img" if n % 3 == 0 else None) for n, (path, _) in enumerate(images)
    ]
    jobs.insert(5, (os.fsdecode(tmp_path / "card" / "pulled.JPG"), 10, 0, None))

    async def run() -> tuple[list[list[Outcome]], set[int], set[int]]:
        pool = HashPool(2)
        try:
            batches = [pool.submit(jobs[n : n + 4]) for n in range(0, len(jobs), 4)]
            outcomes = await asyncio.wait_for(asyncio.gather(*batches), DEADLINE_S)
            running = _children()
        finally:
            await pool.aclose()
        return outcomes, running, _children()

    batches, running, left = asyncio.run(run())
    outcomes = [outcome for batch in batches for outcome in batch]
    missing = outcomes.pop(5)
    assert isinstance(missing, SourceError)
    for n, ((path, data), outcome) in enumerate(zip(images, outcomes, strict=True)):
        assert isinstance(outcome, Hashed), (path, outcome)
        assert outcome.sha256 == hashlib.sha256(data).hexdigest()
        if n % 3 == 0:
            assert (spool / f"{n}.img").read_bytes() == data  # copied while hashed
    assert len(running) == 2  # both processes took batches
    assert left == set()  # none outlives the pool


def test_a_killed_process_is_replaced_and_its_files_are_not_failed(tmp_path: Path) -> None:
    (path, data), *_ = _images(tmp_path / "card", 4)

    async def run() -> tuple[int, list[Outcome], Outcome, set[int]]:
        pool = HashPool(1)
        try:
            await asyncio.wait_for(pool.submit([_job(path)]), DEADLINE_S)
            (first,) = _children()
            os.kill(first, signal.SIGKILL)
            # Batches sent before the loss shows end in HashingError; then a new process.
            lost: list[Outcome] = []
            deadline = asyncio.get_running_loop().time() + DEADLINE_S
            while asyncio.get_running_loop().time() < deadline:
                (outcome,) = await asyncio.wait_for(pool.submit([_job(path)]), DEADLINE_S)
                if not isinstance(outcome, HashingError):
                    break
                lost.append(outcome)
            return first, lost, outcome, _children()
        finally:
            await pool.aclose()

    first, lost, outcome, now = asyncio.run(run())
    assert all(isinstance(o, HashingError) and "exit code -9" in str(o) for o in lost), lost
    assert isinstance(outcome, Hashed)
    assert outcome.sha256 == hashlib.sha256(data).hexdigest()
    assert len(now) == 1
    assert first not in now


def test_an_ingest_goes_on_when_its_hashing_processes_are_killed(box: Box) -> None:
    box.write_config()
    rng = random.Random(3)
    flight = box.root / "flight"
    flight.mkdir()
    expected = set()
    for n in range(300):
        data = rng.randbytes(200_000)
        (flight / f"DJI_{n:04d}.JPG").write_bytes(data)
        expected.add(hashlib.sha256(data).hexdigest())
    proc = box.start()
    flight.rename(box.inbox / "flight")
    killed: set[int] = set()
    deadline = time.monotonic() + DEADLINE_S
    while len(killed) < 4 and _uploaded(box) < len(expected) and time.monotonic() < deadline:
        for pid in _children_of(proc.pid) - killed:
            os.kill(pid, signal.SIGKILL)  # mid-batch or between two: either must lose nothing
            killed.add(pid)
        time.sleep(0.005)  # polling for the next process, as wait_until does
    assert killed
    wait_until(lambda: _uploaded(box) == len(expected), timeout=60, what="every image uploaded")
    (dataset,) = box.status()["datasets"]
    assert dataset["files"]["failed"] == 0
    archived = {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in box.archive.rglob("*.JPG")
        if ".dronesync-staging" not in p.parts
    }
    assert archived == expected
    log = box.log()
    assert "hashing process ended" in log
    assert "file failed" not in log  # not the files' fault: read again, not failed
    assert box.stop(proc) == 0
    assert _children_of(proc.pid) == set()  # none left behind


def _uploaded(box: Box) -> int:
    return sum(d["files"]["uploaded"] for d in box.status()["datasets"])


def _one_batch(argv: tuple[str, ...], jobs: list[Job]) -> list[Outcome]:
    """The outcomes of one batch sent to a pool of one process run as ``argv``."""

    async def run() -> list[Outcome]:
        pool = HashPool(1, argv=argv)
        try:
            return await asyncio.wait_for(pool.submit(jobs), DEADLINE_S)
        finally:
            await pool.aclose()

    return asyncio.run(run())


def test_a_process_that_cannot_start_ends_its_files_in_hashing_error(tmp_path: Path) -> None:
    (path, _), *_ = _images(tmp_path / "card", 4)

    outcomes = _one_batch((os.fspath(tmp_path / "no-such-python"),), [_job(path), _job(path)])
    assert len(outcomes) == 2
    assert all(isinstance(o, HashingError) for o in outcomes)
    assert "cannot start a hashing process" in str(outcomes[0])


def test_a_process_that_answers_garbage_is_replaced_and_its_files_wait(tmp_path: Path) -> None:
    (path, _), *_ = _images(tmp_path / "card", 4)
    liar = tmp_path / "liar.py"
    # A process that reads a batch and answers with a well-framed message that is not a pickle.
    liar.write_text(
        "import struct, sys\n"
        "header = sys.stdin.buffer.read(4)\n"
        "sys.stdin.buffer.read(struct.unpack('>I', header)[0])\n"
        "sys.stdout.buffer.write(struct.pack('>I', 5) + b'junk!')\n"
        "sys.stdout.buffer.flush()\n"
        "sys.stdin.buffer.read()\n"
    )

    outcomes = _one_batch((sys.executable, os.fspath(liar)), [_job(path), _job(path)])
    # Not left waiting forever, and not failed: read again, by the next process.
    assert len(outcomes) == 2
    assert all(isinstance(o, HashingError) for o in outcomes)
    assert "unreadable answer from the hashing process" in str(outcomes[0])
    assert _children() == set()
