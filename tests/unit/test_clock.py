"""Waiting on an event with a limit, stopping while doing so, and the tests' fake clock."""

from __future__ import annotations

import asyncio

import pytest

from daemon.clock import wait_event
from tests.fakeclock import FakeClock


def test_wait_event_says_whether_the_event_came_or_the_limit_passed() -> None:
    async def main() -> tuple[bool, bool]:
        event = asyncio.Event()
        missed = await wait_event(event, 0.01)
        event.set()
        return missed, await wait_event(event, 5)

    assert asyncio.run(main()) == (False, True)


def test_a_loop_waiting_on_an_event_stops_when_cancelled_as_the_event_is_set() -> None:
    # The upload dispatcher and the source tick loop wait like this; a worker finishing a
    # file sets the event in the same loop turn as the service cancels them on stop.
    async def main() -> None:
        event = asyncio.Event()
        turns = 0

        async def waiter() -> None:
            nonlocal turns
            while True:
                await wait_event(event, 10)
                event.clear()
                turns += 1

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # the waiter is now inside wait_event
        event.set()
        task.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert turns == 0

    asyncio.run(main())


def test_the_fake_clock_ends_sleeps_and_timeouts_only_when_moved_on() -> None:
    async def main() -> None:
        clock = FakeClock()
        start = clock.monotonic()
        slept = asyncio.create_task(clock.sleep(2.0))
        event = asyncio.Event()
        waited = asyncio.create_task(wait_event(event, 5.0, clock))
        await asyncio.sleep(0.01)
        assert not slept.done()
        assert not waited.done()
        clock.advance(1.9)
        await asyncio.sleep(0.01)
        assert not slept.done()
        clock.advance(0.1)  # 2 s: the sleep ends, the 5 s wait goes on
        await asyncio.sleep(0.01)
        assert slept.done()
        assert not waited.done()
        clock.advance(3.0)
        assert await waited is False  # the limit passed, on the fake clock
        assert clock.monotonic() - start == 5.0

    asyncio.run(main())


def test_a_wait_on_the_fake_clock_ends_at_once_when_its_event_is_set() -> None:
    async def main() -> None:
        clock = FakeClock()
        event = asyncio.Event()
        waited = asyncio.create_task(wait_event(event, 5.0, clock))
        await asyncio.sleep(0.01)
        event.set()
        assert await waited is True
        clock.advance(10.0)  # its timeout, long gone, is not disturbed

    asyncio.run(main())


def test_the_fake_wall_clock_moves_with_the_monotonic_one() -> None:
    clock = FakeClock(start=1_000_000.0)
    assert clock.time() == 1_000_000.0
    clock.advance(30.0)
    clock.sleep_blocking(0.5)
    assert clock.time() == 1_000_030.5
