"""A fake clock that tests move on: no timing test waits for, or measures, the real time.

Time stands still until the test calls :meth:`FakeClock.advance`; the sleeps and timeouts the
daemon's components start through their clock end when the fake time passes their deadline,
in deadline order. ``sleep_blocking`` is the same for code that sleeps in a thread (the
bandwidth limit): it moves the fake time on by what it was asked to sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

# A real-time deadline for waiting on a condition, as tests/conftest.py's wait_until.
REAL_DEADLINE_S = 30.0


class FakeClock:
    """Wall-clock and monotonic time that move only when told; a Clock for every component."""

    def __init__(self, start: float | None = None) -> None:
        self._epoch = time.time() if start is None else start
        self._elapsed = 0.0
        self._lock = threading.Lock()  # threads read the time (transfers); the loop moves it
        self._order = itertools.count()
        # Deadlines of the sleeps (futures) and timeouts (asyncio.Timeout) started, earliest first.
        self._timers: list[tuple[float, int, asyncio.Future[None] | asyncio.Timeout]] = []

    # -- the Clock protocol ------------------------------------------------------------------

    def time(self) -> float:
        """Seconds since the epoch: the real time when the clock was made, plus advances."""
        with self._lock:
            return self._epoch + self._elapsed

    def monotonic(self) -> float:
        """Seconds since the clock was made, counted by advances only."""
        with self._lock:
            return 1000.0 + self._elapsed

    async def sleep(self, seconds: float) -> None:
        """Wait until the fake time has moved on by ``seconds`` (a turn of the loop if none)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._add(seconds, future)
        await future

    def timeout(self, seconds: float) -> asyncio.Timeout:
        """A timeout that expires when the fake time has moved on by ``seconds``."""
        if seconds <= 0:
            return asyncio.timeout(0)
        context = asyncio.timeout(None)
        self._add(seconds, context)
        return context

    # -- moving it ---------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the time on, ending every sleep and timeout whose deadline it passes."""
        with self._lock:
            self._elapsed += seconds
            now = self._elapsed
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if isinstance(timer, asyncio.Future):
                if not timer.done():
                    timer.set_result(None)
            elif not timer.expired():
                with contextlib.suppress(RuntimeError):  # its block already ended
                    timer.reschedule(asyncio.get_running_loop().time())

    def sleep_blocking(self, seconds: float) -> None:
        """A thread's sleep: the fake time moves on by ``seconds`` at once (no timers end)."""
        with self._lock:
            self._elapsed += max(seconds, 0.0)

    def _add(self, seconds: float, timer: asyncio.Future[None] | asyncio.Timeout) -> None:
        with self._lock:
            deadline = self._elapsed + seconds
        heapq.heappush(self._timers, (deadline, next(self._order), timer))


async def run_until(
    condition: Callable[[], Any],
    clock: FakeClock,
    *,
    step_s: float = 0.05,
    what: str = "condition",
) -> Any:
    """Move ``clock`` on by ``step_s`` at a time until ``condition()`` holds.

    Between steps the loop (and the threads it waits for) get a few real milliseconds: the
    fake time runs a few times faster than the real one, never by leaps, so a transfer in a
    worker thread is not taken for a stalled one. Fails after a real-time deadline.
    """
    deadline = time.monotonic() + REAL_DEADLINE_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; fake time {clock.monotonic()}")
        clock.advance(step_s)
        await asyncio.sleep(0.01)
    return value


async def until(condition: Callable[[], Any], what: str = "condition") -> Any:
    """Wait (real time, not the fake one) until ``condition()`` holds."""
    deadline = time.monotonic() + REAL_DEADLINE_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return value
