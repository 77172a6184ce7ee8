"""Time, injected: components ask a Clock instead of calling ``time`` directly."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time (journal timestamps) and monotonic time (timeouts)."""

    def time(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


async def wait_event(event: asyncio.Event, limit_s: float) -> bool:
    """Wait until ``event`` is set or ``limit_s`` seconds pass; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it returns normally when the event is set in
    the same loop turn as the waiting task is cancelled, and a loop around it then never
    stops. ``asyncio.timeout`` lets the cancellation through.
    """
    try:
        async with asyncio.timeout(limit_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
