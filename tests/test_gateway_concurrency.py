"""A model's `max_concurrency` bounds its in-flight calls, streamed ones included (the slot is held
until the stream ends, however it ends)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from llmroute.gateway.backends.base import BackendError
from llmroute.gateway.reliability import Executor


class _Stub:
    """A backend whose calls take `hold_s`; records how many run at once."""

    def __init__(self, limit: int, hold_s: float = 0.02, fail_first: bool = False) -> None:
        self.cfg = SimpleNamespace(timeout_s=5.0, max_concurrency=limit)
        self.hold_s = hold_s
        self.fail_first = fail_first
        self.now = 0
        self.peak = 0

    def _enter(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    async def chat(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._enter()
        try:
            await asyncio.sleep(self.hold_s)
            return {"choices": [{"message": {"content": "ok"}}]}
        finally:
            self.now -= 1

    async def chat_stream(self, body: dict[str, Any], timeout: float) -> AsyncIterator[list[dict[str, Any]]]:
        self._enter()
        try:
            if self.fail_first:
                raise BackendError("boom", status=500, retryable=False)
            yield [{"choices": [{"delta": {"content": "a"}}]}]
            await asyncio.sleep(self.hold_s)
            yield [{"choices": [{"delta": {}, "finish_reason": "stop"}]}]
        finally:
            self.now -= 1


async def _consume(ex: Executor, mode: str) -> None:
    start = await ex.stream(["m"], {}, time.monotonic() + 5)
    try:
        if mode == "abandon":  # the client went away after the first token
            await start.rest.aclose()  # type: ignore[attr-defined]
            return
        async for _ in start.rest:
            pass
        ex.stream_done(start.model, True)
    finally:
        start.release()
        start.release()  # idempotent


def test_streams_hold_the_models_concurrency_slot_until_they_end() -> None:
    async def main() -> tuple[int, int]:
        b = _Stub(limit=2)
        ex = Executor({"m": b}, retries=0)  # type: ignore[dict-item]
        modes = ["full", "abandon"] * 6
        await asyncio.gather(*(_consume(ex, mode) for mode in modes))
        # every slot came back: a full set of calls can run again at once
        await asyncio.gather(*(ex.stream(["m"], {}, time.monotonic() + 5) for _ in range(2)))
        return b.peak, ex.limits["m"]._value

    peak, free = asyncio.run(main())
    assert peak == 2
    assert free == 0  # the two streams above are still open (not released): both slots in use


def test_failed_stream_start_gives_its_slot_back() -> None:
    async def main() -> int:
        b = _Stub(limit=1, fail_first=True)
        ex = Executor({"m": b}, retries=0)  # type: ignore[dict-item]
        for _ in range(3):
            with contextlib.suppress(BackendError):
                await ex.stream(["m"], {}, time.monotonic() + 5)
        return ex.limits["m"]._value

    assert asyncio.run(main()) == 1


def test_non_streamed_calls_respect_the_limit() -> None:
    async def main() -> int:
        b = _Stub(limit=3)
        ex = Executor({"m": b}, retries=0)  # type: ignore[dict-item]
        await asyncio.gather(*(ex.complete(["m"], {}, time.monotonic() + 5) for _ in range(10)))
        return b.peak

    assert asyncio.run(main()) == 3
