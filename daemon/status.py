"""What ``dronesync status`` shows: the journal, plus the daemon's live transfer figures.

The journal holds every status; the running daemon also writes ``<state_dir>/live.json`` once a
second with each dataset's current rate and the bytes of files in flight, which gives the rate
and ETA. ``status`` only reads: it never writes the journal.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import unicodedata
from pathlib import Path
from typing import Any

from daemon.journal import FILE_STATUSES, Journal

LIVE = "live.json"
LIVE_FRESH_S = 5.0


def display_path(raw: bytes) -> str:
    """A path for people and JSON: undecodable bytes shown as escapes, never an error."""
    return raw.decode("utf-8", "backslashreplace")


# Characters that steer a terminal or the text's direction rather than print.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` for a terminal, its control characters shown as escapes.

    A hostile file name can then neither forge a line of output nor steer the terminal.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in {"Cc", "Zl", "Zp"} or ch in _BIDI:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _printable_doc(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: _printable_doc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable_doc(item) for item in value]
    return value


def write_live(state_dir: Path, live: dict[str, Any]) -> None:
    """Atomically replace the live figures file (the daemon, once a second)."""
    tmp = state_dir / f".{LIVE}.tmp"
    tmp.write_text(json.dumps(live), encoding="utf-8")
    tmp.replace(state_dir / LIVE)


def read_live(state_dir: Path, now: float) -> dict[str, Any]:
    """The daemon's live figures, if it wrote them in the last few seconds."""
    try:
        live: dict[str, Any] = json.loads((state_dir / LIVE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if now - float(live.get("updated_at", 0)) > LIVE_FRESH_S:
        return {}
    return live


def snapshot(
    journal: Journal, live: dict[str, Any], *, dataset: str | None = None, files: bool = False
) -> dict[str, Any]:
    """The ``status --json`` document (shape documented in README "status --json")."""
    counts = journal.counts()
    troubles = journal.troubles()
    live_sets: dict[str, Any] = live.get("datasets", {})
    out = []
    for row in journal.datasets():
        if dataset is not None and row.name != dataset:
            continue
        c = counts.get(row.id)
        per_status = dict(c.files) if c else dict.fromkeys(FILE_STATUSES, 0)
        total = c.bytes_total if c else 0
        uploaded = c.bytes_uploaded if c else 0
        figures = live_sets.get(str(row.id), {})
        rate = float(figures.get("rate_bps", 0.0))
        if not (per_status["waiting"] or per_status["uploading"]):
            rate = 0.0  # the smoothed rate decays slowly; nothing left means no rate
        in_flight = int(figures.get("in_flight_bytes", 0))
        remaining = max(total - uploaded - in_flight, 0)
        eta = round(remaining / rate, 1) if rate > 1 and remaining else None
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
        if files:
            entry["file_list"] = [_file_entry(journal, f) for f in journal.files(row.id)]
        out.append(entry)
    doc: dict[str, Any] = {"daemon": {"running": bool(live)}, "datasets": out}
    doc["cards"] = live.get("cards", [])
    if "spool" in live:
        doc["spool"] = live["spool"]
    return doc


def _file_entry(journal: Journal, f: Any) -> dict[str, Any]:
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


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _bar(done: int, total: int, width: int) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


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
    return lines


def _trouble_lines(ds: dict[str, Any]) -> list[str]:
    """The dataset's detail, and why files retry or failed, as the dataset line says them."""
    lines = [f"  {ds['detail']}"] if ds["detail"] else []
    if ds.get("files_retrying") and ds["state"] in ("collecting", "ready"):
        lines.append(f"  {ds['files_retrying']} retrying: {ds['last_error']}")
    if ds["files"]["failed"] and ds.get("failed_error"):
        lines.append(f"  {ds['files']['failed']} failed: {ds['failed_error']}")
    return lines


def render(doc: dict[str, Any], *, bars: bool, now: float | None = None) -> str:
    """The human-readable ``status`` table (progress bars on a terminal)."""
    now = time.time() if now is None else now
    doc = _printable_doc(doc)
    lines = []
    if not doc["daemon"]["running"]:
        lines.append("daemon: not running (figures are from the journal)")
    if not doc["datasets"]:
        lines.append("no datasets yet: drop a folder of images into a watched source")
    lines.extend(_card_lines(doc))
    width = max(12, shutil.get_terminal_size((100, 20)).columns - 80)
    for ds in doc["datasets"]:
        f = ds["files"]
        total = sum(f.values())
        settled = f["uploaded"] + f["duplicate"] + f.get("skipped", 0)
        head = f"{ds['name']}  [{ds['state']}]  -> {ds['target']}"
        counts = (
            f"  files {total}: {f['uploaded']} uploaded, {f['duplicate']} duplicate,"
            f" {f['waiting']} waiting, {f['uploading']} uploading, {f['failed']} failed"
            + (f", {f['skipped']} skipped" if f.get("skipped") else "")
        )
        size = f"  {_size(ds['bytes_uploaded'])} of {_size(ds['bytes_total'])}"
        if ds["rate_bps"]:
            size += f"  {_size(ds['rate_bps'])}/s  ETA {_duration(ds['eta_s'])}"
        if bars:
            size = f"  {_bar(settled, total, width)}{size}"
        lines.extend([head, counts, size])
        if ds["state"] == "collecting" and total and settled == total and ds["auto_process"]:
            left = ds["quiet_s"] - (now - ds["last_activity_at"])
            if left > 0:
                lines.append(f"  processing starts after {_duration(left)} of quiet")
        lines.extend(_trouble_lines(ds))
        for item in ds.get("file_list", []):
            note = ""
            if item["status"] == "duplicate":
                note = f"  (same as {item['duplicate_of']})"
            elif item["last_error"]:
                note = f"  ({item['last_error']})"
            lines.append(f"    {item['status']:<9} {item['path']}{note}")
    return "\n".join(lines)
