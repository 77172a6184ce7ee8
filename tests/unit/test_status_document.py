"""The status document from a real journal: ETA, backoff, still datasets, the daemon's stop."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import control
from daemon.journal import Journal
from daemon.status import mark_stopping, read_live, snapshot, write_live
from daemon.status.render import render
from daemon.status.text import size as size_text

NOW = 1_000_000.0
MB = 1_000_000

# The fields every version of the document had: scripts rely on them.
DATASET_FIELDS = {
    "name", "target", "source", "state", "detail", "files", "files_hashing", "files_retrying",
    "last_error", "failed_error", "bytes_total", "bytes_uploaded", "bytes_in_flight", "rate_bps",
    "eta_s", "created_at", "last_activity_at", "quiet_s", "auto_process",
    "processing_started_at", "processing_finished_at", "processing_id",
}  # fmt: skip


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "journal.sqlite3")
    yield opened
    opened.close()


def _dataset(journal: Journal, name: str, sizes: list[int]) -> tuple[int, list[int]]:
    ds = journal.open_dataset(
        volume="/in",
        folder=name.encode(),
        name=name,
        target="archive",
        source="/in",
        auto_process=True,
        quiet_s=600,
        now=NOW - 60,
    ).id
    ids = []
    for n, size in enumerate(sizes):
        fid = journal.add_file(
            dataset_id=ds,
            volume="/in",
            relpath=f"{name}/{n}.jpg".encode(),
            dspath=f"{n}.jpg".encode(),
            size=size,
            mtime_ns=1,
            now=NOW - 60,
        )
        journal.record_hash(
            fid,
            dataset_id=ds,
            size=size,
            mtime_ns=1,
            sha256=f"{name}-{n}",
            duplicate_scope="target",
            now=NOW - 60,
        )
        ids.append(fid)
    journal.flush()
    return ds, ids


def _live(*rates: tuple[int, float]) -> dict[str, object]:
    return {
        "updated_at": NOW,
        "datasets": {str(ds): {"rate_bps": rate, "in_flight_bytes": 0} for ds, rate in rates},
    }


def test_the_eta_waits_for_files_in_backoff_not_only_for_the_bytes(journal: Journal) -> None:
    ds, ids = _dataset(journal, "m", [MB, MB, MB])
    journal.mark_uploaded(ids[0], b"k0", NOW)
    journal.mark_retry(ids[1], "503 busy", NOW + 300)  # parked for five minutes
    journal.flush()

    entry = snapshot(journal, _live((ds, 1.0 * MB)), now=NOW)["datasets"][0]

    # 2 MB at 1 MB/s would say 2 s; the parked file cannot go before 300 s.
    assert entry["eta_s"] == 300.0
    assert (entry["files_backoff"], entry["next_attempt_at"]) == (1, NOW + 300)


def test_with_every_file_parked_there_is_no_rate_only_the_next_try(journal: Journal) -> None:
    ds, ids = _dataset(journal, "m", [MB])
    journal.mark_retry(ids[0], "503 busy", NOW + 90)
    journal.flush()
    entry = snapshot(journal, _live((ds, 0.0)), now=NOW)["datasets"][0]
    assert (entry["rate_bps"], entry["eta_s"], entry["next_attempt_at"]) == (0.0, None, NOW + 90)


@pytest.mark.parametrize("state", ["cancelled", "paused"])
def test_a_cancelled_or_paused_dataset_shows_no_rate(journal: Journal, state: str) -> None:
    ds, ids = _dataset(journal, "m", [MB, MB])
    journal.mark_retry(ids[0], "503 busy", NOW + 90)
    journal.set_dataset_state(ds, state, "by the operator")
    entry = snapshot(journal, _live((ds, 5.0 * MB)), now=NOW)["datasets"][0]
    assert (entry["rate_bps"], entry["eta_s"], entry["next_attempt_at"]) == (0.0, None, None)
    assert entry["active"] is (state == "paused")


def test_a_stopping_daemon_shows_no_rate_and_says_so(journal: Journal) -> None:
    ds, _ = _dataset(journal, "m", [MB])
    live = {**_live((ds, 5.0 * MB)), "stopping": True, "cards": [{"label": "A"}]}
    doc = snapshot(journal, live, now=NOW)
    assert doc["daemon"] == {"running": False, "stopping": True}
    assert doc["datasets"][0]["rate_bps"] == 0.0
    assert doc["cards"] == []


def test_the_document_keeps_every_field_and_adds_the_summary_and_requests(
    journal: Journal, tmp_path: Path
) -> None:
    ds, ids = _dataset(journal, "m", [MB, 3 * MB])
    journal.mark_uploaded(ids[0], b"k0", NOW)
    journal.flush()
    control.submit(tmp_path, "process", "m")
    control.submit(tmp_path, "retry", None)

    doc = snapshot(journal, _live((ds, 1.0 * MB)), requests=control.queued(tmp_path), now=NOW)

    assert not DATASET_FIELDS - doc["datasets"][0].keys()
    assert {"running", "stopping"} <= doc["daemon"].keys()
    assert doc["summary"] == {
        "datasets_active": 1,
        "files_done": 1,
        "files_total": 2,
        "percent": 50,
        "rate_bps": 1_000_000.0,
        "eta_s": 3.0,
        "files_failed": 0,
        "datasets_total": 1,
        "datasets_hidden": 0,
    }
    assert [(r["action"], r["dataset"]) for r in doc["requests"]] == [
        ("process", "m"),
        ("retry", None),
    ]
    assert all(abs(r["queued_at"] - time.time()) < 60 for r in doc["requests"])
    json.dumps(doc)  # plain JSON throughout


def test_reading_the_queue_for_status_sets_nothing_aside(tmp_path: Path) -> None:
    good = control.submit(tmp_path, "cancel", "m")
    bad = tmp_path / control.REQUESTS / "00000000000000000001-bad.json"
    bad.write_text("{not json")
    assert [r.path for r in control.queued(tmp_path)] == [good]
    assert bad.exists()  # the daemon sets it aside, not `status`


def test_a_stopped_daemon_is_seen_at_once_and_a_stopping_one_from_its_mark(
    tmp_path: Path,
) -> None:
    lock = control.DaemonLock(tmp_path)
    assert lock.acquire()
    write_live(tmp_path, {"updated_at": NOW, "pid": os.getpid(), "datasets": {}})
    assert read_live(tmp_path, NOW) != {}
    assert "stopping" not in read_live(tmp_path, NOW)

    mark_stopping(tmp_path)
    os.utime(tmp_path / "live.stopping", ns=(0, (tmp_path / control.LOCK).stat().st_mtime_ns + 1))
    assert read_live(tmp_path, NOW)["stopping"] is True

    lock.release()  # the process ended: its live file, however fresh, is not current
    assert read_live(tmp_path, NOW) == {}

    assert lock.acquire()  # the next start: an older stopping mark no longer counts
    os.utime(tmp_path / control.LOCK, ns=(0, (tmp_path / "live.stopping").stat().st_mtime_ns + 1))
    assert "stopping" not in read_live(tmp_path, NOW)
    lock.release()


def test_history_is_left_out_of_the_document_but_counted_and_every_lists_it(
    journal: Journal,
) -> None:
    old, old_ids = _dataset(journal, "last-year", [MB, MB])
    for fid in old_ids:
        journal.mark_uploaded(fid, b"k", NOW - 400 * 86_400)
    journal.set_dataset_state(
        old, "processed", processing_started_at=NOW - 300 * 86_400,
        processing_finished_at=NOW - 300 * 86_400,
    )  # fmt: skip
    journal._conn.execute(
        "UPDATE datasets SET created_at = ?, last_activity_at = ? WHERE id = ?",
        (NOW - 400 * 86_400, NOW - 400 * 86_400, old),
    )
    held, held_ids = _dataset(journal, "held-back", [MB, MB])  # a failed file: current
    journal.mark_failed(held_ids[0], "HTTP 500")
    journal._conn.execute(
        "UPDATE datasets SET state = 'processed', created_at = 1, last_activity_at = 1"
        " WHERE id = ?",
        (held,),
    )
    _dataset(journal, "today", [MB])

    doc = snapshot(journal, {}, now=NOW)
    every = snapshot(journal, {}, now=NOW, every=True)

    assert [ds["name"] for ds in doc["datasets"]] == ["held-back", "today"]
    assert all(ds["current"] for ds in doc["datasets"])
    assert (doc["summary"]["datasets_total"], doc["summary"]["datasets_hidden"]) == (3, 1)
    assert [ds["name"] for ds in every["datasets"]] == ["last-year", "held-back", "today"]
    assert every["summary"]["datasets_hidden"] == 0
    # The listing changes nothing the summary says: it adds up the current datasets either way.
    assert {k: v for k, v in doc["summary"].items() if k != "datasets_hidden"} == {
        k: v for k, v in every["summary"].items() if k != "datasets_hidden"
    }
    assert every["datasets"][0]["files"]["uploaded"] == 2
    size = os.stat(journal.path).st_size
    assert doc["journal"]["path"] == str(journal.path)
    assert doc["journal"]["bytes"] >= size > 0

    text = render(doc, bars=False, now=NOW)
    assert "today" in text
    assert "last-year" not in text
    assert "1 older dataset not shown" in text
    assert f"journal: {size_text(doc['journal']['bytes'])} ({journal.path})" in text
    assert "last-year" in render(every, bars=False, now=NOW, show_all=True)
