"""The conformance suite: every registered target type passes the same checks.

A new target joins by adding its harness module under ``harnesses/`` (see ``harness.py``); the
suite then proves it stores files byte-identical, never twice, never from a file that changed,
stops when a transfer is aborted, tells transient from permanent failures (and a server's
Retry-After, and a refused sign-in), keeps what it stored across a restart, and reports
processing, finished or failed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
from pathlib import Path

import pytest

from daemon.errors import (
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TargetError,
    TargetPausedError,
    TransientTargetError,
)
from daemon.targets.base import ProcessingStatus, Transfer
from daemon.targets.registry import TYPES
from tests.conformance.harness import (
    DS,
    FAULTS,
    RETRY_AFTER_S,
    Fault,
    Harness,
    finish,
    item_for,
    leftovers,
    run,
    source,
)
from tests.conftest import rewrite_keeping_mtime


def test_every_registered_type_has_a_harness() -> None:
    missing = [
        name
        for name in TYPES
        if importlib.util.find_spec(f"tests.conformance.harnesses.{name}") is None
    ]
    assert missing == [], "add tests/conformance/harnesses/<type>.py for each"


# -- storing -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 17])
def test_upload_stores_the_bytes_exactly(harness: Harness, tmp_path: Path, size: int) -> None:
    src = source(tmp_path, "DJI_0001.JPG", random.Random(size).randbytes(size))
    seen: list[int] = []
    item = item_for(src, b"DJI_0001.JPG")
    key = run(harness.target.upload(DS, item, Transfer(on_bytes=seen.append)))
    assert harness.stored(key) == src.read_bytes()
    assert sum(seen) == size
    assert harness.copies() == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "key", [b"sub/dir/x.jpg", b"DCIM/100MEDIA/DJI_0001.JPG", b"caf\xe9/\xff name.jpg"]
)
def test_nested_and_non_utf8_keys(harness: Harness, tmp_path: Path, key: bytes) -> None:
    src = source(tmp_path, "x.jpg", b"nested image")
    got = run(harness.target.upload(DS, item_for(src, key), Transfer()))
    assert harness.stored(got) == b"nested image"  # the key is the target's: a path, a hash


def test_uploading_the_same_item_again_returns_the_same_key_and_no_second_copy(
    harness: Harness, tmp_path: Path
) -> None:
    src = source(tmp_path, "a.jpg", random.Random(2).randbytes(50_000))
    item = item_for(src, b"a.jpg")
    first = run(harness.target.upload(DS, item, Transfer()))
    second = run(harness.target.upload(DS, item, Transfer()))
    assert first == second
    assert harness.stored(first) == src.read_bytes()
    assert harness.copies() == 1


@pytest.mark.parametrize("spooled", [False, True], ids=["source", "spool-copy"])
def test_a_file_grown_after_hashing_is_refused_and_nothing_is_left(
    harness: Harness, tmp_path: Path, spooled: bool
) -> None:
    # The spool's copy is not hashed again as it is sent, but its size and mtime still count.
    src = source(tmp_path, "a.jpg", b"x" * 10_000)
    item = dataclasses.replace(item_for(src, b"a.jpg"), spooled=spooled)
    with src.open("ab") as fh:
        fh.write(b"still being copied")
    with pytest.raises(FileChangedError):
        run(harness.target.upload(DS, item, Transfer()))
    assert harness.copies() == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "no-seal"])
def test_other_bytes_with_the_same_size_and_mtime_are_refused(
    harness: Harness, tmp_path: Path, sealed: bool
) -> None:
    # Without a seal (a file hashed in an earlier boot) the bytes are hashed as they are sent.
    src = source(tmp_path, "a.jpg", b"x" * 10_000)
    item = item_for(src, b"a.jpg")
    if sealed and item.seal is None:
        pytest.skip(f"{tmp_path}: no disk behind it, no seal")
    if not sealed:
        item = dataclasses.replace(item, seal=None)
    rewrite_keeping_mtime(src, b"y" * 10_000)  # only the content tells, and the ctime
    with pytest.raises(FileChangedError):
        run(harness.target.upload(DS, item, Transfer()))
    assert harness.copies() == 0
    assert leftovers(tmp_path) == []


def test_another_file_in_its_place_with_the_same_size_and_mtime_is_refused(
    harness: Harness, tmp_path: Path
) -> None:
    # As a card swapped for one with the same names, sizes and mtimes: another inode.
    src = source(tmp_path, "a.jpg", b"x" * 10_000)
    item = item_for(src, b"a.jpg")
    other = source(tmp_path, "other.jpg", b"y" * 10_000)
    os.utime(other, ns=(item.mtime_ns, item.mtime_ns))
    other.replace(src)
    with pytest.raises(FileChangedError):
        run(harness.target.upload(DS, item, Transfer()))
    assert harness.copies() == 0
    assert leftovers(tmp_path) == []


def test_a_source_replaced_by_a_symlink_is_not_followed(harness: Harness, tmp_path: Path) -> None:
    src = source(tmp_path, "a.jpg", b"ours")
    item = item_for(src, b"a.jpg")
    elsewhere = tmp_path / "secret.jpg"
    elsewhere.write_bytes(b"ours")
    src.unlink()
    src.symlink_to(elsewhere)
    with pytest.raises(SourceError):
        run(harness.target.upload(DS, item, Transfer()))
    assert harness.copies() == 0


def test_abort_stops_an_upload_in_progress(harness: Harness, tmp_path: Path) -> None:
    src = source(tmp_path, "big.jpg", random.Random(8).randbytes(8 * 1024 * 1024))
    item = item_for(src, b"big.jpg")
    transfer = Transfer()
    seen: list[int] = []

    def on_bytes(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            transfer.abort("cancelled by the operator")

    transfer.on_bytes = on_bytes
    with pytest.raises(TransientTargetError, match="cancelled by the operator"):
        run(harness.target.upload(DS, item, transfer))
    assert transfer.aborted
    assert len(seen) == 2  # stopped at the next chunk, not at the end of the file
    assert sum(seen) < item.size
    assert harness.copies() == 0
    assert leftovers(tmp_path) == []
    # the same item goes through on the next attempt
    key = run(harness.target.upload(DS, item, Transfer()))
    assert harness.stored(key) == src.read_bytes()


# -- failures, as the engine tells them apart ----------------------------------------------


def _expect(fault: Fault, error: BaseException) -> None:
    if fault == "permanent":
        assert isinstance(error, PermanentTargetError), repr(error)
        return
    assert isinstance(error, TransientTargetError), repr(error)
    assert isinstance(error, TargetPausedError) == (fault == "paused"), repr(error)
    if fault == "retry_after":
        assert isinstance(error, TargetError)
        assert error.retry_after == pytest.approx(RETRY_AFTER_S), repr(error)


@pytest.mark.parametrize("fault", FAULTS)
def test_failures_are_told_apart_and_the_next_attempt_goes_through(
    harness: Harness, tmp_path: Path, fault: Fault
) -> None:
    if fault not in harness.faults:
        pytest.skip(f"{type(harness).__name__}: its store cannot produce this on demand")
    src = source(tmp_path, "a.jpg", random.Random(9).randbytes(100_000))
    item = item_for(src, b"a.jpg")
    harness.inject(fault)
    with pytest.raises(TargetError) as caught:
        run(harness.target.upload(DS, item, Transfer()))
    _expect(fault, caught.value)
    assert leftovers(tmp_path) == []
    harness.heal()  # what time, or the operator, does
    target = harness.target
    if fault in ("permanent", "paused"):
        # The operator fixed the cause, then retries or reloads: a reload builds the targets
        # anew, and what the old one learnt (a node's limits, a refused sign-in) goes with it.
        run(target.aclose())
        target = harness.reopen()
    run(target.ensure_dataset(DS))
    key = run(target.upload(DS, item, Transfer()))
    assert harness.stored(key) == src.read_bytes()
    assert harness.copies() == 1


def test_what_was_stored_survives_a_restart_and_is_not_sent_twice(
    harness: Harness, tmp_path: Path
) -> None:
    src = source(tmp_path, "a.jpg", random.Random(10).randbytes(200_000))
    item = item_for(src, b"DCIM/a.jpg")
    key = run(harness.target.upload(DS, item, Transfer()))
    run(harness.target.make_durable())
    run(harness.target.aclose())
    again = harness.reopen()
    run(again.ensure_dataset(DS))
    assert run(again.upload(DS, item, Transfer())) == key
    assert harness.stored(key) == src.read_bytes()
    assert harness.copies() == 1


# -- processing --------------------------------------------------------------------------


def _process(harness: Harness, tmp_path: Path) -> ProcessingStatus:
    keys = []
    for n in range(6):  # PIX4Dcloud's minimum
        src = source(tmp_path, f"a{n}.jpg", b"img %d" % n)
        keys.append(run(harness.target.upload(DS, item_for(src, b"a%d.jpg" % n), Transfer())))

    async def process() -> ProcessingStatus:
        return await finish(harness.target, await harness.target.start_processing(DS, keys))

    return run(process())


def test_processing_starts_and_reports_its_end(harness: Harness, tmp_path: Path) -> None:
    assert _process(harness, tmp_path).state == "done"


def test_processing_that_fails_says_so_and_why(harness: Harness, tmp_path: Path) -> None:
    harness.fail_processing()
    status = _process(harness, tmp_path)
    assert status.state == "failed"
    assert status.detail
