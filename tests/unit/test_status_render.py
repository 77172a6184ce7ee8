"""The human status: a summary line, one line per current dataset, no zero counts."""

from __future__ import annotations

import re
from typing import Any

from daemon.status import render
from daemon.status.document import is_current, summary

NOW = 1_000_000.0
DAY = 86_400.0


def _ds(**overrides: Any) -> dict[str, Any]:
    ds: dict[str, Any] = {
        "name": "mission-1",
        "target": "archive",
        "source": "/in",
        "state": "collecting",
        "detail": None,
        "files": {
            "waiting": 2,
            "uploading": 1,
            "uploaded": 6,
            "duplicate": 1,
            "failed": 0,
            "skipped": 0,
        },
        "files_hashing": 0,
        "files_retrying": 0,
        "files_backoff": 0,
        "next_attempt_at": None,
        "last_error": None,
        "failed_error": None,
        "bytes_total": 10_000_000,
        "bytes_uploaded": 7_000_000,
        "bytes_in_flight": 0,
        "rate_bps": 2_000_000.0,
        "eta_s": 1.5,
        "created_at": NOW - 300,
        "last_activity_at": NOW - 100,
        "quiet_s": 600.0,
        "auto_process": True,
        "processing_started_at": None,
        "processing_finished_at": None,
        "processing_id": None,
    }
    ds.update(overrides)
    return ds


def _doc(*datasets: dict[str, Any], running: bool = True, **extra: Any) -> dict[str, Any]:
    sets = list(datasets) or [_ds()]
    for ds in sets:
        ds["active"] = ds["state"] in ("collecting", "ready", "processing", "paused")
        ds["current"] = is_current(ds, NOW)
    doc = {"daemon": {"running": running, "stopping": False}, "datasets": sets, **extra}
    doc["summary"] = summary(sets)
    return doc


def test_a_summary_line_comes_first_then_one_line_per_dataset() -> None:
    lines = render(_doc(), bars=False, now=NOW).splitlines()
    assert lines == [
        "1 dataset active, 7 of 10 files done (70%), 2.0 MB/s, ETA 1s",
        "mission-1  [collecting]  -> archive  70%  6 uploaded, 1 duplicate, 2 waiting,"
        " 1 uploading  7.0 MB of 10.0 MB  2.0 MB/s  ETA 1s",
    ]


def test_the_summary_adds_up_active_datasets_and_counts_failures() -> None:
    files = {"waiting": 0, "uploading": 0, "uploaded": 8, "duplicate": 0, "failed": 2}
    stuck = _ds(name="stuck", files=files, rate_bps=0.0, eta_s=None, failed_error="refused")
    first = render(_doc(_ds(eta_s=40.0), stuck), bars=False, now=NOW).splitlines()[0]
    assert first == "2 datasets active, 15 of 20 files done (75%), 2.0 MB/s, ETA 40s, 2 failed"


def test_zero_counts_are_left_out() -> None:
    files = {"waiting": 0, "uploading": 0, "uploaded": 9, "duplicate": 0, "failed": 0}
    done = _ds(state="processed", files=files, rate_bps=0.0, eta_s=None)
    text = render(_doc(done), bars=False, now=NOW)
    assert "9 uploaded" in text
    assert not re.search(r"\b0 [a-z]", text), text
    for word in ("duplicate", "waiting", "failed", "ETA", "/s"):
        assert word not in text, (word, text)
    assert text.splitlines()[0] == "nothing active"


def test_progress_bar_on_a_terminal_only() -> None:
    assert "[##############......] 70%" in render(_doc(), bars=True, now=NOW)
    assert "[#" not in render(_doc(), bars=False, now=NOW)


def test_datasets_done_over_a_day_ago_are_left_out_unless_all() -> None:
    old = {"created_at": NOW - 3 * DAY, "last_activity_at": NOW - 3 * DAY}
    files = {"waiting": 0, "uploading": 0, "uploaded": 5, "duplicate": 0, "failed": 0}
    doc = _doc(
        _ds(name="now"),
        _ds(name="yesterday", state="processed", files=files, processing_finished_at=NOW - 3600),
        _ds(name="last-week", state="processed", files=files, **old),
        _ds(name="gave-up", state="cancelled", files=files, **old),
        _ds(name="broken", state="failed", files=files, detail="node crashed", **old),
    )
    text = render(doc, bars=False, now=NOW)
    names = [line.split("  ")[0] for line in text.splitlines()[1:] if "  [" in line]
    assert names == ["now", "yesterday", "broken"]
    assert text.splitlines()[-1].startswith("2 older datasets not shown")
    every = render(doc, bars=False, now=NOW, show_all=True)
    assert "last-week  [processed]" in every
    assert "gave-up  [cancelled]" in every
    assert "not shown" not in every


def test_files_waiting_out_a_backoff_say_when_they_are_tried_next() -> None:
    files = {"waiting": 6, "uploading": 0, "uploaded": 4, "duplicate": 0, "failed": 0}
    ds = _ds(
        files=files,
        rate_bps=0.0,
        eta_s=None,
        files_retrying=6,
        files_backoff=6,
        next_attempt_at=NOW + 130,
        last_error="blocked: refused",
    )
    lines = render(_doc(ds), bars=False, now=NOW).splitlines()
    assert lines[1].endswith("next try in 2m10s")
    assert "  6 retrying: blocked: refused" in lines


def test_quiet_countdown_once_everything_is_uploaded() -> None:
    files = {"waiting": 0, "uploading": 0, "uploaded": 9, "duplicate": 1, "failed": 0}
    text = render(_doc(_ds(files=files, rate_bps=0.0)), bars=False, now=NOW)
    assert "processing starts after 8m20s of quiet" in text


def test_a_stopped_daemon_and_no_datasets() -> None:
    doc = {"daemon": {"running": False}, "datasets": [], "summary": summary([])}
    lines = render(doc, bars=False).splitlines()
    assert lines[0] == "daemon not running: nothing active (figures from the journal)"
    assert "no datasets yet" in lines[1]


def test_a_stopping_daemon_is_said_in_the_summary() -> None:
    doc = _doc(_ds(rate_bps=0.0, eta_s=None))
    doc["daemon"] = {"running": False, "stopping": True}
    first = render(doc, bars=False, now=NOW).splitlines()[0]
    assert first == "daemon stopping: 1 dataset active, 7 of 10 files done (70%)"


def test_queued_requests_are_shown_until_applied() -> None:
    requests = [
        {"action": "process", "dataset": "mission-1", "queued_at": None},
        {"action": "retry", "dataset": None, "queued_at": None},
    ]
    lines = render(_doc(running=False, requests=requests), bars=False, now=NOW).splitlines()
    assert lines[1:3] == [
        "queued: process mission-1 (applied when the daemon starts)",
        "queued: retry every dataset (applied when the daemon starts)",
    ]


def test_detail_and_file_errors_are_shown() -> None:
    doc = _doc(_ds(detail="2 failed file(s) hold processing back; `dronesync retry` them"))
    doc["datasets"][0]["file_list"] = [
        {"path": "a.jpg", "status": "failed", "last_error": "disk full", "duplicate_of": None},
        {"path": "b.jpg", "status": "duplicate", "last_error": None, "duplicate_of": "/in/c.jpg"},
    ]
    text = render(doc, bars=False, now=NOW)
    assert "hold processing back" in text
    assert "failed    a.jpg  (disk full)" in text
    assert "duplicate b.jpg  (same as /in/c.jpg)" in text


def test_control_characters_in_names_and_errors_are_escaped() -> None:
    doc = _doc(_ds(name="card\x1b[31m-red", detail="retrying: /in/x\ny.jpg: denied"))
    doc["datasets"][0]["file_list"] = [
        {
            "path": "a\n    uploaded  forged.jpg",
            "status": "failed",
            "last_error": "cannot open 'a\rb\u202ec.jpg'",
            "duplicate_of": None,
        },
        {
            "path": "tab\there.jpg",
            "status": "duplicate",
            "last_error": None,
            "duplicate_of": "/in/\x9bc.jpg",
        },
    ]
    text = render(doc, bars=False, now=NOW)
    lines = text.splitlines()
    assert not any(line.lstrip().startswith("uploaded  forged") for line in lines), text
    assert all(line.isprintable() for line in lines), text
    assert "card\\x1b[31m-red  [collecting]" in text
    assert "/in/x\\ny.jpg: denied" in text
    assert "failed    a\\n    uploaded  forged.jpg  (cannot open 'a\\rb\\u202ec.jpg')" in text
    assert "duplicate tab\\there.jpg  (same as /in/\\x9bc.jpg)" in text
