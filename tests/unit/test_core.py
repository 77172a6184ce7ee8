"""Hashing, the journal, the stability gate and the scanner, on real files and real SQLite."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.errors import FileChangedError, SourceError
from daemon.hashing import hash_file, hash_stream
from daemon.journal import Journal
from daemon.journal.store import SCHEMA_VERSION
from daemon.sources.filters import FileFilter, is_litter
from daemon.sources.gate import Candidate, StabilityGate
from daemon.sources.openfiles import open_for_writing
from daemon.sources.scanner import walk


def test_hash_stream_matches_hashlib() -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert hash_stream(io.BytesIO(data)) == hashlib.sha256(data).hexdigest()


def test_hash_file_refuses_a_file_that_is_not_what_the_gate_saw(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    info = path.stat()
    assert (
        hash_file(path, info.st_size, info.st_mtime_ns).sha256 == hashlib.sha256(b"abc").hexdigest()
    )
    with pytest.raises(FileChangedError):
        hash_file(path, info.st_size + 1, info.st_mtime_ns)


def test_hash_file_refuses_fifos_and_symlinks_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match="not a regular file"):
        hash_file(fifo, 0, 0)
    link = tmp_path / "link.jpg"
    link.symlink_to("/etc/hostname")
    with pytest.raises(SourceError, match="cannot open"):
        hash_file(link, 0, 0)


def _journal(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / "j.sqlite3")


def _dataset(journal: Journal, name: str, target: str = "t", folder: bytes = b"f") -> int:
    return journal.open_dataset(
        volume="/v",
        folder=folder,
        name=name,
        target=target,
        source="/v",
        auto_process=True,
        quiet_s=1,
        now=time.time(),
    ).id


def _file(journal: Journal, ds: int, rel: bytes, sha: str, scope: str = "target") -> str:
    fid = journal.add_file(
        dataset_id=ds, volume="/v", relpath=rel, dspath=rel, size=1, mtime_ns=1, now=time.time()
    )
    return journal.record_hash(
        fid, dataset_id=ds, size=1, mtime_ns=1, sha256=sha, duplicate_scope=scope, now=time.time()
    ).status


def test_journal_schema_wal_and_integrity(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    assert journal.schema_version() == SCHEMA_VERSION
    assert journal.integrity_ok()
    journal.close()
    again = _journal(tmp_path)  # reopening migrates nothing twice
    assert again.schema_version() == SCHEMA_VERSION
    mode = again._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_duplicates_by_scope(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    a = _dataset(journal, "a", folder=b"a")
    b = _dataset(journal, "b", folder=b"b")
    other = _dataset(journal, "c", target="elsewhere", folder=b"c")
    assert _file(journal, a, b"1.jpg", "h1") == "waiting"
    assert _file(journal, b, b"2.jpg", "h1") == "duplicate"  # same target
    assert _file(journal, other, b"3.jpg", "h1") == "waiting"  # another target
    assert _file(journal, b, b"4.jpg", "h2", scope="dataset") == "waiting"
    assert _file(journal, a, b"5.jpg", "h2", scope="dataset") == "waiting"  # other dataset
    assert _file(journal, a, b"6.jpg", "h2", scope="dataset") == "duplicate"


def test_recover_retry_and_next_generation(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    ds = _dataset(journal, "m")
    _file(journal, ds, b"1.jpg", "h1")
    fid = journal.files(ds)[0].id
    journal.mark_uploading(fid)
    assert journal.recover() == 1
    assert journal.file(fid).status == "waiting"
    journal.mark_failed(fid, "boom")
    assert journal.retry_failed(ds) == 1
    assert journal.file(fid).attempts == 0
    journal.set_dataset_state(ds, "processing", processing_started_at=time.time())
    follow = _dataset(journal, "m")
    assert journal.dataset(follow).name == "m-2"
    assert _dataset(journal, "m") == follow  # still open: no m-3


def test_non_utf8_paths_round_trip_and_readers_see_writes(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    ds = _dataset(journal, "m")
    _file(journal, ds, b"caf\xe9.jpg", "h")
    reader = Journal.open(tmp_path / "j.sqlite3", readonly=True)
    assert reader.files(ds)[0].relpath == b"caf\xe9.jpg"


def _candidate(path: Path, now: float) -> Candidate:
    info = path.stat()
    return Candidate(1, 1, os.fsencode(path), info.st_size, info.st_mtime_ns, now, 3.0)


def test_gate_waits_for_a_growing_file_to_settle(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    gate = StabilityGate(open_check=lambda ids: set())
    gate.offer(_candidate(path, 100.0))
    assert gate.tick(102.0).ready == []
    with path.open("ab") as fh:
        fh.write(b"more")
    verdict = gate.tick(102.5)
    assert [c.file_id for c in verdict.changed] == [1]
    assert gate.tick(104.0).ready == []  # the clock restarted at 102.5
    assert [c.size for c in gate.tick(105.6).ready] == [5]
    assert len(gate) == 0


def test_gate_reports_a_vanished_file(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    gate = StabilityGate(open_check=lambda ids: set())
    gate.offer(_candidate(path, 0.0))
    path.unlink()
    assert [c.file_id for c in gate.tick(1.0).vanished] == [1]


def test_a_file_open_for_writing_is_held_back(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "open"
    info = path.stat()
    key = (info.st_dev, info.st_ino)
    assert open_for_writing({key}) == {key}
    gate = StabilityGate()
    gate.offer(_candidate(path, 0.0))
    assert gate.tick(10.0).ready == []
    writer.communicate("")
    assert open_for_writing({key}) == set()
    assert [c.file_id for c in gate.tick(20.0).ready] == [1]


def test_filters_and_litter() -> None:
    wanted = FileFilter(["*.jpg", "*.JPEG", "raw/*.dng"], ["*_thumb.jpg"])
    assert wanted.wants(b"DJI_0001.JPG")
    assert wanted.wants(b"sub/x.jpeg")
    assert wanted.wants(b"raw/a.DNG")
    assert not wanted.wants(b"other/a.dng")
    assert not wanted.wants(b"a_thumb.jpg")
    assert not wanted.wants(b"flight.SRT")
    for name in (b".Trashes", b"._DJI_0001.JPG", b"System Volume Information", b"Thumbs.db"):
        assert is_litter(name)


def test_walk_skips_symlinks_fifos_and_litter(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "m").mkdir(parents=True)
    (root / "m" / "ok.jpg").write_bytes(b"1")
    (root / "m" / "empty.jpg").write_bytes(b"")
    (root / "m" / "._ok.jpg").write_bytes(b"litter")
    (root / "m" / "loop").symlink_to(root / "m")
    (root / "m" / "out.jpg").symlink_to("/etc/hostname")
    os.mkfifo(root / "m" / "fifo.jpg")
    long_name = b"x" * 251 + b".jpg"
    Path(os.fsdecode(os.fsencode(root / "m") + b"/" + long_name)).write_bytes(b"2")
    Path(os.fsdecode(os.fsencode(root / "m") + b"/\xff\nodd.jpg")).write_bytes(b"3")
    found = {e.relpath for e in walk(os.fsencode(root), lambda rel: True)}
    assert found == {b"m/ok.jpg", b"m/empty.jpg", b"m/" + long_name, b"m/\xff\nodd.jpg"}
