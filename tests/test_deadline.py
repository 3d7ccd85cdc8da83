"""`backends.base.Deadline`: the upstream calls' lighter `asyncio.timeout` (same outcomes)."""

from __future__ import annotations

import asyncio

import pytest

from llmroute.gateway.backends.base import Deadline

# generous delays: the tests never depend on how fast the box is
NEVER = 60.0


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_the_delay_passing_first_is_a_timeout_error() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with Deadline(0.01):
                await asyncio.Event().wait()
        # the task is not left cancelled: it goes on awaiting
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0)

    run(main())


def test_an_answer_in_time_passes_through_and_the_timer_is_cancelled() -> None:
    async def main() -> None:
        async with Deadline(0.05):
            await asyncio.sleep(0)
        # past the delay the task must not be cancelled by a timer left behind
        await asyncio.sleep(0.2)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main())


def test_a_cancellation_from_elsewhere_stays_a_cancelled_error() -> None:
    async def inner(entered: asyncio.Event) -> None:
        async with Deadline(NEVER):
            entered.set()
            await asyncio.Event().wait()

    async def main() -> None:
        entered = asyncio.Event()
        task = asyncio.create_task(inner(entered))
        await entered.wait()
        task.cancel()  # e.g. the client disconnected
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_a_cancellation_beside_an_expired_delay_is_not_swallowed() -> None:
    """The delay passed and someone else cancelled the task too: CancelledError, as asyncio.timeout."""

    async def inner() -> None:
        async with Deadline(0.0):
            asyncio.current_task().cancel()  # type: ignore[union-attr]  # a second cancel request
            await asyncio.Event().wait()

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(inner())

    run(main())


def test_errors_inside_pass_through() -> None:
    async def main() -> None:
        with pytest.raises(KeyError):
            async with Deadline(NEVER):
                raise KeyError("x")

    run(main())
