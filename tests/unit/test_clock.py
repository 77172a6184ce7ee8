"""Waiting on an event with a limit, and stopping while doing so."""

from __future__ import annotations

import asyncio

import pytest

from daemon.clock import wait_event


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
