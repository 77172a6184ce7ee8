"""Sources: which files are wanted, which dataset they belong to, the walk, the stability gate.

All on real folders: hostile names, symlinks, FIFOs, and a real process holding a file open.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import IMAGE_PATTERNS, SourceConfig
from daemon.sources.filters import FileFilter, is_litter
from daemon.sources.gate import Candidate, StabilityGate
from daemon.sources.mapping import DatasetMapper, Placement, safe_name
from daemon.sources.openfiles import open_for_writing
from daemon.sources.scanner import walk

# -- filters -----------------------------------------------------------------------------


def test_default_patterns_take_images_in_any_case() -> None:
    images = FileFilter(IMAGE_PATTERNS, [])
    for name in (b"DJI_0001.JPG", b"a.jpeg", b"b.TIF", b"c.Tiff", b"d.DNG", b"sub/e.jpg"):
        assert images.wants(name), name
    for name in (b"DJI_0001.MP4", b"DJI_0001.SRT", b"jpg", b"a.jpg.txt", b"notes.txt"):
        assert not images.wants(name), name


def test_exclude_wins_over_include() -> None:
    images = FileFilter(IMAGE_PATTERNS, ["*_thumb.jpg", "PANORAMA/*"])
    assert images.wants(b"DCIM/a.jpg")
    assert not images.wants(b"DCIM/a_THUMB.JPG")
    assert not images.wants(b"panorama/a.jpg")


def test_a_pattern_with_a_slash_matches_the_path_inside_the_dataset() -> None:
    raw = FileFilter(["raw/*.dng"], [])
    assert raw.wants(b"raw/a.DNG")
    assert raw.wants(b"RAW/b.dng")
    assert not raw.wants(b"a.dng")  # only the name: no folder to match
    assert not raw.wants(b"other/a.dng")


def test_names_that_are_not_utf8_are_matched_too() -> None:
    images = FileFilter(IMAGE_PATTERNS, [])
    assert images.wants(b"caf\xe9/\xff\xfe.JPG")
    assert not images.wants(b"\xff\xfe.mov")


@pytest.mark.parametrize(
    "name",
    [
        b".Trashes",
        b"._IMG_0001.JPG",
        b".Spotlight-V100",
        b".fseventsd",
        b"System Volume Information",
        b"SYSTEM VOLUME INFORMATION",
        b"$RECYCLE.BIN",
        b"lost+found",
        b"Thumbs.db",
        b"desktop.ini",
    ],
)
def test_os_litter_is_recognised(name: bytes) -> None:
    assert is_litter(name)


@pytest.mark.parametrize("name", [b"DJI_0001.JPG", b"DCIM", b"100MEDIA", b"Thumbs.jpg"])
def test_images_and_camera_folders_are_not_litter(name: bytes) -> None:
    assert not is_litter(name)


# -- mapping -----------------------------------------------------------------------------


def _mapper(root: Path, **settings: object) -> DatasetMapper:
    config = SourceConfig.model_validate({"path": root, "target": "archive", **settings})
    return DatasetMapper(config, root)


def test_subfolders_layout_makes_each_top_folder_a_dataset(tmp_path: Path) -> None:
    mapper = _mapper(tmp_path / "inbox")
    assert mapper.place(b"flight-1/DCIM/100MEDIA/a.jpg") == Placement(
        b"flight-1", "flight-1", b"DCIM/100MEDIA/a.jpg"
    )
    assert mapper.place(b"flight-2/b.jpg") == Placement(b"flight-2", "flight-2", b"b.jpg")
    assert mapper.place(b"loose.jpg") is None  # a file at the top belongs to no dataset


def test_single_layout_makes_the_whole_source_one_dataset(tmp_path: Path) -> None:
    mapper = _mapper(tmp_path / "card-A", layout="single")
    assert mapper.place(b"DCIM/100MEDIA/a.jpg") == Placement(b"", "card-A", b"DCIM/100MEDIA/a.jpg")
    assert mapper.place(b"a.jpg") == Placement(b"", "card-A", b"a.jpg")


def test_the_name_template_uses_folder_and_source(tmp_path: Path) -> None:
    mapper = _mapper(tmp_path / "inbox", dataset="{source}-{folder}")
    assert mapper.place(b"m1/a.jpg") == Placement(b"m1", "inbox-m1", b"a.jpg")
    single = _mapper(tmp_path / "card", layout="single", dataset="survey {folder}")
    placed = single.place(b"a.jpg")
    assert placed is not None
    assert placed.dataset == "survey card"


def test_dataset_names_are_safe_folder_names(tmp_path: Path) -> None:
    mapper = _mapper(tmp_path / "inbox", dataset="{source}/{folder}")
    placed = mapper.place(b"m1/a.jpg")
    assert placed is not None
    assert placed.dataset == "inbox_m1"  # never a nested or escaping folder
    odd = _mapper(tmp_path / "inbox").place(b"caf\xe9\nday/a.jpg")
    assert odd is not None
    assert odd.folder == b"caf\xe9\nday"  # the real folder, byte for byte
    assert odd.dataset == "caf\ufffd_day"  # a readable, single-line name
    assert safe_name("..") == "dataset"
    assert safe_name("  ") == "dataset"
    assert safe_name(".hidden") == "hidden"
    assert safe_name("a\\b") == "a_b"


# -- the walk ----------------------------------------------------------------------------


def _put(root: bytes, rel: bytes, data: bytes = b"x") -> None:
    path = root + b"/" + rel
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _found(root: bytes, errors: list[tuple[bytes, OSError]] | None = None) -> dict[bytes, int]:
    def on_error(path: bytes, exc: OSError) -> None:
        if errors is not None:
            errors.append((path, exc))

    return {e.relpath: e.size for e in walk(root, lambda rel: True, on_error)}


def test_walk_on_a_hostile_tree(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path / "inbox")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"not ours")
    long_name = b"L" * 251 + b".jpg"
    assert len(long_name) == 255
    wanted = {
        b"m 1/with spaces.jpg": 3,
        b"m 1/new\nline.jpg": 4,
        b"m 1/\xff\xfe-not-utf8.jpg": 5,
        b"m 1/" + long_name: 6,
        b"m 1/empty.jpg": 0,
        b"m 1/deep/er/still/a.jpg": 7,
    }
    for rel, size in wanted.items():
        _put(root, rel, b"z" * size)
    _put(root, b"m 1/._with spaces.jpg")  # AppleDouble litter
    _put(root, b".Trashes/501/old.jpg")
    _put(root, b"System Volume Information/x.jpg")
    os.symlink(root + b"/m 1", root + b"/m 1/loop")  # a loop back up
    os.symlink(root, root + b"/m 1/deep/root")
    os.symlink(os.fsencode(outside), root + b"/escape")  # a folder outside the source
    os.symlink(os.fsencode(outside / "secret.jpg"), root + b"/m 1/secret.jpg")
    os.mkfifo(root + b"/m 1/pipe.jpg")
    assert _found(root) == wanted


def test_walk_asks_which_files_are_wanted_with_the_relative_path(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    for rel in (b"m1/a.jpg", b"m1/a.MP4", b"m1/raw/b.dng"):
        _put(root, rel)
    images = FileFilter(IMAGE_PATTERNS, [])
    found = sorted(e.relpath for e in walk(root, images.wants))
    assert found == [b"m1/a.jpg", b"m1/raw/b.dng"]


def test_walk_passes_over_settled_files_and_still_sees_changed_ones(tmp_path: Path) -> None:
    """A restart: files known unchanged are left out; a file rewritten since is not."""
    root = os.fsencode(tmp_path)
    for rel in (b"m1/a.jpg", b"m1/b.jpg", b"m1/c.jpg"):
        _put(root, rel)
    seen = {e.relpath: (e.size, e.mtime_ns) for e in walk(root, lambda rel: True)}
    (tmp_path / "m1" / "b.jpg").write_bytes(b"rewritten since")

    def settled(relpath: bytes, size: int, mtime_ns: int) -> bool:
        return seen.get(relpath) == (size, mtime_ns)

    asked: list[bytes] = []

    def wanted(relpath: bytes) -> bool:
        asked.append(relpath)
        return True

    assert [e.relpath for e in walk(root, wanted, settled=settled)] == [b"m1/b.jpg"]
    assert asked == [b"m1/b.jpg"]  # the filter is not even asked about settled files


def test_walk_of_a_missing_source_reports_and_yields_nothing(tmp_path: Path) -> None:
    errors: list[tuple[bytes, OSError]] = []
    assert _found(os.fsencode(tmp_path / "not-mounted"), errors) == {}
    assert [exc.errno for _, exc in errors] == [errno.ENOENT]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_is_skipped_and_reported(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path / "inbox")
    _put(root, b"m1/a.jpg")
    _put(root, b"locked/b.jpg")
    os.chmod(root + b"/locked", 0)
    try:
        errors: list[tuple[bytes, OSError]] = []
        assert _found(root, errors) == {b"m1/a.jpg": 1}
        assert [(p, e.errno) for p, e in errors] == [(root + b"/locked", errno.EACCES)]
    finally:
        os.chmod(root + b"/locked", 0o700)


def test_a_folder_too_deep_to_name_is_skipped_and_reported(tmp_path: Path) -> None:
    # A path longer than PATH_MAX cannot be listed even by root; the rest is still found.
    root = os.fsencode(tmp_path / "inbox")
    _put(root, b"m1/a.jpg")
    os.makedirs(root + b"/m2")
    fd = os.open(root + b"/m2", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):
            os.mkdir(b"d" * 250, dir_fd=fd)
            inner = os.open(b"d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    errors: list[tuple[bytes, OSError]] = []
    assert _found(root, errors) == {b"m1/a.jpg": 1}
    assert errors
    assert {exc.errno for _, exc in errors} == {errno.ENAMETOOLONG}


# -- the stability gate ------------------------------------------------------------------


def _candidate(path: Path, now: float, file_id: int = 1, stable_s: float = 3.0) -> Candidate:
    info = path.stat()
    return Candidate(
        file_id=file_id,
        dataset_id=7,
        base=os.fsencode(path.parent) + b"/",
        relpath=os.fsencode(path.name),
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        stable_since=now,
        stable_s=stable_s,
    )


def nobody_writes(ids: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return set()


def test_a_file_being_appended_is_released_only_after_stable_s_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    gate = StabilityGate(open_check=nobody_writes)
    gate.offer(_candidate(path, now=100.0))
    assert gate.busy_datasets() == {7}
    assert gate.tick(101.0).ready == []
    with path.open("ab") as fh:
        fh.write(b"more")
    verdict = gate.tick(102.0)
    assert [c.file_id for c in verdict.changed] == [1]
    assert verdict.ready == []
    assert gate.tick(104.9).ready == []  # unchanged since 102.0: only 2.9 s
    with path.open("ab") as fh:
        fh.write(b"and more")
    assert [c.size for c in gate.tick(104.95).changed] == [13]
    assert gate.tick(107.9).ready == []
    ready = gate.tick(107.95).ready
    assert [(c.file_id, c.size) for c in ready] == [(1, 13)]
    assert len(gate) == 0
    assert gate.busy_datasets() == set()


def test_offering_the_same_file_again_keeps_its_clock(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    gate = StabilityGate(open_check=nobody_writes)
    gate.offer(_candidate(path, now=0.0))
    gate.offer(_candidate(path, now=2.0))  # a rescan meets it again, unchanged
    assert [c.file_id for c in gate.tick(3.0).ready] == [1]


def test_a_file_hashed_meanwhile_leaves_the_gate_unless_it_changed(tmp_path: Path) -> None:
    same, grown = tmp_path / "same.jpg", tmp_path / "grown.jpg"
    same.write_bytes(b"x")
    grown.write_bytes(b"x")
    gate = StabilityGate(open_check=nobody_writes)
    hashed_same, hashed_grown = _candidate(same, 0.0, 1), _candidate(grown, 0.0, 2)
    gate.offer(_candidate(same, 1.0, 1))  # a watcher event met both while they were read
    grown.write_bytes(b"xy")
    gate.offer(_candidate(grown, 1.0, 2))
    gate.settled(hashed_same)
    gate.settled(hashed_grown)
    assert [c.file_id for c in gate.tick(9.0).ready] == [2]  # only the changed one is read


def test_a_file_that_vanishes_or_is_replaced_by_a_folder_is_reported(tmp_path: Path) -> None:
    gone = tmp_path / "gone.jpg"
    gone.write_bytes(b"x")
    swapped = tmp_path / "swapped.jpg"
    swapped.write_bytes(b"y")
    gate = StabilityGate(open_check=nobody_writes)
    gate.offer(_candidate(gone, now=0.0, file_id=1))
    gate.offer(_candidate(swapped, now=0.0, file_id=2))
    gone.unlink()
    swapped.unlink()
    swapped.mkdir()
    verdict = gate.tick(10.0)
    assert sorted(c.file_id for c in verdict.vanished) == [1, 2]
    assert verdict.ready == []
    assert len(gate) == 0


WRITER = """
import sys
f = open(sys.argv[1], "ab")
f.write(b"partial")
f.flush()
print("open", flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(30)
def test_a_file_held_open_for_writing_is_held_back_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "slow-copy.jpg"
    path.write_bytes(b"")
    reader_only = tmp_path / "read.jpg"
    reader_only.write_bytes(b"r")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "open\n"
        with reader_only.open("rb"):  # our own read handle does not count as a writer
            info = path.stat()
            other = reader_only.stat()
            keys = {(info.st_dev, info.st_ino), (other.st_dev, other.st_ino)}
            assert open_for_writing(keys) == {(info.st_dev, info.st_ino)}
        gate = StabilityGate()
        gate.offer(_candidate(path, now=0.0))
        assert gate.tick(10.0).ready == []  # stable size and mtime, but still open
        assert gate.tick(100.0).ready == []
        assert len(gate) == 1
        writer.communicate("", timeout=20)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0
    assert open_for_writing({(info.st_dev, info.st_ino)}) == set()
    # closing restarted the clock at the last held tick (100.0): released stable_s later
    assert gate.tick(102.0).ready == []
    assert [c.size for c in gate.tick(103.0).ready] == [len(b"partial")]
