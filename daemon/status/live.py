"""``<state_dir>/live.json``: the running daemon's figures that the journal does not hold.

The daemon rewrites it once a second with each dataset's current rate and the bytes of files
in flight, the cards and the spool. When it starts stopping it says so in ``live.stopping``,
and a reader also asks the daemon's lock, so a stopped daemon's last rate is never shown.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from daemon import control

LIVE = "live.json"
LIVE_FRESH_S = 5.0
STOPPING = "live.stopping"


def write_live(state_dir: Path, live: dict[str, Any]) -> None:
    """Atomically replace the live figures file (the daemon, once a second)."""
    tmp = state_dir / f".{LIVE}.tmp"
    tmp.write_text(json.dumps(live), encoding="utf-8")
    tmp.replace(state_dir / LIVE)


def mark_stopping(state_dir: Path) -> None:
    """Say at once that this daemon is stopping: ``status`` shows no rate from now on.

    A file of its own: a last ``live.json`` written while the daemon winds down cannot undo
    it, and one older than the daemon's lock (the next daemon's start) no longer counts.
    """
    # Should it fail, a status read while stopping shows the last figures; nothing else does.
    with contextlib.suppress(OSError):
        (state_dir / STOPPING).write_text(f"{os.getpid()}\n", encoding="utf-8")


def read_live(state_dir: Path, now: float) -> dict[str, Any]:
    """The daemon's live figures, if it runs and wrote them in the last few seconds."""
    try:
        live: dict[str, Any] = json.loads((state_dir / LIVE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if now - float(live.get("updated_at", 0)) > LIVE_FRESH_S:
        return {}
    try:
        running = control.daemon_running(state_dir)
    except OSError:
        running = True  # the lock cannot be asked: trust the fresh file
    if not running:
        return {}
    if _stopping(state_dir):
        live["stopping"] = True
    return live


def _stopping(state_dir: Path) -> bool:
    """Whether the running daemon said it is stopping: after it took the lock, that is."""
    try:
        said = (state_dir / STOPPING).stat().st_mtime_ns
        started = (state_dir / control.LOCK).stat().st_mtime_ns  # written at each start
    except OSError:
        return False
    return said > started
