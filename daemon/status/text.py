"""Text for people: names and errors from cards made safe for a terminal, sizes, durations."""

from __future__ import annotations

import unicodedata
from typing import Any


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


def printable_doc(value: Any) -> Any:
    """A JSON document with every string in it made :func:`printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: printable_doc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [printable_doc(item) for item in value]
    return value


def size(n: float) -> str:
    """Bytes for people: "512 B", "7.0 MB"."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def duration(seconds: float | None) -> str:
    """A short duration: "45s", "4m10s", "2h05m"."""
    if seconds is None:
        return "-"
    seconds = max(int(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
