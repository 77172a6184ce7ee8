"""The live meter: bytes sent per dataset, smoothed into a rate for ``status``."""

from __future__ import annotations

import threading


class RateMeter:
    """Bytes sent per dataset, smoothed into a rate for ``status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self.rates: dict[int, float] = {}

    def add(self, dataset_id: int, nbytes: int) -> None:
        """Count bytes sent (called from worker threads, the parts of one file from several)."""
        with self._lock:
            self.sent[dataset_id] = self.sent.get(dataset_id, 0) + nbytes

    def sample(self, interval: float) -> None:
        """Fold the bytes sent since the last sample into each dataset's rate."""
        for dataset_id, total in list(self.sent.items()):
            delta = total - self._last.get(dataset_id, 0)
            self._last[dataset_id] = total
            rate = delta / interval if interval > 0 else 0.0
            previous = self.rates.get(dataset_id, rate)
            self.rates[dataset_id] = 0.7 * previous + 0.3 * rate
