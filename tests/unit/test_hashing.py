"""Content hashing: the same digest as hashlib, and never a hash of a file that moved."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import pytest

from daemon.errors import FileChangedError, SourceError
from daemon.hashing import (
    CHUNK,
    RACY_NS,
    Hashed,
    StableRead,
    hash_file,
    seal_of,
    spool_file,
)
from daemon.hashworker import read_batch
from tests.conftest import rewrite_keeping_mtime


def _file(tmp_path: Path, data: bytes) -> tuple[Path, os.stat_result]:
    path = tmp_path / "DJI_0001.JPG"
    path.write_bytes(data)
    return path, path.stat()


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_hash_file_equals_hashlib_across_chunk_boundaries(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path, info = _file(tmp_path, data)
    assert hash_file(path, size, info.st_mtime_ns).sha256 == hashlib.sha256(data).hexdigest()


def test_hash_file_gives_digest_size_and_mtime(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(2 * CHUNK + 3)
    path, info = _file(tmp_path, data)
    hashed = hash_file(path, info.st_size, info.st_mtime_ns)
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert (hashed.size, hashed.mtime_ns) == (info.st_size, info.st_mtime_ns)


def test_an_empty_file_has_the_empty_digest(tmp_path: Path) -> None:
    path, info = _file(tmp_path, b"")
    assert hash_file(path, 0, info.st_mtime_ns).sha256 == hashlib.sha256(b"").hexdigest()


def test_a_file_that_grew_since_it_was_seen_is_refused(tmp_path: Path) -> None:
    path, info = _file(tmp_path, b"first part")
    with path.open("ab") as fh:
        fh.write(b" and more")
    with pytest.raises(FileChangedError, match="changed since it was seen stable"):
        hash_file(path, info.st_size, info.st_mtime_ns)


def test_a_file_touched_since_it_was_seen_is_refused(tmp_path: Path) -> None:
    path, info = _file(tmp_path, b"same size")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    with pytest.raises(FileChangedError):
        hash_file(path, info.st_size, info.st_mtime_ns)


@pytest.mark.timeout(10)
def test_a_read_left_to_the_store_still_checks_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * (CHUNK + 5))
    info = path.stat()
    recorded = hashlib.sha256(b"y" * (CHUNK + 5)).hexdigest()  # not these bytes: not checked
    with StableRead(path, info.st_size, info.st_mtime_ns, expect=recorded, hash_content=False) as r:
        assert b"".join(bytes(chunk) for chunk in r.chunks()) == b"x" * (CHUNK + 5)
        assert r.finish() == recorded  # what the store is asked to check
        os.utime(path, ns=(info.st_mtime_ns + 1, info.st_mtime_ns + 1))
        with pytest.raises(FileChangedError, match="while it was being hashed"):
            r.finish()


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # nobody writes: a blocking open would hang here forever
    with pytest.raises(SourceError, match="not a regular file"):
        hash_file(fifo, 0, 0)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "outside.jpg"
    secret.write_bytes(b"not ours")
    link = tmp_path / "link.jpg"
    link.symlink_to(secret)
    info = secret.stat()
    with pytest.raises(SourceError, match="cannot open") as caught:
        hash_file(link, info.st_size, info.st_mtime_ns)
    assert not isinstance(caught.value, FileChangedError)


def test_a_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "DCIM.jpg"
    folder.mkdir()
    with pytest.raises(SourceError, match="not a regular file"):
        hash_file(folder, 0, 0)


def test_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        hash_file(tmp_path / "gone.jpg", 1, 1)


def test_one_bad_file_in_a_batch_leaves_the_others_hashed(tmp_path: Path) -> None:
    good = tmp_path / "DJI_0001.JPG"
    good.write_bytes(b"\xff\xd8first")
    grew = tmp_path / "DJI_0002.JPG"
    grew.write_bytes(b"\xff\xd8second")
    copied = tmp_path / "DJI_0003.JPG"
    copied.write_bytes(b"\xff\xd8third")
    spool = tmp_path / "spool"
    spool.mkdir()
    jobs = [
        (good, good.stat().st_size, good.stat().st_mtime_ns, None),
        (tmp_path / "gone.JPG", 10, 0, None),  # pulled before its turn
        (grew, grew.stat().st_size - 1, grew.stat().st_mtime_ns, None),  # not as it was seen
        (copied, copied.stat().st_size, copied.stat().st_mtime_ns, spool / "3.img"),
    ]
    first, gone, changed, third = read_batch(jobs)
    assert not isinstance(first, BaseException)
    assert first.sha256 == hashlib.sha256(b"\xff\xd8first").hexdigest()
    assert isinstance(gone, SourceError)
    assert isinstance(changed, FileChangedError)
    assert not isinstance(third, BaseException)
    assert third.sha256 == hashlib.sha256(b"\xff\xd8third").hexdigest()
    assert (spool / "3.img").read_bytes() == b"\xff\xd8third"  # copied while hashed


def test_a_first_copy_goes_straight_to_its_name(tmp_path: Path) -> None:
    card = tmp_path / "DJI_0001.JPG"
    data = random.randbytes(CHUNK + 123)
    card.write_bytes(data)
    info = card.stat()
    dest = tmp_path / "spool" / "7.img"
    dest.parent.mkdir()
    hashed = spool_file(card, info.st_size, info.st_mtime_ns, dest, durable=False)
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert dest.stat().st_mtime_ns == info.st_mtime_ns  # checked like the card's at upload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["7.img"]


def test_a_copy_over_a_recorded_one_replaces_it_whole(tmp_path: Path) -> None:
    card = tmp_path / "DJI_0001.JPG"
    dest = tmp_path / "7.img"
    dest.write_bytes(b"the copy recorded before the image changed")
    data = random.randbytes(5000)
    card.write_bytes(data)
    info = card.stat()
    spool_file(card, info.st_size, info.st_mtime_ns, dest)
    assert dest.read_bytes() == data
    assert not (tmp_path / "7.img.part").exists()


def test_a_file_changed_since_it_was_seen_is_not_copied_and_a_recorded_copy_stays(
    tmp_path: Path,
) -> None:
    card = tmp_path / "DJI_0001.JPG"
    card.write_bytes(b"x" * 5000)
    info = card.stat()
    fresh = tmp_path / "8.img"
    with pytest.raises(FileChangedError):  # the card's file grew after the gate saw it
        spool_file(card, info.st_size - 1, info.st_mtime_ns, fresh)
    assert not fresh.exists()
    recorded = tmp_path / "9.img"
    recorded.write_bytes(b"recorded")
    with pytest.raises(FileChangedError):
        spool_file(card, info.st_size - 1, info.st_mtime_ns, recorded)
    assert recorded.read_bytes() == b"recorded"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["9.img", "DJI_0001.JPG"]


@pytest.mark.parametrize("folder", ["/", "/srv/spool", "/srv/spool/", "relative/spool"])
def test_the_copy_the_journal_names_is_the_one_the_spool_makes(folder: str) -> None:
    from daemon.config import SpoolSettings  # noqa: PLC0415
    from daemon.sources.spool import Spool  # noqa: PLC0415

    spool = Spool(SpoolSettings(dir=Path(folder), max_gb=1, min_free_gb=0), journal=None)  # type: ignore[arg-type]
    assert spool.copy_path(12) == os.fsencode(spool.path_for(12))


def _sealed(path: Path) -> Hashed:
    """``path`` hashed as the gate lets it be: a while after its last write."""
    info = path.stat()
    hashed = hash_file(path, info.st_size, info.st_mtime_ns, now_ns=info.st_ctime_ns + 10**10)
    if hashed.seal is None:
        pytest.skip(f"{path}: no disk behind it, no seal")
    return hashed


def _sealed_read(path: Path, hashed: Hashed) -> StableRead:
    return StableRead(path, hashed.size, hashed.mtime_ns, expect=hashed.sha256, seal=hashed.seal)


def test_a_file_still_sealed_is_sent_without_hashing_it_again(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(CHUNK + 7)
    path, _ = _file(tmp_path, data)
    hashed = _sealed(path)
    with _sealed_read(path, hashed) as read:
        assert not read.hashes  # the very file that was hashed, unchanged since
        assert b"".join(bytes(chunk) for chunk in read.chunks()) == data
        assert read.finish() == hashed.sha256


def test_a_read_in_the_clock_tick_of_the_last_write_records_no_seal(tmp_path: Path) -> None:
    # A write in the same tick would leave the ctime as it was: nothing may be spared on it.
    path, info = _file(tmp_path, b"just written")
    now = info.st_ctime_ns + RACY_NS // 2
    assert hash_file(path, info.st_size, info.st_mtime_ns, now_ns=now).seal is None
    assert _sealed(path).seal is not None


def test_a_file_written_with_its_mtime_set_back_loses_its_seal(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, b"x" * 5000)
    hashed = _sealed(path)
    rewrite_keeping_mtime(path, b"y" * 5000)
    with _sealed_read(path, hashed) as read:
        assert read.hashes
        with pytest.raises(FileChangedError, match="content differs from its recorded hash"):
            list(read.chunks())


def test_another_file_renamed_into_its_place_loses_the_seal(tmp_path: Path) -> None:
    path, info = _file(tmp_path, b"x" * 5000)
    hashed = _sealed(path)
    other = tmp_path / "other.jpg"
    other.write_bytes(b"x" * 5000)  # the same bytes even: another file is read again
    os.utime(other, ns=(info.st_mtime_ns, info.st_mtime_ns))
    other.replace(path)
    with _sealed_read(path, hashed) as read:
        assert read.hashes
        list(read.chunks())  # checked against the recorded hash, and it matches
        assert read.finish() == hashed.sha256


def test_a_file_written_while_it_is_sent_unhashed_is_refused_at_the_end(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, b"x" * 5000)
    hashed = _sealed(path)
    with _sealed_read(path, hashed) as read:
        assert not read.hashes
        list(read.chunks())
        rewrite_keeping_mtime(path, b"y" * 5000)
        with pytest.raises(FileChangedError, match="while it was being hashed"):
            read.finish()


TMPFS = Path("/dev/shm")  # noqa: S108 (a tmpfs is the point)


@pytest.mark.skipif(not TMPFS.is_dir(), reason="no tmpfs at /dev/shm")
def test_a_filesystem_without_a_disk_gives_no_seal() -> None:
    # tmpfs, FUSE, NFS: inode numbers that a later mount may give again prove nothing.
    with tempfile.NamedTemporaryFile(dir=TMPFS) as fh:
        fh.write(b"x")
        fh.flush()
        assert seal_of(os.fstat(fh.fileno())) is None
