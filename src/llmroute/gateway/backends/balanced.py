"""Several deployments behind one model name (`models[].deployments`), balanced per request.

`BalancedBackend` is the model's backend; each deployment is an ordinary backend of its own
(its URL, key, upstream id, headers) with its own concurrency limit (`max_concurrency`) and
circuit breaker (the server's `breaker_failures` / `breaker_cooldown_s`). Per call the
deployments are ordered by `balance`:

- `weighted`: one drawn at random by `weight`, then the others by weight;
- `least_busy`: fewest requests in flight first (ties: by weight);
- `latency`: lowest recent latency first (an exponential average of successful calls; a
  deployment not measured yet goes first, so each one gets measured).

Deployments whose breaker is open or whose limit is full go last; the call goes to the first, and
an error that another deployment may cure (timeouts, resets, 429, 5xx) moves on to the next before
the model as a whole counts as failed, so the gateway's retries, breaker and fallback to other
models (`llmroute.gateway.reliability`) see one model. A stream moves on only before its first
chunk. Errors caused by the request itself (an upstream 400) go straight back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from llmroute.gateway.backends.base import Backend, BackendError
from llmroute.gateway.config import ModelConfig
from llmroute.gateway.reliability import CircuitBreaker

__all__ = ["BalancedBackend", "Deployment"]

#: weight of the newest call in a deployment's latency average
LATENCY_ALPHA = 0.3


class Deployment:
    """One deployment: its backend, weight, limit, breaker, in-flight count and latency average."""

    __slots__ = ("backend", "breaker", "in_flight", "latency_s", "limit", "name", "slots", "weight")

    def __init__(self, backend: Backend, weight: float, limit: int, breaker: CircuitBreaker) -> None:
        self.backend = backend
        self.name = backend.cfg.name
        self.weight = weight
        self.limit = limit
        self.slots = asyncio.Semaphore(limit)  # a hard limit: a full deployment is waited for last
        self.breaker = breaker
        self.in_flight = 0
        self.latency_s: float | None = None

    def observe(self, seconds: float) -> None:
        """Fold a successful call's latency into the average."""
        prev = self.latency_s
        self.latency_s = seconds if prev is None else prev + LATENCY_ALPHA * (seconds - prev)


class BalancedBackend:
    """A model served by several deployments (see the module docstring)."""

    def __init__(
        self,
        cfg: ModelConfig,
        deployments: list[Deployment],
        *,
        rng: random.Random | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.deployments = deployments
        self.balance = cfg.balance
        self.rng = rng or random.Random()
        self.clock = clock

    async def start(self, client: Any) -> None:
        for d in self.deployments:
            await d.backend.start(client)

    async def close(self) -> None:
        for d in self.deployments:
            await d.backend.close()

    def order(self) -> list[Deployment]:
        """The deployments in the order this call tries them."""
        ds = sorted(self.deployments, key=lambda d: -d.weight)
        if self.balance == "least_busy":
            ds.sort(key=lambda d: d.in_flight)
        elif self.balance == "latency":
            ds.sort(key=lambda d: -1.0 if d.latency_s is None else d.latency_s)
        elif len(ds) > 1:
            first = self.rng.choices(ds, weights=[d.weight for d in ds])[0]
            ds.remove(first)
            ds.insert(0, first)
        # open breakers and full deployments last (still tried: better than failing outright)
        ready = [d for d in ds if d.in_flight < d.limit and d.breaker.state != "open"]
        return ready + [d for d in ds if d not in ready]

    def _failed(self, d: Deployment, e: BackendError) -> None:
        if e.code != "missing_credentials":
            d.breaker.failure()

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        return await self._complete(lambda b, t: b.chat(body, t), timeout_s)

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Another endpoint of the upstream (`/embeddings`, `/completions`), balanced the same way."""
        return await self._complete(lambda b, t: b.post(path, body, t), timeout_s)  # type: ignore[attr-defined]

    def chat_stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[list[dict[str, Any]]]:
        return self._stream(lambda b, t: b.chat_stream(body, t), timeout_s)

    def stream(
        self, path: str, body: dict[str, Any], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """A streamed call of another endpoint (`/completions`), balanced the same way."""
        return self._stream(lambda b, t: b.stream(path, body, t), timeout_s)  # type: ignore[attr-defined]

    async def _complete(
        self, call: Callable[[Backend, float], Awaitable[dict[str, Any]]], timeout_s: float
    ) -> dict[str, Any]:
        last: BackendError | None = None
        end = self.clock() + timeout_s
        for d in self.order():
            if end - self.clock() <= 0:
                break
            if not d.breaker.allow():
                last = last or BackendError(f"model {self.cfg.name!r}: deployment {d.name!r} is failing")
                continue
            async with d.slots:
                d.in_flight += 1
                t0 = self.clock()
                try:
                    resp = await call(d.backend, max(0.001, end - self.clock()))
                except BackendError as e:
                    self._failed(d, e)
                    if not e.fallback:
                        raise
                    last = e
                    continue
                finally:
                    d.in_flight -= 1
            d.breaker.success()
            d.observe(self.clock() - t0)
            return resp
        raise last or BackendError(f"model {self.cfg.name!r}: no deployment answered in time", status=504)

    async def _stream(
        self, open_: Callable[[Backend, float], AsyncIterator[list[dict[str, Any]]]], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        last: BackendError | None = None
        end = self.clock() + timeout_s
        for d in self.order():
            left = end - self.clock()
            if left <= 0:
                break
            if not d.breaker.allow():
                last = last or BackendError(f"model {self.cfg.name!r}: deployment {d.name!r} is failing")
                continue
            await d.slots.acquire()
            d.in_flight += 1
            t0 = self.clock()
            agen = open_(d.backend, left)
            try:
                try:
                    first = await anext(agen)
                except StopAsyncIteration:
                    d.breaker.success()
                    return
                except BackendError as e:
                    self._failed(d, e)
                    if not e.fallback:
                        raise
                    last = e
                    continue
                d.observe(self.clock() - t0)  # time to the first chunk
                yield first
                try:
                    async for batch in agen:
                        yield batch
                except BackendError:
                    d.breaker.failure()
                    raise
                d.breaker.success()
                return
            finally:
                d.in_flight -= 1
                d.slots.release()
                await asyncio.shield(agen.aclose())  # type: ignore[attr-defined]
        raise last or BackendError(f"model {self.cfg.name!r}: no deployment answered in time", status=504)
