"""The human status table: counts, bars, quiet countdown and hints."""

from __future__ import annotations

from typing import Any

from daemon.status import render


def _doc(**overrides: Any) -> dict[str, Any]:
    ds = {
        "name": "mission-1",
        "target": "archive",
        "source": "/in",
        "state": "collecting",
        "detail": None,
        "files": {"waiting": 2, "uploading": 1, "uploaded": 6, "duplicate": 1, "failed": 0},
        "files_hashing": 0,
        "bytes_total": 10_000_000,
        "bytes_uploaded": 7_000_000,
        "bytes_in_flight": 0,
        "rate_bps": 2_000_000.0,
        "eta_s": 1.5,
        "created_at": 0.0,
        "last_activity_at": 100.0,
        "quiet_s": 600.0,
        "auto_process": True,
        "processing_started_at": None,
        "processing_finished_at": None,
    }
    ds.update(overrides)
    return {"daemon": {"running": True}, "datasets": [ds]}


def test_counts_bytes_rate_and_eta() -> None:
    text = render(_doc(), bars=False, now=200.0)
    assert "mission-1  [collecting]  -> archive" in text
    assert "6 uploaded, 1 duplicate, 2 waiting, 1 uploading, 0 failed" in text
    assert "7.0 MB of 10.0 MB" in text
    assert "2.0 MB/s  ETA 1s" in text


def test_progress_bar_on_a_terminal() -> None:
    assert "[#######" in render(_doc(), bars=True, now=200.0)


def test_quiet_countdown_once_everything_is_uploaded() -> None:
    files = {"waiting": 0, "uploading": 0, "uploaded": 9, "duplicate": 1, "failed": 0}
    text = render(_doc(files=files, rate_bps=0.0), bars=False, now=200.0)
    assert "processing starts after 8m20s of quiet" in text


def test_daemon_not_running_and_no_datasets() -> None:
    text = render({"daemon": {"running": False}, "datasets": []}, bars=False)
    assert "daemon: not running" in text
    assert "no datasets yet" in text


def test_detail_and_file_errors_are_shown() -> None:
    doc = _doc(detail="2 failed file(s) hold processing back; `dronesync retry` them")
    doc["datasets"][0]["file_list"] = [
        {"path": "a.jpg", "status": "failed", "last_error": "disk full", "duplicate_of": None},
        {"path": "b.jpg", "status": "duplicate", "last_error": None, "duplicate_of": "/in/c.jpg"},
    ]
    text = render(doc, bars=False, now=200.0)
    assert "hold processing back" in text
    assert "failed    a.jpg  (disk full)" in text
    assert "duplicate b.jpg  (same as /in/c.jpg)" in text


def test_control_characters_in_names_and_errors_are_escaped() -> None:
    doc = _doc(name="card\x1b[31m-red", detail="retrying: /in/x\ny.jpg: denied")
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
    text = render(doc, bars=False, now=200.0)
    lines = text.splitlines()
    assert not any(line.lstrip().startswith("uploaded  forged") for line in lines), text
    assert all(line.isprintable() for line in lines), text
    assert "card\\x1b[31m-red  [collecting]" in text
    assert "/in/x\\ny.jpg: denied" in text
    assert "failed    a\\n    uploaded  forged.jpg  (cannot open 'a\\rb\\u202ec.jpg')" in text
    assert "duplicate tab\\there.jpg  (same as /in/\\x9bc.jpg)" in text
