"""Retry waits (full jitter, Retry-After) and the shared bandwidth limit."""

from __future__ import annotations

import random
import threading

import pytest

from daemon.config import UploadSettings
from daemon.upload.ratelimit import TokenBucket
from daemon.upload.retry import Backoff
from tests.fakeclock import FakeClock


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


def test_token_bucket_keeps_one_sender_at_the_rate() -> None:
    clock = FakeClock()  # each sleep moves the fake time on by what it asked for
    bucket = TokenBucket(RATE, monotonic=clock.monotonic, sleep=clock.sleep_blocking)
    bucket.consume(RATE // 10)  # spend the burst allowance
    start = clock.monotonic()
    sent = 0
    while clock.monotonic() - start < 3.0:
        bucket.consume(CHUNK)
        sent += CHUNK
    assert sent / (clock.monotonic() - start) == pytest.approx(RATE, rel=0.01)


def test_token_bucket_limits_all_senders_together() -> None:
    """Four threads asking at one moment are spread over what all of them send together."""
    clock = FakeClock()  # stands still: every wait asked for is counted from the same moment
    waits: list[float] = []
    bucket = TokenBucket(RATE, monotonic=clock.monotonic, sleep=waits.append)
    bucket.consume(RATE // 10)
    per_thread = 32

    def send() -> None:
        for _ in range(per_thread):
            bucket.consume(CHUNK)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(waits) == 4 * per_thread
    # The last chunk waits for every chunk of every sender before it, not only its own.
    assert max(waits) == pytest.approx(4 * per_thread * CHUNK / RATE)


def test_token_bucket_allows_a_tenth_of_a_second_at_once() -> None:
    clock = FakeClock()
    waits: list[float] = []
    bucket = TokenBucket(RATE, monotonic=clock.monotonic, sleep=waits.append)
    burst = RATE // 10
    bucket.consume(burst)
    assert waits == []
    clock.advance(0.05)  # 50 ms later, 50 ms' worth more goes at once
    bucket.consume(burst // 2)
    assert waits == []
    bucket.consume(CHUNK)
    assert waits == [pytest.approx(CHUNK / RATE, rel=1e-3)]


def test_token_bucket_saves_no_more_than_its_burst_while_idle() -> None:
    clock = FakeClock()
    waits: list[float] = []
    bucket = TokenBucket(RATE, monotonic=clock.monotonic, sleep=waits.append)
    clock.advance(60.0)  # a minute idle still allows only the burst
    bucket.consume(RATE // 10 + CHUNK)
    assert waits == [pytest.approx(CHUNK / RATE, rel=1e-3)]
