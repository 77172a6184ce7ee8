"""Scans and watcher hints in process: real folders, real SQLite, real watchdog.

The real clock, but for the stability test, which moves a fake one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.clock import SystemClock
from daemon.config import SourceConfig
from daemon.journal import HashRecord, Journal, NewFile
from daemon.sources import intake as intake_module
from daemon.sources.gate import Candidate
from daemon.sources.manager import SourceManager
from daemon.sources.watcher import Hints, Watcher
from tests.conftest import DEADLINE_S
from tests.fakeclock import FakeClock, until


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "state" / "journal.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def chunks_of_ten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scans hand their files on ten at a time: a few dozen files make several chunks."""
    monkeypatch.setattr(intake_module, "SCAN_CHUNK", 10)


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"DJI_{i:04d}.JPG").write_bytes(b"\xff\xd8" + i.to_bytes(4, "big") * 64)


def _known_files(journal: Journal) -> set[str]:
    return {os.fsdecode(row.relpath) for ds in journal.datasets() for row in journal.files(ds.id)}


class _Reader:
    """Stands in for the hasher: hears each released file; holds those in ``holding``."""

    def __init__(
        self, on_submit: Callable[[Candidate], None], holding: list[Candidate] | None = None
    ) -> None:
        self._on_submit = on_submit
        self._holding = holding if holding is not None else []

    def submit(self, candidate: Candidate) -> None:
        self._on_submit(candidate)

    @property
    def pending(self) -> int:
        return len(self._holding)


def _manager(config: SourceConfig, journal: Journal, reader: _Reader) -> SourceManager:
    manager = SourceManager([config], journal, SystemClock())
    manager.release_to(reader)
    return manager


def _run(manager: SourceManager, until: Callable[[], bool]) -> None:
    """Run the manager's loop until ``until()`` holds (or fail after the deadline)."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(manager.run(stop))
        deadline = time.monotonic() + DEADLINE_S
        while not until():
            if task.done():
                task.result()  # its error, if it failed
                pytest.fail("the source manager stopped on its own")
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for the source manager")
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(main())


@pytest.mark.usefixtures("chunks_of_ten")
def test_a_big_folder_is_hashed_while_the_rest_is_still_being_walked(
    tmp_path: Path, journal: Journal
) -> None:
    inbox = tmp_path / "inbox"
    _images(inbox / "flight-1", 50)
    released: list[Candidate] = []
    known_at_first_release: list[int] = []

    def ready(candidate: Candidate) -> None:
        if not released:
            known_at_first_release.append(len(_known_files(journal)))
        released.append(candidate)

    config = SourceConfig(path=inbox, target="archive", stable_s=0)
    manager = _manager(config, journal, _Reader(ready))
    _run(manager, lambda: len(released) >= 50 and manager.first_scan_done.is_set())

    # The first files went on before the last ones were even in the journal...
    assert known_at_first_release[0] < 50
    # ...and every file went on exactly once.
    assert sorted(c.relpath for c in released) == [
        f"flight-1/DJI_{i:04d}.JPG".encode() for i in range(50)
    ]
    assert len(_known_files(journal)) == 50


@pytest.mark.usefixtures("chunks_of_ten")
def test_a_big_card_waits_in_its_backlog_while_the_hasher_is_full(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "BACKLOG_AT", 20)
    inbox = tmp_path / "inbox"
    _images(inbox / "flight-1", 100)
    reading: list[Candidate] = []  # released to the hasher, not recorded yet
    released: list[bytes] = []
    held: list[int] = []  # candidates in memory at each look: the gate's and the hasher's
    quiet: list[bool] = []  # whether the dataset looked quiet while files were left to read

    def ready(candidate: Candidate) -> None:
        reading.append(candidate)
        released.append(candidate.relpath)

    config = SourceConfig(path=inbox, target="archive", stable_s=0)
    manager = _manager(config, journal, _Reader(ready, holding=reading))

    def look() -> bool:
        held.append(len(manager.gate) + len(reading))
        if 0 < len(released) < 100:  # the scan has begun, files are left
            quiet.append(not manager.busy_datasets() and not reading)
        if len(reading) >= 10:
            reading.clear()  # the hasher recorded them: room for more
        return len(released) == 100

    _run(manager, look)
    assert max(held) <= 20  # the other files waited as paths, not as candidates
    assert sorted(released) == [f"flight-1/DJI_{i:04d}.JPG".encode() for i in range(100)]
    assert not any(quiet)  # processing never saw the dataset quiet with files left


@pytest.mark.usefixtures("chunks_of_ten")
def test_a_file_gone_while_the_daemon_was_stopped_is_forgotten_after_a_scan_in_chunks(
    tmp_path: Path, journal: Journal
) -> None:
    inbox = tmp_path / "inbox"
    _images(inbox / "flight-1", 35)
    # Not stable for an hour: every file stays waiting, never hashed.
    config = SourceConfig(path=inbox, target="archive", stable_s=3600)
    first = _manager(config, journal, _Reader(lambda c: None))
    _run(first, first.first_scan_done.is_set)
    assert len(_known_files(journal)) == 35

    (inbox / "flight-1" / "DJI_0003.JPG").unlink()  # while no daemon ran
    again = _manager(config, journal, _Reader(lambda c: None))
    _run(again, again.first_scan_done.is_set)

    expected = {f"flight-1/DJI_{i:04d}.JPG" for i in range(35)} - {"flight-1/DJI_0003.JPG"}
    assert _known_files(journal) == expected  # the others, in every chunk, are kept


def test_a_folder_moved_in_whole_is_one_rescan_not_a_look_per_file(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    flight = tmp_path / "flight-1"
    _images(flight, 200)

    async def main() -> list[bytes]:
        hints = Hints(asyncio.get_running_loop())
        watcher = Watcher(hints)
        watcher.watch(1, inbox, None)
        try:
            flight.rename(inbox / "flight-1")
            # Events come in order: once the marker's is here, the folder's have all come.
            (inbox / "marker.JPG").write_bytes(b"\xff\xd8")
            marker = os.fsencode(inbox / "marker.JPG")
            paths: list[bytes] = []
            deadline = time.monotonic() + DEADLINE_S
            while marker not in paths:
                if time.monotonic() > deadline:
                    pytest.fail(f"no event for the marker; got {paths[:5]}")
                try:
                    paths.append((await asyncio.wait_for(hints.queue.get(), 0.5))[1])
                except TimeoutError:
                    continue
            return paths
        finally:
            watcher.close()

    paths = asyncio.run(main())
    moved = os.fsencode(inbox / "flight-1")
    # The folder itself (which asks for a rescan), and not one hint per image in it.
    assert moved in paths
    assert b"" in paths  # the rescan
    assert not [p for p in paths if p.startswith(moved + b"/")]


def test_a_file_is_released_stable_s_after_its_last_change_on_the_sources_clock(
    tmp_path: Path, journal: Journal
) -> None:
    inbox = tmp_path / "inbox"
    _images(inbox / "flight-1", 1)
    image = inbox / "flight-1" / "DJI_0000.JPG"
    clock = FakeClock()
    released: list[Candidate] = []
    config = SourceConfig(path=inbox, target="archive", stable_s=3)
    manager = SourceManager([config], journal, clock)
    manager.release_to(_Reader(released.append))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(manager.run(stop))
        try:
            await until(lambda: len(manager.gate) == 1, "the first scan")
            [dataset] = journal.datasets()
            clock.advance(2.9)
            await asyncio.sleep(0.05)  # the loop ticks on the fake clock
            assert released == []
            with image.open("ab") as fh:  # a write 2.9 s after the file was met
                fh.write(b"more")
            changed_at = clock.time()
            await until(
                lambda: journal.dataset(dataset.id).last_activity_at == changed_at,
                "the change to count as the dataset's activity",
            )
            clock.advance(2.9)  # 5.8 s: stable for 2.9 s only
            await asyncio.sleep(0.05)
            assert released == []
            clock.advance(0.2)  # 3.1 s unchanged
            await until(lambda: released, "the file to be released")
        finally:
            stop.set()
            clock.advance(1)
            await task

    asyncio.run(main())
    assert [c.relpath for c in released] == [b"flight-1/DJI_0000.JPG"]


def test_a_scan_over_a_year_of_history_offers_only_what_changed(
    tmp_path: Path, journal: Journal
) -> None:
    inbox = tmp_path / "inbox"
    _images(inbox / "flight-2", 12)
    (inbox / "flight-2" / "sub").mkdir()
    (inbox / "flight-2" / "sub" / "DJI_9000.JPG").write_bytes(b"\xff\xd8 deeper")
    volume = str(inbox)
    on_disk = sorted(p for p in inbox.rglob("*.JPG"))
    # Sent long ago: flight-2 as it is on disk, and 40 files of a flight no longer there.
    for n, count in ((1, 40), (2, len(on_disk))):
        ds = journal.open_dataset(
            volume=volume, folder=b"flight-%d" % n, name=f"flight-{n}", target="archive",
            source=volume, auto_process=True, quiet_s=60, now=1.0,
        )  # fmt: skip
        paths = on_disk if n == 2 else [inbox / f"flight-1/DJI_{i:04d}.JPG" for i in range(count)]
        new = []
        for path in paths:
            relpath = os.fsencode(path.relative_to(inbox))
            size, mtime = (path.stat().st_size, path.stat().st_mtime_ns) if n == 2 else (9, 1)
            new.append(NewFile(ds.id, volume, relpath, relpath.split(b"/", 1)[1], size, mtime))
        ids = journal.add_files(new, 1.0)
        rows = journal.find_files(ids)
        journal.record_hashes(
            [HashRecord(rows[i], ds.id, rows[i].size, rows[i].mtime_ns, f"{i:064x}", "target")
             for i in ids],
            1.0,
        )  # fmt: skip
        for i in ids:
            journal.mark_uploaded(i, b"k", 1.0)
    changed = inbox / "flight-2" / "DJI_0004.JPG"
    changed.write_bytes(b"\xff\xd8 edited afterwards")
    before = _known_files(journal)
    released: list[bytes] = []
    config = SourceConfig(path=inbox, target="archive", stable_s=0)
    manager = _manager(config, journal, _Reader(lambda c: released.append(c.relpath)))
    _run(manager, lambda: manager.first_scan_done.is_set() and bool(released))

    assert released == [b"flight-2/DJI_0004.JPG"]  # nothing unchanged is read again
    assert _known_files(journal) == before  # and nothing the journal has is added twice
