"""SIGKILL at random points of an ingest, again and again: nothing lost, nothing sent twice.

The daemon is killed while it starts, scans, hashes, copies or uploads, between datasets and
while a dataset is processed, and restarted each time, as a power cut would do. After every
kill the journal passes SQLite's integrity check. At the end each image is on the target
exactly once and byte-identical, every file is ``uploaded`` or ``duplicate``, processing ran
once per dataset, and the daemon stops cleanly.

Kill times come from a seeded generator: each kill waits for a few more files to be done (or
for none, to land in start-up and hashing), then for a short random delay. The few
milliseconds between "processing starting" and the target's answer are rarely hit that way;
``test_a_kill_while_processing_starts_resumes_it_once`` aims a kill there.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.targets.directory import STAGING
from tests.conftest import Box, wait_until
from tests.fakes.pix4dcloud import FakePix4DCloud
from tests.reliability.soak import Flight, SoakOptions, configure_pix4d, pix4d_landing

SEED = 424242


def _flights(
    staging: Path, rng: random.Random, *, count: int, per: int, sizes: tuple[int, int]
) -> list[Flight]:
    """Datasets of ``per`` images plus one byte-identical copy each; DCIM names repeat."""
    flights = []
    for d in range(count):
        flight = Flight(f"mission-{d + 1}")
        contents = []
        for n in range(per):
            data = rng.randbytes(rng.randint(*sizes))
            rel = f"DCIM/{100 + n % 2}MEDIA/DJI_{n // 2:04d}.JPG"
            _write(staging / flight.name / rel, data)
            flight.images[hashlib.sha256(data).hexdigest()] = rel
            contents.append(data)
        copy = "DCIM/100MEDIA/COPY_0001.JPG"
        _write(staging / flight.name / copy, rng.choice(contents))
        flight.copies.append(copy)
        flights.append(flight)
    return flights


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _done(box: Box) -> int:
    return sum(d["files"]["uploaded"] + d["files"]["duplicate"] for d in box.datasets().values())


def _done_at_least(box: Box, count: int) -> Callable[[], bool]:
    return lambda: _done(box) >= count


def _journal_intact(box: Box) -> None:
    """SQLite's own checks on the journal the killed daemon left (WAL included)."""
    con = sqlite3.connect(box.state / "journal.sqlite3")
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


def _kill_repeatedly(
    box: Box,
    rng: random.Random,
    flights: list[Flight],
    kills: int,
    more: int,
    after_kill: Callable[[], None] = lambda: None,
) -> None:
    """Bring the flights in one by one and SIGKILL the daemon ``kills`` times meanwhile, each
    time after 0 to ``more`` more files are done."""
    staging = box.root / "staging"
    total = sum(f.files for f in flights)
    # Kill number -> dataset arriving just before it, so kills also land in scans and hashing.
    arrivals = {i * 2: flight for i, flight in enumerate(flights)}
    proc = box.start()
    for kill in range(kills):
        if kill in arrivals:
            (staging / arrivals[kill].name).rename(box.inbox / arrivals[kill].name)
        target = min(_done(box) + rng.randint(0, more), total)
        wait_until(_done_at_least(box, target), what=f"{target} files done before kill {kill}")
        assert _done(box) < total, f"the ingest ended before kill {kill}; slow it down"
        # Where exactly the kill lands is left to chance; this wait synchronises nothing.
        time.sleep(rng.uniform(0.0, 0.3))
        box.stop(proc, signal.SIGKILL)
        _journal_intact(box)
        after_kill()
        proc = box.start()
    names = sorted(f.name for f in flights)
    wait_until(
        lambda: sorted(n for n, d in box.datasets().items() if d["state"] == "processed") == names,
        what="every dataset processed",
    )
    for flight in flights:
        files = box.status(flight.name, files=True)["datasets"][0]["file_list"]
        statuses = sorted(f["status"] for f in files)
        assert statuses == sorted(["uploaded"] * len(flight.images) + ["duplicate"]), statuses
    assert "resumed after an interruption" in box.log(), "some kills landed mid-upload"
    assert box.stop(proc) == 0


def _archived(box: Box) -> Iterator[Path]:
    """Files in the archive, less the daemon's staging folder (its copies before upload)."""
    return (
        p
        for p in box.archive.rglob("*")
        if p.is_file() and STAGING not in p.relative_to(box.archive).parts
    )


def _archive_matches_sources(box: Box) -> None:
    """Every visible file in the archive is a whole, byte-identical copy of its source."""
    for path in _archived(box):
        if path.name.startswith("."):
            continue  # a copy in progress, under its temporary name
        source = box.inbox / path.relative_to(box.archive)
        assert source.is_file(), f"{path} has no source of that name"
        assert _sha(path) == _sha(source), f"{path} differs from its source"


def test_a_dozen_kills_during_an_ingest_into_a_folder_lose_nothing_and_copy_nothing_twice(
    box: Box,
) -> None:
    rng = random.Random(SEED)
    # Copying is slowed down so the ingest lasts long enough for every kill to land in it.
    box.write_config(upload="concurrency = 3\nbandwidth_limit = 600000")
    flights = _flights(box.root / "staging", rng, count=3, per=40, sizes=(30_000, 150_000))

    # A half-written copy must never appear under its real name, whenever the kill lands.
    _kill_repeatedly(
        box, rng, flights, kills=12, more=6, after_kill=lambda: _archive_matches_sources(box)
    )

    for flight in flights:
        stored = [_sha(p) for p in (box.archive / flight.name).rglob("*") if p.is_file()]
        assert sorted(stored) == sorted(flight.images), f"{flight.name}: each image once"
    _archive_matches_sources(box)
    leftovers = [p.name for p in _archived(box) if "~" in p.name or p.name.startswith(".")]
    assert leftovers == [], "no second copy, no temporary file left behind"
    assert list((box.archive / STAGING).iterdir()) == [], "no staged copy left behind"
    assert sorted(box.processed_runs()) == sorted(f.name for f in flights), "processed once each"


def test_ten_kills_during_an_ingest_into_pix4dcloud_land_each_image_once(box: Box) -> None:
    rng = random.Random(SEED + 1)
    flights = _flights(box.root / "staging", rng, count=3, per=20, sizes=(20_000, 80_000))
    with FakePix4DCloud(client_id="soak-box", processing_s=(0.3, 0.6)) as cloud:
        configure_pix4d(box, cloud, SoakOptions(concurrency=3), upload="bandwidth_limit = 200000")

        _kill_repeatedly(box, rng, flights, kills=10, more=3)

        for flight in flights:
            landing, _ = pix4d_landing(cloud, flight)
            assert sorted(landing.stored.elements()) == sorted(flight.images), flight.name
            assert landing.processing_starts == 1, f"{flight.name}: processing started once"
            assert landing.finished
            assert landing.notes == [], "registration matches what was uploaded"


def test_a_kill_while_processing_starts_resumes_it_once(box: Box) -> None:
    # The command runs in its own session and outlives the daemon: after the restart the same
    # run is followed (or the command started), never a second run and never "failed".
    staging = box.root / "staging" / "mission-1"
    for n in range(6):
        _write(staging / f"IMG_{n:04d}.JPG", bytes([n]) * 20_000)
    proc = box.start()
    staging.rename(box.inbox / "mission-1")
    journal = sqlite3.connect(f"file:{box.state / 'journal.sqlite3'}?mode=ro", uri=True)
    handle: tuple[str | None] | None = None
    try:
        # Polled as fast as SQLite answers: the moment lasts a few milliseconds.
        deadline = time.monotonic() + 30
        while handle is None and time.monotonic() < deadline:
            row = journal.execute(
                "SELECT processing_handle FROM datasets"
                " WHERE name = 'mission-1' AND state = 'processing'"
            ).fetchone()
            if row is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                handle = (row[0],)
    finally:
        journal.close()
    assert handle is not None, "processing never started"
    if handle[0] is not None:
        pytest.skip("the kill came after the processing start was answered")
    proc = box.start()
    dataset = wait_until(
        lambda: (
            box.datasets()["mission-1"]["state"] in {"processed", "failed"}
            and box.datasets()["mission-1"]
        ),
        what="the dataset settled after the restart",
    )
    assert dataset["state"] == "processed", dataset["detail"]
    assert box.processed_runs() == ["mission-1"], "the command ran once"
    assert box.stop(proc) == 0
