"""Tables of figures: columns two spaces apart, never two spaces inside a cell."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence


def left(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Cells padded on the right to the widths of the first ``len(cells)`` columns."""
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths[: len(cells)], strict=True))


def right(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Cells padded on the left to the widths of the first ``len(cells)`` columns."""
    return "  ".join(c.rjust(w) for c, w in zip(cells, widths[: len(cells)], strict=True))


def fmt(value: float | None) -> str:
    """At least three significant digits, never an exponent."""
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{2 - math.floor(math.log10(abs(value)))}f}"


def machine() -> str:
    """The first words of a run's first line: CPUs and Python."""
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
