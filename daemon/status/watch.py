"""``status --watch``: the status redrawn in place once a second, until Ctrl-C.

On a terminal each frame overwrites the last (cursor home, each line cleared to its end, the
rest of the screen cleared), cut to the window so that nothing scrolls; elsewhere the frames
follow one another, a blank line between them. Time and waiting are passed in, so a test
drives frames with a fake clock instead of sleeping.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TextIO

INTERVAL_S = 1.0
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def _window() -> tuple[int, int]:
    window = shutil.get_terminal_size()
    return window.columns, window.lines


def fit(text: str, columns: int, rows: int) -> list[str]:
    """The frame's lines cut to the window: no line wraps and nothing scrolls."""
    lines = [line[:columns] for line in text.splitlines()]
    if len(lines) > rows - 1:
        more = len(lines) - (rows - 2)
        lines = [*lines[: rows - 2], f"… {more} more lines: enlarge the window"[:columns]]
    return lines


def watch(
    frame: Callable[[], str],
    out: TextIO,
    wait: Callable[[float], None],
    *,
    terminal: bool,
    size: Callable[[], tuple[int, int]] | None = None,
) -> int:
    """Write ``frame()`` every :data:`INTERVAL_S` (``wait`` passes the time) until Ctrl-C.

    ``size`` gives the window's columns and rows (default: the terminal's).
    """
    size = size or _window
    if terminal:
        out.write(HIDE_CURSOR)
    try:
        while True:
            text = frame()
            if terminal:
                columns, rows = size()
                lines = fit(text, columns, rows)
                out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in lines) + CLEAR_BELOW)
            else:
                out.write(f"{text}\n\n")
            out.flush()
            wait(INTERVAL_S)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a watch ends
    finally:
        if terminal:
            out.write(SHOW_CURSOR)
            out.flush()
