"""Timing a step, the best of several, and progress lines on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress(message: str) -> None:
    """A progress line on stderr, with the time of day."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def best(fn: Callable[[], float], runs: int) -> float:
    """The shortest of ``runs`` timings; ``fn`` returns its own duration in seconds."""
    return min(fn() for _ in range(runs))


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
