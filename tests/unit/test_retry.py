"""Retry waits (full jitter, Retry-After) and the shared bandwidth limit."""

from __future__ import annotations

import random
import threading
import time

import pytest

from daemon.config import UploadSettings
from daemon.upload.ratelimit import TokenBucket
from daemon.upload.retry import Backoff


def backoff(initial: float = 2.0, maximum: float = 300.0, seed: int = 1) -> Backoff:
    return Backoff(initial, maximum, random.Random(seed))


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 20, 100])
def test_full_jitter_stays_between_zero_and_the_exponential_ceiling(failures: int) -> None:
    waits = backoff(seed=failures)
    ceiling = min(300.0, 2.0 * 2 ** (failures - 1))
    delays = [waits.delay(failures) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # full jitter spreads over the whole range, not just near the ceiling
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_the_ceiling_doubles_until_the_maximum() -> None:
    waits = backoff(initial=1.0, maximum=10.0)
    ceilings = [max(waits.delay(n) for _ in range(3000)) for n in range(1, 7)]
    assert [round(c) for c in ceilings] == [1, 2, 4, 8, 10, 10]


def test_zero_failures_waits_like_the_first() -> None:
    assert all(backoff().delay(0) <= 2.0 for _ in range(100))


def test_the_same_seed_gives_the_same_waits() -> None:
    first = backoff(seed=42)
    second = backoff(seed=42)
    assert [first.delay(n) for n in range(1, 10)] == [second.delay(n) for n in range(1, 10)]


def test_retry_after_is_a_lower_bound() -> None:
    waits = backoff(initial=1.0, maximum=300.0)
    assert all(waits.delay(1, retry_after=30.0) >= 30.0 for _ in range(200))
    # a long exponential wait is not shortened by a short Retry-After
    late = [waits.delay(10, retry_after=1.0) for _ in range(200)]
    assert max(late) > 100.0


def test_retry_after_is_capped_at_the_maximum() -> None:
    waits = backoff(initial=1.0, maximum=60.0)
    assert [waits.delay(1, retry_after=86_400.0) for _ in range(10)] == [60.0] * 10


def test_backoff_from_settings_uses_the_upload_table() -> None:
    settings = UploadSettings(backoff_initial_s=0.5, backoff_max_s=4.0)
    waits = Backoff.from_settings(settings, random.Random(3))
    assert (waits.initial_s, waits.max_s) == (0.5, 4.0)
    assert all(waits.delay(50) <= 4.0 for _ in range(100))
    assert Backoff.from_settings(settings).delay(1) <= 0.5


RATE = 2 * 1024 * 1024  # bytes per second
CHUNK = 64 * 1024
WINDOW_S = 0.3


def _send(bucket: TokenBucket, until: float, sent: list[int]) -> None:
    while time.monotonic() < until:
        bucket.consume(CHUNK)
        sent.append(CHUNK)


def test_token_bucket_keeps_one_sender_near_the_rate() -> None:
    bucket = TokenBucket(RATE)
    bucket.consume(RATE)  # spend the one-second burst allowance
    start = time.monotonic()
    sent: list[int] = []
    _send(bucket, start + WINDOW_S, sent)
    elapsed = time.monotonic() - start
    rate = sum(sent) / elapsed
    assert rate <= 1.5 * RATE
    assert rate >= 0.3 * RATE  # limited, not stalled


def test_token_bucket_limits_all_senders_together() -> None:
    bucket = TokenBucket(RATE)
    bucket.consume(RATE)
    start = time.monotonic()
    sent: list[int] = []
    threads = [
        threading.Thread(target=_send, args=(bucket, start + WINDOW_S, sent)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - start
    assert sum(sent) / elapsed <= 1.5 * RATE


def test_token_bucket_allows_a_one_second_burst_at_once() -> None:
    bucket = TokenBucket(RATE)
    start = time.monotonic()
    for _ in range(RATE // CHUNK):
        bucket.consume(CHUNK)
    assert time.monotonic() - start < 0.2
