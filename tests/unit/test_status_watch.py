"""`status --watch`: frames drawn in place, driven by a fake clock, and Ctrl-C on a real pty."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time
from typing import Any

from daemon.journal import Journal
from daemon.status import render, watch
from daemon.status.document import is_current, summary
from daemon.status.watch import CLEAR_BELOW, HIDE_CURSOR, HOME, SHOW_CURSOR, fit
from tests.conftest import Box

START = 1_000_000.0


class Clock:
    """Time that moves only when the watch waits."""

    def __init__(self, frames: int) -> None:
        self.now = START
        self.left = frames

    def wait(self, seconds: float) -> None:
        self.left -= 1
        if not self.left:
            raise KeyboardInterrupt  # the operator's Ctrl-C, after the last frame
        self.now += seconds


def _doc() -> dict[str, Any]:
    files = {"waiting": 0, "uploading": 0, "uploaded": 5, "duplicate": 0, "failed": 0}
    ds: dict[str, Any] = {
        "name": "field-a",
        "target": "archive",
        "state": "collecting",
        "detail": None,
        "files": files,
        "bytes_total": 5000,
        "bytes_uploaded": 5000,
        "rate_bps": 0.0,
        "eta_s": None,
        "created_at": START - 60,
        "last_activity_at": START - 50,
        "quiet_s": 60.0,
        "auto_process": True,
        "active": True,
    }
    ds["current"] = is_current(ds, START)
    return {"daemon": {"running": True}, "datasets": [ds], "summary": summary([ds])}


def test_each_frame_is_drawn_over_the_last_until_ctrl_c() -> None:
    clock = Clock(frames=3)
    out = io.StringIO()

    code = watch(
        lambda: render(_doc(), bars=True, now=clock.now),
        out,
        clock.wait,
        terminal=True,
        size=lambda: (80, 24),
    )

    assert code == 0
    text = out.getvalue()
    assert text.startswith(HIDE_CURSOR + HOME)
    assert text.endswith(SHOW_CURSOR)
    frames = text.removeprefix(HIDE_CURSOR).removesuffix(SHOW_CURSOR).split(HOME)[1:]
    assert len(frames) == 3
    assert all(frame.endswith(CLEAR_BELOW) for frame in frames)
    # The countdown moves with the clock: each frame is the status at its own time.
    assert [f.count("processing starts after") for f in frames] == [1, 1, 1]
    assert "after 10s of quiet" in frames[0]
    assert "after 9s of quiet" in frames[1]
    assert "after 8s of quiet" in frames[2]


def test_frames_follow_one_another_when_not_on_a_terminal() -> None:
    clock = Clock(frames=2)
    out = io.StringIO()
    assert watch(lambda: f"frame at {clock.now:.0f}", out, clock.wait, terminal=False) == 0
    assert out.getvalue() == f"frame at {START:.0f}\n\nframe at {START + 1:.0f}\n\n"


def test_a_frame_is_cut_to_the_window_so_nothing_wraps_or_scrolls() -> None:
    text = "\n".join(f"line {n} " + "x" * 100 for n in range(30))
    lines = fit(text, 40, 10)
    assert len(lines) == 9
    assert all(len(line) <= 40 for line in lines)
    assert lines[-1] == "… 22 more lines: enlarge the window"


def _read_until(fd: int, wanted: bytes, count: int, deadline: float) -> bytes:
    """What the pty printed, once ``wanted`` appeared ``count`` times (or the child ended)."""
    seen = b""
    while seen.count(wanted) < count:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no {count} x {wanted!r} in time: {seen!r}")
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed its side
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_the_command_refreshes_in_place_on_a_terminal_and_ends_on_ctrl_c(box: Box) -> None:
    box.state.mkdir()
    journal = Journal.open(box.state / "journal.sqlite3")
    journal.open_dataset(
        volume=str(box.inbox),
        folder=b"field-a",
        name="field-a",
        target="archive",
        source=str(box.inbox),
        auto_process=True,
        quiet_s=600,
        now=time.time(),
    )
    journal.close()
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "status", "--watch", "--config", str(box.config)],
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    try:
        deadline = time.monotonic() + 30
        shown = _read_until(main, HOME.encode(), 2, deadline)
        assert b"field-a  [collecting]" in shown
        assert b"daemon not running" in shown
        proc.send_signal(signal.SIGINT)
        shown += _read_until(main, SHOW_CURSOR.encode(), 1, deadline)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert shown.startswith(HIDE_CURSOR.encode() + HOME.encode())
    assert b"Traceback" not in shown
