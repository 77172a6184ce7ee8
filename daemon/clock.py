"""Time, injected: components ask a Clock instead of calling ``time`` or ``asyncio`` directly.

Reading the time and waiting both go through the clock, so a test can drive backoff, stall,
rate and quiet-period logic with a fake one that it moves on instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time (journal timestamps), monotonic time (timeouts) and waits on the loop."""

    def time(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the event loop."""

    def timeout(self, seconds: float) -> asyncio.Timeout:
        """A context that cancels what runs in it after ``seconds`` (``TimeoutError`` out)."""


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float) -> asyncio.Timeout:
        """``asyncio.timeout``."""
        return asyncio.timeout(seconds)


SYSTEM_CLOCK = SystemClock()


async def wait_event(event: asyncio.Event, limit_s: float, clock: Clock = SYSTEM_CLOCK) -> bool:
    """Wait until ``event`` is set or ``limit_s`` seconds pass; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it returns normally when the event is set in
    the same loop turn as the waiting task is cancelled, and a loop around it then never
    stops. A timeout context lets the cancellation through.
    """
    try:
        async with clock.timeout(limit_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
