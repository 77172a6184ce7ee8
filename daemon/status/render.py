"""The human ``status``: one summary line, then one line per current dataset.

Counts that are zero are left out; a progress bar is drawn on a terminal only. Names and
errors come from cards and servers, so every string is made printable first.
"""

from __future__ import annotations

import time
from typing import Any

from daemon.status.document import is_current
from daemon.status.text import duration, printable, printable_doc, size

BAR_WIDTH = 20
# The order counts are said in on a dataset's line.
COUNT_ORDER = ("uploaded", "duplicate", "skipped", "waiting", "uploading", "failed")


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#####.....]``: ``done`` of ``total``."""
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def summary_line(doc: dict[str, Any]) -> str:
    """Datasets active, files done of total, percent, rate, ETA, failed: what is non-zero."""
    s = doc.get("summary") or {}
    parts = []
    active = s.get("datasets_active", 0)
    parts.append(f"{_plural(active, 'dataset')} active" if active else "nothing active")
    if s.get("files_total"):
        parts.append(f"{s['files_done']} of {s['files_total']} files done ({s['percent']}%)")
    if s.get("rate_bps"):
        parts.append(f"{size(s['rate_bps'])}/s")
        if s.get("eta_s") is not None:
            parts.append(f"ETA {duration(s['eta_s'])}")
    if s.get("files_failed"):
        parts.append(f"{s['files_failed']} failed")
    line = ", ".join(parts)
    daemon = doc["daemon"]
    if daemon.get("stopping"):
        return f"daemon stopping: {line}"
    if not daemon["running"]:
        return f"daemon not running: {line} (figures from the journal)"
    return line


def dataset_line(ds: dict[str, Any], *, bars: bool, now: float) -> str:
    """One dataset: name, state, target, progress, non-zero counts, bytes, rate and ETA."""
    files = ds["files"]
    total = sum(files.values())
    settled = files["uploaded"] + files["duplicate"] + files.get("skipped", 0)
    parts = [f"{ds['name']}  [{ds['state']}]  -> {ds['target']}"]
    if total:
        percent = f"{int(100 * settled / total)}%"
        parts.append(f"{bar(settled, total)} {percent}" if bars else percent)
        counts = [f"{files[s]} {s}" for s in COUNT_ORDER if files.get(s)]
        parts.append(", ".join(counts))
        if ds["bytes_total"]:
            parts.append(f"{size(ds['bytes_uploaded'])} of {size(ds['bytes_total'])}")
    elif ds.get("files_hashing"):
        parts.append(f"{ds['files_hashing']} being read")
    if ds["rate_bps"]:
        parts.append(f"{size(ds['rate_bps'])}/s")
        if ds["eta_s"] is not None:
            parts.append(f"ETA {duration(ds['eta_s'])}")
    elif ds.get("next_attempt_at") and ds["next_attempt_at"] > now:
        parts.append(f"next try in {duration(ds['next_attempt_at'] - now)}")
    return "  ".join(parts)


def _card_lines(doc: dict[str, Any]) -> list[str]:
    """One line per card in the box (can it be removed?), and a full spool if it is."""
    lines = []
    for card in doc.get("cards", []):
        if card["removable"]:
            lines.append(f"card {card['label']} ({card['path']}): can be removed")
        else:
            left = card["files_left"]
            todo = f"{left} image(s) still to read from it" if left >= 0 else "being scanned"
            lines.append(f"card {card['label']} ({card['path']}): keep it in, {todo}")
    spool = doc.get("spool")
    if spool and spool.get("full"):
        lines.append(str(spool["full"]))
    for folder, count in sorted(doc.get("loose", {}).items()):
        lines.append(
            f"{printable(folder)}: {count} file(s) in the top folder belong to no dataset;"
            ' put them in a sub-folder (one per flight), or set layout = "single" for this source'
        )
    return lines


def _request_lines(doc: dict[str, Any]) -> list[str]:
    """Requests the daemon has not applied yet, and when they will be."""
    when = "applied when the daemon starts" if not doc["daemon"]["running"] else "applying"
    lines = []
    for request in doc.get("requests", []):
        what = request["dataset"] if request["dataset"] is not None else "every dataset"
        since = ""
        if request.get("queued_at"):
            since = f" since {time.strftime('%H:%M', time.localtime(request['queued_at']))}"
        lines.append(f"queued: {request['action']} {what}{since} ({when})")
    return lines


def _trouble_lines(ds: dict[str, Any]) -> list[str]:
    """The dataset's detail, and why files retry or failed, as the dataset line says them."""
    lines = [f"  {ds['detail']}"] if ds["detail"] else []
    if ds.get("files_retrying") and ds["state"] in ("collecting", "ready"):
        lines.append(f"  {ds['files_retrying']} retrying: {ds['last_error']}")
    if ds["files"]["failed"] and ds.get("failed_error"):
        lines.append(f"  {ds['files']['failed']} failed: {ds['failed_error']}")
    return lines


def _file_lines(ds: dict[str, Any]) -> list[str]:
    lines = []
    for item in ds.get("file_list", []):
        note = ""
        if item["status"] == "duplicate":
            note = f"  (same as {item['duplicate_of']})"
        elif item["last_error"]:
            note = f"  ({item['last_error']})"
        lines.append(f"    {item['status']:<9} {item['path']}{note}")
    return lines


def render(
    doc: dict[str, Any], *, bars: bool, now: float | None = None, show_all: bool = False
) -> str:
    """The human-readable ``status``: a summary line, then the current datasets.

    A dataset asked for by name, or listed with its files, is always shown.
    """
    now = time.time() if now is None else now
    doc = printable_doc(doc)
    lines = [summary_line(doc)]
    lines.extend(_request_lines(doc))
    lines.extend(_card_lines(doc))
    # Datasets the document left out as history, and those it holds but are not current.
    hidden = int((doc.get("summary") or {}).get("datasets_hidden", 0))
    if not doc["datasets"] and not hidden:
        lines.append("no datasets yet: drop a folder of images into a watched source")
    for ds in doc["datasets"]:
        current = ds["current"] if "current" in ds else is_current(ds, now)
        if not (show_all or current or len(doc["datasets"]) == 1 or "file_list" in ds):
            hidden += 1
            continue
        lines.append(dataset_line(ds, bars=bars, now=now))
        files = ds["files"]
        total = sum(files.values())
        settled = files["uploaded"] + files["duplicate"] + files.get("skipped", 0)
        if ds["state"] == "collecting" and total and settled == total and ds["auto_process"]:
            left = ds["quiet_s"] - (now - ds["last_activity_at"])
            if left > 0:
                lines.append(f"  processing starts after {duration(left)} of quiet")
        lines.extend(_trouble_lines(ds))
        lines.extend(_file_lines(ds))
    if hidden:
        lines.append(
            f"{_plural(hidden, 'older dataset')} not shown (processed or cancelled over a day"
            " ago): `dronesync status --all`"
        )
    journal = doc.get("journal")
    if journal and (hidden or show_all):  # history kept: what it takes on disk
        lines.append(f"journal: {size(journal['bytes'])} ({journal['path']})")
    return "\n".join(lines)
