"""A token bucket shared by every transfer: the optional ``bandwidth_limit``.

Transfers run in worker threads, so the bucket is thread-safe and blocks the calling thread.
"""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """``rate`` bytes per second on average, bursts up to one second's worth."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self._tokens = float(rate)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, nbytes: int) -> None:
        """Take ``nbytes`` tokens, sleeping until the bucket allows it."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            debt = -self._tokens
        if debt > 0:
            time.sleep(debt / self.rate)
