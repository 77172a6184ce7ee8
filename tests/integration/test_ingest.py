"""End to end: a real daemon process, real folders, real SQLite, real watchdog."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from daemon.configfile import checked_state_dir
from tests.conftest import Box, wait_until

FILE_STATUSES = {"waiting", "uploading", "uploaded", "duplicate", "failed", "skipped"}


def _images(folder: Path, count: int, rng: random.Random, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"DJI_{i:04d}.JPG"
        path.write_bytes(rng.randbytes(rng.randint(20_000, 120_000)))
        paths.append(path)
    return paths


def _archive_files(archive: Path) -> dict[str, list[Path]]:
    """Archived images by content hash (processing output and temp files excluded)."""
    found: dict[str, list[Path]] = {}
    for path in archive.rglob("*"):
        if path.is_file():
            found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    return found


def _slow_writer(path: Path, data: bytes, seconds: float) -> threading.Thread:
    """Write ``data`` in pieces over ``seconds``, like a copy from a slow card reader."""

    def write() -> None:
        pieces = 12
        step = len(data) // pieces + 1
        with path.open("wb") as fh:
            for i in range(0, len(data), step):
                fh.write(data[i : i + step])
                fh.flush()
                time.sleep(seconds / pieces)  # pacing a writer, not synchronising the test

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def _uploaded(box: Box) -> int:
    return sum(d["files"]["uploaded"] for d in box.status()["datasets"])


def _check_status_shape(doc: dict[str, Any]) -> None:
    assert set(doc) >= {"datasets"}
    for ds in doc["datasets"]:
        assert set(ds) >= {
            "name",
            "target",
            "source",
            "state",
            "files",
            "bytes_total",
            "bytes_uploaded",
        }
        assert set(ds["files"]) == FILE_STATUSES
        assert ds["state"] in {
            "collecting",
            "ready",
            "processing",
            "processed",
            "failed",
            "cancelled",
            "paused",
        }
        assert 0 <= ds["bytes_uploaded"] <= ds["bytes_total"]


def test_two_missions_with_copies_a_slow_file_and_a_non_image(box: Box) -> None:
    rng = random.Random(7)
    a = _images(box.inbox / "mission-a", 24, rng)
    b = _images(box.inbox / "mission-b", 20, rng, start=100)
    copies = [
        (a[0], box.inbox / "mission-a" / "COPY_0001.JPG"),
        (a[1], box.inbox / "mission-a" / "copy_0002.jpg"),
        (a[2], box.inbox / "mission-b" / "DJI_9002.JPG"),
        (b[0], box.inbox / "mission-b" / "DJI_9000.JPG"),
        (b[1], box.inbox / "mission-a" / "DJI_9001.tif"),
    ]
    for src, dst in copies:
        dst.write_bytes(src.read_bytes())
    (box.inbox / "mission-b" / "flight.SRT").write_text("telemetry, not an image")
    slow_data = rng.randbytes(300_000)
    proc = box.start()
    slow = _slow_writer(box.inbox / "mission-b" / "DJI_SLOW.JPG", slow_data, 3.0)

    seen_states: set[str] = set()

    def both_processed() -> bool:
        doc = box.status()
        _check_status_shape(doc)
        seen_states.update(d["state"] for d in doc["datasets"])
        states = {d["name"]: d["state"] for d in doc["datasets"]}
        return states == {"mission-a": "processed", "mission-b": "processed"}

    wait_until(both_processed, what="both datasets processed")
    slow.join()
    sets = box.datasets()
    total_files = {name: sum(ds["files"].values()) for name, ds in sets.items()}
    assert total_files == {"mission-a": 27, "mission-b": 23}  # 50 images; .SRT ignored
    assert sum(ds["files"]["duplicate"] for ds in sets.values()) == 5
    assert sum(ds["files"]["uploaded"] for ds in sets.values()) == 45
    assert all(ds["files"]["failed"] == 0 for ds in sets.values())
    assert "collecting" in seen_states

    archived = _archive_files(box.archive)
    sources = [p for p in box.inbox.rglob("*") if p.suffix.upper() in {".JPG", ".TIF"}]
    unique = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sources}
    assert len(unique) == 45
    assert set(archived) == unique  # everything arrived, byte-identical ...
    assert all(len(paths) == 1 for paths in archived.values())  # ... and exactly once
    slow_copy = box.archive / "mission-b" / "DJI_SLOW.JPG"
    assert slow_copy.read_bytes() == slow_data  # never copied truncated
    assert not list(box.archive.rglob("*.SRT"))
    assert not list(box.archive.rglob(".*dronesync-part"))
    assert sorted(box.processed_runs()) == ["mission-a", "mission-b"]  # once per dataset

    listing = box.cli("status", "--files", "mission-a").stdout
    assert "duplicate" in listing
    assert "same as" in listing
    assert box.stop(proc) == 0


def test_sigkill_mid_ingest_uploads_nothing_twice_and_loses_nothing(box: Box) -> None:
    box.write_config(upload="bandwidth_limit = 400000")
    rng = random.Random(11)
    _images(box.inbox / "m1", 15, rng)
    _images(box.inbox / "m2", 15, rng, start=50)
    sources = {hashlib.sha256(p.read_bytes()).hexdigest() for p in box.inbox.rglob("*.JPG")}
    kills = 0
    for _ in range(3):
        proc = box.start()
        before = _uploaded(box)
        goal = before + 3
        wait_until(lambda: _uploaded(box) >= goal, what="a few more uploads")  # noqa: B023
        box.stop(proc, signal.SIGKILL)
        kills += 1
    assert kills == 3
    uploaded = sum(d["files"]["uploaded"] for d in box.status()["datasets"])
    assert uploaded < len(sources)  # the kills really happened mid-ingest

    proc = box.start()
    wait_until(
        lambda: {d["state"] for d in box.status()["datasets"]} == {"processed"},
        timeout=60,
        what="everything processed after the restarts",
    )
    archived = _archive_files(box.archive)
    assert set(archived) == sources
    assert all(len(paths) == 1 for paths in archived.values()), "a file was stored twice"
    assert not list(box.archive.rglob(".*dronesync-part"))
    assert sorted(box.processed_runs()) == ["m1", "m2"]
    assert box.stop(proc) == 0
    db = sqlite3.connect(box.state / "journal.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM files WHERE status = 'uploading'").fetchone()[0] == 0


def test_manual_process_retry_and_cancel_act_within_two_seconds(box: Box) -> None:
    box.write_config(source="auto_process = false")
    rng = random.Random(3)
    _images(box.inbox / "survey", 6, rng)
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("survey", {}).get("state") == "ready",
        what="dataset ready for manual processing",
    )
    assert box.processed_runs() == []
    # The answer comes from the running daemon (a request it had not taken up would be
    # reported as "queued"): the CLI waits only a few seconds for it.
    out = box.cli("process", "survey").stdout
    assert "processing started" in out
    wait_until(lambda: box.datasets()["survey"]["state"] == "processed", what="processed")
    assert box.processed_runs() == ["survey"]

    # Files that arrive after processing started go into the next dataset, survey-2.
    _images(box.inbox / "survey", 2, rng, start=500)
    wait_until(
        lambda: box.datasets().get("survey-2", {}).get("state") == "ready", what="follow-up dataset"
    )
    assert sum(box.datasets()["survey-2"]["files"].values()) == 2

    out = box.cli("cancel", "survey-2").stdout
    assert "cancelled" in out
    assert box.datasets()["survey-2"]["state"] == "cancelled"
    out = box.cli("retry", "survey-2").stdout
    assert "resumed" in out
    assert box.stop(proc) == 0


def test_requests_made_while_stopped_are_applied_at_next_start(box: Box) -> None:
    box.write_config(source="auto_process = false")
    _images(box.inbox / "late", 3, random.Random(5))
    proc = box.start()
    wait_until(lambda: box.datasets().get("late", {}).get("state") == "ready", what="ready")
    assert box.stop(proc) == 0
    out = box.cli("process", "late").stdout
    assert "queued" in out
    proc = box.start()
    wait_until(lambda: box.datasets()["late"]["state"] == "processed", what="processed")
    assert box.processed_runs() == ["late"]
    assert box.stop(proc) == 0


def test_failed_files_hold_processing_back_until_retried(box: Box) -> None:
    box.write_config(upload="attempts = 2\nquick_retries = 0")
    # A file where the dataset's folder goes: every copy fails (an archive path that is a
    # file is refused at start, so the obstacle is one level down).
    box.archive.mkdir()
    (box.archive / "blocked").write_text("not a folder")
    _images(box.inbox / "blocked", 4, random.Random(9))
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("blocked", {}).get("files", {}).get("failed") == 4,
        what="files to fail",
    )
    ds = box.datasets()["blocked"]
    assert ds["state"] == "collecting"
    wait_until(
        lambda: "retry" in (box.datasets()["blocked"]["detail"] or ""), what="a hint to retry"
    )
    listing = box.status(files=True)["datasets"][0]["file_list"]
    assert all(f["last_error"] for f in listing)
    assert box.processed_runs() == []

    (box.archive / "blocked").unlink()
    out = box.cli("retry", "--all").stdout
    assert "4 failed file(s) back to waiting" in out
    wait_until(lambda: box.datasets()["blocked"]["state"] == "processed", what="processed")
    assert box.processed_runs() == ["blocked"]
    assert box.stop(proc) == 0


def test_sigterm_stops_promptly_and_leaves_the_journal_consistent(box: Box) -> None:
    box.write_config(upload="bandwidth_limit = 200000")
    _images(box.inbox / "big", 10, random.Random(1))
    proc = box.start()
    wait_until(
        lambda: any(d["files"]["uploaded"] for d in box.status()["datasets"]),
        what="uploads under way",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0  # promptly: not after the uploads under way
    db = sqlite3.connect(box.state / "journal.sqlite3")
    assert db.execute("SELECT count(*) FROM files WHERE status = 'uploading'").fetchone()[0] == 0
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "stopped" in box.log()


def test_sighup_reloads_the_configuration(box: Box) -> None:
    box.write_config(source="auto_process = false")
    _images(box.inbox / "hup", 3, random.Random(2))
    proc = box.start()
    wait_until(lambda: box.datasets().get("hup", {}).get("state") == "ready", what="ready")
    box.write_config(source="auto_process = true")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: box.datasets()["hup"]["state"] == "processed", what="processed")
    assert "configuration reloaded" in box.log()
    assert checked_state_dir(box.config) == box.state  # `status` trusts the file reloaded

    box.config.write_text("this is [not toml")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration not reloaded" in box.log(), what="the reload refused")
    _images(box.inbox / "after", 2, random.Random(4))
    wait_until(
        lambda: box.datasets().get("after", {}).get("state") == "processed",
        what="the daemon still ingesting on the old configuration",
    )
    assert box.stop(proc) == 0


def test_polling_source_and_hostile_names(box: Box) -> None:
    box.write_config(source="poll_s = 0.5")
    folder = box.inbox / "odd names"
    folder.mkdir()
    names = [b"with space.JPG", b"new\nline.JPG", b"latin1-\xe9t\xe9.JPG", b"x" * 251 + b".JPG"]
    payloads = {}
    for i, name in enumerate(names):
        data = random.Random(i).randbytes(5_000)
        (Path(os.fsdecode(os.fsencode(folder) + b"/" + name))).write_bytes(data)
        payloads[name] = data
    (folder / "empty.JPG").write_bytes(b"")
    (folder / "loop.JPG").symlink_to(folder / "loop.JPG")
    (folder / "outside.JPG").symlink_to("/etc/hostname")
    os.mkfifo(folder / "fifo.JPG")
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("odd names", {}).get("state") == "processed",
        what="the odd dataset processed",
    )
    for name, data in payloads.items():
        stored = Path(os.fsdecode(os.fsencode(box.archive / "odd names") + b"/" + name))
        assert stored.read_bytes() == data
    assert not (box.archive / "odd names" / "outside.JPG").exists()
    assert not (box.archive / "odd names" / "fifo.JPG").exists()
    files = box.status("odd names", files=True)["datasets"][0]["file_list"]
    assert "latin1-\\xe9t\\xe9.JPG" in {f["path"] for f in files}
    empty = next(f for f in files if f["path"] == "empty.JPG")
    assert empty["status"] == "skipped"
    assert "empty file" in empty["last_error"]
    assert not (box.archive / "odd names" / "empty.JPG").exists()
    assert "1 skipped" in box.cli("status", "odd names").stdout
    assert box.stop(proc) == 0


def test_a_source_that_goes_away_pauses_and_resumes_without_resending(box: Box) -> None:
    # About 8 s of uploading at this rate: a wide window to pull the card in. Without staging:
    # staged images are off the card at once, and nothing would wait for it.
    box.write_config(upload="bandwidth_limit = 100000\nconcurrency = 1", target="staging = false")
    rng = random.Random(8)
    _images(box.inbox / "card", 12, rng)
    sources = {hashlib.sha256(p.read_bytes()).hexdigest() for p in box.inbox.rglob("*.JPG")}
    proc = box.start()
    wait_until(lambda: _uploaded(box) >= 1, what="uploads under way")
    pulled = box.root / "pulled"
    box.inbox.rename(pulled)  # the card is pulled
    wait_until(lambda: box.datasets()["card"]["state"] == "paused", what="dataset paused")
    ds = box.datasets()["card"]
    assert ds["files"]["failed"] == 0
    assert ds["files"]["waiting"] > 0
    pulled.rename(box.inbox)  # ... and pushed back
    wait_until(lambda: box.datasets()["card"]["state"] == "processed", what="processed")
    archived = _archive_files(box.archive)
    assert set(archived) == sources
    assert all(len(paths) == 1 for paths in archived.values())
    assert box.processed_runs() == ["card"]
    assert box.stop(proc) == 0


def test_a_target_removed_from_the_configuration_parks_its_files(box: Box) -> None:
    box.write_config(upload="bandwidth_limit = 50000\nconcurrency = 1")
    _images(box.inbox / "m", 6, random.Random(12))
    proc = box.start()
    wait_until(lambda: _uploaded(box) >= 1, what="uploads under way")
    renamed = box.config.read_text().replace("archive", "elsewhere")
    original = box.config.read_text()
    box.config.write_text(renamed)
    proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any(
            "not in the configuration" in (f["last_error"] or "")
            for f in box.status("m", files=True)["datasets"][0]["file_list"]
        ),
        what="files parked with the reason",
    )
    assert proc.poll() is None  # still running
    box.config.write_text(original)
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: box.datasets()["m"]["state"] == "processed", what="processed")
    assert box.stop(proc) == 0


def test_a_folder_deleted_after_its_upload_stays_uploaded(box: Box) -> None:
    # Without staging the archive's copies come from the folder itself, read at upload time.
    box.write_config(target="staging = false")
    rng = random.Random(21)
    _images(box.inbox / "first", 3, rng)
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("first", {}).get("state") == "processed",
        what="first processed",
    )
    shutil.rmtree(box.inbox / "first")  # the pilot clears the inbox
    # A folder moved in makes the daemon scan the inbox again; it finds "first" gone.
    _images(box.root / "second", 1, rng)
    (box.root / "second").rename(box.inbox / "second")
    wait_until(
        lambda: box.datasets().get("second", {}).get("files", {}).get("uploaded") == 1,
        what="the rescan that found the second folder",
    )
    files = box.datasets()["first"]["files"]
    assert (files["uploaded"], files["failed"]) == (3, 0), files
    assert box.stop(proc) == 0


def test_a_file_deleted_while_its_upload_waits_fails_alone(box: Box) -> None:
    # Without staging, uploads read the folder itself; slow ones keep the rest waiting, hashed.
    box.write_config(target="staging = false", upload="bandwidth_limit = 50000\nconcurrency = 1")
    rng = random.Random(33)
    _images(box.inbox / "first", 6, rng)
    proc = box.start()

    def hashed_and_waiting() -> list[Path]:
        if "first" not in box.datasets():
            return []
        listing = box.status("first", files=True)["datasets"][0]["file_list"]
        return [Path(f["source_path"]) for f in listing if f["status"] == "waiting" and f["sha256"]]

    wait_until(
        lambda: len(hashed_and_waiting()) == 5,
        what="one upload under way, the other five hashed and waiting",
    )
    gone = hashed_and_waiting()[-1]
    gone.unlink()
    # A folder moved in makes the daemon scan the inbox again: the scan passes over the
    # files it hashed and still finds there, and finds the deleted one missing.
    _images(box.root / "second", 1, rng)
    (box.root / "second").rename(box.inbox / "second")
    wait_until(
        lambda: box.datasets().get("second", {}).get("files", {}).get("uploaded") == 1,
        what="the rescan that found the second folder",
    )
    wait_until(
        lambda: box.datasets()["first"]["files"]["uploaded"] == 5,
        what="the five files still there uploaded",
    )
    files = box.datasets()["first"]["files"]
    assert (files["uploaded"], files["failed"], files["waiting"]) == (5, 1, 0), files
    listing = box.status("first", files=True)["datasets"][0]["file_list"]
    failed = [Path(f["source_path"]) for f in listing if f["last_error"]]
    assert failed == [gone]
    assert box.stop(proc) == 0


def test_a_file_still_being_written_keeps_its_dataset_from_processing(box: Box) -> None:
    """Processing waits for the file's last write; test_processing.py times the quiet period."""
    text = box.config.read_text(encoding="utf-8")
    text = text.replace("stable_s = 0.3", "stable_s = 1").replace("quiet_s = 1.5", "quiet_s = 4")
    box.config.write_text(text, encoding="utf-8")
    box.start()
    rng = random.Random(21)
    mission = box.inbox / "mission"
    _images(mission, 24, rng)
    wait_until(lambda: box.datasets().get("mission"), what="the dataset to be noticed")
    data = rng.randbytes(400_000)
    with (mission / "DJI_0100.JPG").open("wb") as fh:
        for i in range(8):
            fh.write(data[i * 50_000 : (i + 1) * 50_000])
            fh.flush()
            time.sleep(0.5)  # pacing a slow writer, not synchronising the test
    wait_until(box.processed_runs, what="processing to start")
    # Processing began with the slow file in it: had it begun while the file was being
    # written, the file would have gone to a follow-up dataset (mission-2), read whole.
    assert box.processed_runs() == ["mission"]
    assert set(box.datasets()) == {"mission"}
    assert box.datasets()["mission"]["files"]["uploaded"] == 25
    archived = box.archive / "mission" / "DJI_0100.JPG"
    assert archived.read_bytes() == data


def test_a_dataset_the_archive_cannot_take_fails_at_once_and_holds_back_no_other(
    box: Box,
) -> None:
    """A file where the dataset's folder goes: failed with the reason, the others go on."""
    box.archive.mkdir()
    (box.archive / "blocked").write_text("x")
    box.start()
    rng = random.Random(5)
    _images(box.inbox / "blocked", 6, rng)
    wait_until(
        lambda: box.datasets().get("blocked", {}).get("files", {}).get("failed") == 6,
        timeout=20,
        what="the six files to fail",
    )
    _images(box.inbox / "fresh", 5, rng)
    wait_until(lambda: box.processed_runs() == ["fresh"], timeout=20, what="fresh processed")
    listing = box.cli("status").stdout
    assert "a file is where a folder should be" in listing
    files = box.status("blocked", files=True)["datasets"][0]["file_list"]
    assert {f["attempts"] for f in files} == {1}  # no retry can fix it: one attempt each
