"""A token bucket shared by every transfer: the optional ``bandwidth_limit``.

Transfers run in worker threads, so the bucket is thread-safe and blocks the calling thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# What goes at once after a pause: a whole second's worth made short transfers run well
# above the limit.
BURST_S = 0.1


class TokenBucket:
    """``rate`` bytes per second on average, bursts up to :data:`BURST_S` seconds' worth.

    A chunk larger than the burst goes, and the next one waits for the debt.
    ``monotonic`` and ``sleep`` are the clock of the calling threads (a test's fake one).
    """

    def __init__(
        self,
        rate: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        self.burst = self.rate * BURST_S
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = monotonic()
        self._lock = threading.Lock()

    def consume(self, nbytes: int) -> None:
        """Take ``nbytes`` tokens, sleeping until the bucket allows it."""
        with self._lock:
            now = self._monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            debt = -self._tokens
        if debt > 0:
            self._sleep(debt / self.rate)
