"""The ``status --json`` document: the journal, the live figures and the queued requests.

Reading only: nothing here writes the journal or the request folder. The document's shape is a
contract (docs/operations.md "status --json"): fields are added, never renamed or removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from daemon.control import Request
from daemon.journal import FILE_STATUSES, FileRow, Journal
from daemon.status.text import display_path

DAY_S = 86_400.0
# States with work left on the box or the target: what "active" counts.
ACTIVE_STATES = ("collecting", "ready", "processing", "paused")
# States in which nothing is sent: a rate or an ETA there would be a leftover.
STILL_STATES = ("cancelled", "paused")


def snapshot(
    journal: Journal,
    live: dict[str, Any],
    *,
    dataset: str | None = None,
    files: bool = False,
    requests: Sequence[Request] = (),
    now: float | None = None,
    every: bool = False,
) -> dict[str, Any]:
    """The ``status --json`` document (shape documented in docs/operations.md).

    It lists the current datasets (:func:`is_current`), or ``every`` one, or the one named
    ``dataset``. History is not read: a box keeps every dataset it ever sent, and the
    current ones and the kept counts are all ``status`` needs.
    """
    now = time.time() if now is None else now
    if dataset is not None:
        found = journal.dataset_by_name(dataset)
        rows = [] if found is None else [found]
    elif every:
        rows = journal.datasets()
    else:
        rows = journal.current_datasets(now - DAY_S)
    counts = journal.counts(None if every else [row.id for row in rows])
    troubles = journal.troubles()
    parked = journal.parked(now)
    running = bool(live) and not live.get("stopping")
    live_sets: dict[str, Any] = live.get("datasets", {}) if running else {}
    out = []
    for row in rows:
        c = counts.get(row.id)
        per_status = dict(c.files) if c else dict.fromkeys(FILE_STATUSES, 0)
        total = c.bytes_total if c else 0
        uploaded = c.bytes_uploaded if c else 0
        figures = live_sets.get(str(row.id), {})
        rate = float(figures.get("rate_bps", 0.0))
        if not (per_status["waiting"] or per_status["uploading"]) or row.state in STILL_STATES:
            rate = 0.0  # the smoothed rate decays slowly; nothing left (or sent) means no rate
        in_flight = int(figures.get("in_flight_bytes", 0))
        remaining = max(total - uploaded - in_flight, 0)
        backoff, next_try, last_try = parked.get(row.id, (0, None, None))
        if row.state in STILL_STATES:
            next_try = last_try = None
        eta = None
        if rate > 1 and remaining:
            # Files waiting out a backoff cannot be sent sooner, however fast the rest goes.
            eta = round(max(remaining / rate, (last_try or now) - now), 1)
        trouble = troubles.get(row.id, {})
        retry_count, retry_error = trouble.get("retrying", (0, None))
        failed_error = trouble.get("failed", (0, None))[1]
        entry: dict[str, Any] = {
            "name": row.name,
            "target": row.target,
            "source": row.source,
            "state": row.state,
            "detail": row.detail,
            "files": per_status,
            "files_hashing": c.pending_hash if c else 0,
            "files_retrying": retry_count,
            "files_backoff": backoff,
            "next_attempt_at": next_try,
            "last_error": retry_error or failed_error,
            "failed_error": failed_error,
            "bytes_total": total,
            "bytes_uploaded": uploaded,
            "bytes_in_flight": in_flight,
            "rate_bps": round(rate, 1),
            "eta_s": eta,
            "created_at": row.created_at,
            "last_activity_at": row.last_activity_at,
            "quiet_s": row.quiet_s,
            "auto_process": row.auto_process,
            "processing_started_at": row.processing_started_at,
            "processing_finished_at": row.processing_finished_at,
            "processing_id": row.processing_handle,
        }
        entry["active"] = is_active(entry)
        entry["current"] = is_current(entry, now)
        if files:
            entry["file_list"] = [file_entry(journal, f) for f in journal.files(row.id)]
        out.append(entry)
    total = journal.dataset_total()
    doc: dict[str, Any] = {
        "daemon": {"running": running, "stopping": bool(live.get("stopping"))},
        "summary": {
            **summary(out),
            "datasets_total": total,
            # Left out as history: processed or cancelled over a day ago (`--all` lists them).
            "datasets_hidden": 0 if every or dataset is not None else total - len(out),
        },
        "journal": {"path": str(journal.path), "bytes": journal.size_on_disk()},
        "datasets": out,
        "requests": [
            {"action": r.action, "dataset": r.dataset, "queued_at": r.queued_at}
            for r in requests
            if dataset is None or r.dataset in (None, dataset)
        ],
    }
    doc["cards"] = live.get("cards", []) if running else []
    doc["loose"] = live.get("loose", {}) if running else {}
    if "spool" in live and running:
        doc["spool"] = live["spool"]
    return doc


def is_active(ds: dict[str, Any]) -> bool:
    """Whether a dataset has work left: files to send, or processing to wait for."""
    return ds["state"] in ACTIVE_STATES


def changed_at(ds: dict[str, Any]) -> float:
    """The last time anything happened to a dataset."""
    times = (
        ds["created_at"],
        ds["last_activity_at"],
        ds.get("processing_started_at"),
        ds.get("processing_finished_at"),
    )
    return float(max(t for t in times if t is not None))


def is_current(ds: dict[str, Any], now: float) -> bool:
    """Whether ``status`` lists a dataset without ``--all``: active, failed, or changed today.

    Failed processing or failed files wait for the operator, however old; a dataset processed
    or cancelled more than a day ago is history.
    """
    if is_active(ds) or ds["state"] == "failed" or ds["files"].get("failed"):
        return True
    return now - changed_at(ds) < DAY_S


def summary(datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """The first line of ``status``: totals over the active datasets, failures over the current.

    ``eta_s`` is the longest of the active datasets' (they upload side by side).
    """
    active = [ds for ds in datasets if ds["active"]]
    total = sum(sum(ds["files"].values()) for ds in active)
    done = sum(_settled(ds) for ds in active)
    etas = [ds["eta_s"] for ds in active if ds["eta_s"] is not None]
    return {
        "datasets_active": len(active),
        "files_done": done,
        "files_total": total,
        "percent": int(100 * done / total) if total else None,
        "rate_bps": round(sum(ds["rate_bps"] for ds in active), 1),
        "eta_s": max(etas) if etas else None,
        "files_failed": sum(ds["files"].get("failed", 0) for ds in datasets if ds["current"]),
    }


def _settled(ds: dict[str, Any]) -> int:
    """Files with nothing left to do: uploaded, a duplicate, or skipped."""
    files = ds["files"]
    return int(files["uploaded"] + files["duplicate"] + files.get("skipped", 0))


def file_entry(journal: Journal, f: FileRow) -> dict[str, Any]:
    """One file as ``status --files`` shows it: paths, status, size, error, the original."""
    original = None
    if f.duplicate_of is not None:
        o = journal.file(f.duplicate_of)
        original = display_path(os.fsencode(o.volume) + b"/" + o.relpath)
    return {
        "path": display_path(f.dspath),
        "source_path": display_path(os.fsencode(f.volume) + b"/" + f.relpath),
        "status": f.status,
        "size": f.size,
        "sha256": f.sha256,
        "attempts": f.attempts,
        "last_error": f.last_error,
        "duplicate_of": original,
        "remote_key": display_path(f.remote_key) if f.remote_key is not None else None,
    }
