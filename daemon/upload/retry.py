"""Backoff: exponential with full jitter, never shorter than the server's Retry-After.

Two tiers (DESIGN.md): a few quick retries inside the worker, then the file is parked in the
journal with ``next_attempt_at`` so a long outage never holds a worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from daemon.config import UploadSettings


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for attempt number ``n`` (1 = after the first failure)."""

    initial_s: float
    max_s: float
    rng: random.Random

    @classmethod
    def from_settings(cls, settings: UploadSettings, rng: random.Random | None = None) -> Backoff:
        """The engine's backoff from ``[upload]``."""
        return cls(
            settings.backoff_initial_s,
            settings.backoff_max_s,
            rng or random.Random(),  # noqa: S311 (jitter, not security)
        )

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` consecutive failures (before Retry-After)."""
        return min(self.max_s, self.initial_s * 2.0 ** max(failures - 1, 0))

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failures`` consecutive failures."""
        wait = self.rng.uniform(0, self.ceiling(failures))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_s))
        return wait
