"""Reliability on the request path: circuit breakers, retries with backoff, fallback, deadlines.

`Executor.complete(ranked, body, deadline)` / `Executor.stream(...)` try the ranked candidates in
order: each one up to `1 + retries` times for retryable errors (timeouts, resets, 429, 5xx,
invalid upstream JSON) with exponential backoff, then the next candidate; errors caused by the
request itself (an upstream 400) go straight back. Candidates whose breaker is open are tried
last (so a request still succeeds when every breaker is open). A stream is committed once its
first content chunk arrives: failures before that fall back transparently; failures after it are
reported by `StreamResult` so the app can end the stream with an error event.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llmroute.gateway.backends.base import Backend, BackendError

__all__ = ["Attempt", "CircuitBreaker", "Executor", "StreamStart"]


class CircuitBreaker:
    """Per-backend breaker: closed -> open after `failures` consecutive failures -> half-open after
    `cooldown_s` (one probe at a time) -> closed on a probe success, open again on a failure.
    `on_change(state)`, if set, hears every change of state (a deployment's breaker: /metrics)."""

    __slots__ = (
        "clock",
        "consecutive",
        "cooldown_s",
        "failures",
        "on_change",
        "opened_at",
        "probing",
        "state",
    )

    def __init__(
        self, failures: int = 5, cooldown_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ):
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False
        self.on_change: Callable[[str], None] | None = None

    def allow(self) -> bool:
        """Whether a call may go to this backend now (claims the half-open probe slot if so)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.state = "half_open"
            self.probing = False
            if self.on_change is not None:
                self.on_change("half_open")
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        """Record a successful call."""
        self.consecutive = 0
        self.probing = False
        if self.state != "closed":
            self.state = "closed"
            if self.on_change is not None:
                self.on_change("closed")

    def failure(self) -> None:
        """Record a failed call (only failures of the backend, not of the request)."""
        self.consecutive += 1
        self.probing = False
        if self.state != "open" and (self.state == "half_open" or self.consecutive >= self.failures):
            self.opened_at = self.clock()
            self.state = "open"
            if self.on_change is not None:
                self.on_change("open")


@dataclass
class Attempt:
    """One upstream try, for the trace."""

    model: str
    ok: bool
    latency_s: float
    error: str | None = None
    status: int | None = None
    started: float = 0.0
    """`time.monotonic()` when the try began (0: unknown); OpenTelemetry attempt spans start here."""


@dataclass
class StreamStart:
    """A committed stream: the model that answers, the chunks already received, and the rest
    (an iterator of chunk lists)."""

    model: str
    first: list[dict[str, Any]]
    rest: AsyncIterator[list[dict[str, Any]]]
    attempts: list[Attempt] = field(default_factory=list)
    started_at: float = 0.0
    release: Callable[[], None] = field(default=lambda: None)
    """Frees the answering model's concurrency slot, held while the stream runs; idempotent.
    The caller calls it once the stream has ended, however it ended."""


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return call


def _committed(chunk: dict[str, Any]) -> bool:
    for ch in chunk.get("choices") or ():
        d = ch.get("delta") or {}
        if d.get("content") or d.get("tool_calls") or d.get("function_call") or ch.get("finish_reason"):
            return True
    return False


def _speaks_for(last: BackendError | None, new: BackendError) -> BackendError:
    """The error that stands for the request so far: a later missing-credentials error does not
    hide an earlier real upstream failure, whose status (e.g. a retryable 502) the client sees."""
    if last is not None and new.code == "missing_credentials" and last.code != "missing_credentials":
        return last
    return new


def _all_failed(last: BackendError | None, attempts: list[Attempt]) -> BackendError:
    """One error for a request whose every candidate failed: each model's last error, in order."""
    assert last is not None
    models = list(dict.fromkeys(a.model for a in attempts))
    if len(models) > 1:
        why = {a.model: a.error for a in attempts}
        msg = "all candidate models failed: " + "; ".join(f"{why[m]}" for m in models)
        err = BackendError(
            msg[:2000], status=last.status, retryable=last.retryable, code=last.code, etype=last.etype
        )
    else:
        err = last
    err.attempts = attempts  # type: ignore[attr-defined]
    return err


class Executor:
    """Calls backends with retries, fallback and breakers."""

    def __init__(
        self,
        backends: dict[str, Backend],
        *,
        retries: int = 1,
        backoff_s: float = 0.05,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 10.0,
        max_fallbacks: int = 3,
        on_breaker: Callable[[str, str], None] | None = None,
        state: Any = None,
        on_deployment_breaker: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.backends = backends
        # a llmroute.gateway.state.RedisState: breakers opened by other replicas open here too
        self.state = state
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_fallbacks = max_fallbacks
        self.breakers = {n: CircuitBreaker(breaker_failures, breaker_cooldown_s) for n in backends}
        self.limits = {n: asyncio.Semaphore(b.cfg.max_concurrency) for n, b in backends.items()}
        self.on_breaker = on_breaker
        if on_deployment_breaker is not None:  # (model, deployment, state) of each deployment's breaker
            for name, b in backends.items():
                for d in getattr(b, "deployments", ()):
                    d.breaker.on_change = functools.partial(on_deployment_breaker, name, d.name)

    def _order(self, ranked: list[str]) -> list[str]:
        """Candidates to try: usable ones first, then open breakers, then backends without credentials."""
        if len(ranked) == 1:
            return ranked
        nokey = [m for m in ranked if getattr(self.backends[m], "key_missing", False)]
        usable = [m for m in ranked if m not in nokey][: 1 + self.max_fallbacks]
        if self.state is not None:
            for m in usable:
                self._shared_open(m)
        ok = [m for m in usable if self.breakers[m].allow()]
        return ok + [m for m in usable if m not in ok] + nokey

    def _shared_open(self, name: str) -> None:
        """Open a closed breaker that another replica opened (shared state), for its time left."""
        br = self.breakers[name]
        if br.state == "closed":
            left = self.state.breaker_open_for(name)
            if left > 0.0:
                br.state = "open"
                br.opened_at = br.clock() - max(0.0, br.cooldown_s - left)
                if self.on_breaker is not None:
                    self.on_breaker(name, "open")

    def _fail(self, name: str) -> None:
        br = self.breakers[name]
        before = br.state
        br.failure()
        if br.state != before:
            if br.state == "open" and self.state is not None:
                self.state.open_breaker(name, br.cooldown_s)
            if self.on_breaker is not None:
                self.on_breaker(name, br.state)

    def _ok(self, name: str) -> None:
        br = self.breakers[name]
        if br.state != "closed" or br.consecutive:
            before = br.state
            br.success()
            if before != "closed" and self.state is not None:
                self.state.close_breaker(name)
            if before != "closed" and self.on_breaker is not None:
                self.on_breaker(name, "closed")

    async def _backoff(self, k: int, deadline: float) -> bool:
        delay = self.backoff_s * (2**k) * (0.5 + random.random())
        if time.monotonic() + delay >= deadline:
            return False
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    async def complete(
        self, ranked: list[str], body: dict[str, Any], deadline: float
    ) -> tuple[str, dict[str, Any], list[Attempt]]:
        """(model, OpenAI response, attempts). Raises the last `BackendError` when all fail."""
        attempts: list[Attempt] = []
        last: BackendError | None = None
        for name in self._order(ranked):
            backend = self.backends[name]
            for k in range(1 + self.retries):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise last or BackendError(
                        "request deadline exceeded", status=504, code="deadline_exceeded"
                    )
                t0 = time.monotonic()
                try:
                    async with self.limits[name]:
                        resp = await backend.chat(body, min(backend.cfg.timeout_s, remaining))
                except BackendError as e:
                    attempts.append(Attempt(name, False, time.monotonic() - t0, e.message, e.status, t0))
                    last = _speaks_for(last, e)
                    if not e.fallback:
                        raise
                    if e.code != "missing_credentials":
                        self._fail(name)
                    if (
                        e.retryable
                        and k < self.retries
                        and self.breakers[name].state == "closed"
                        and await self._backoff(k, deadline)
                    ):
                        continue
                    break
                attempts.append(Attempt(name, True, time.monotonic() - t0, started=t0))
                self._ok(name)
                return name, resp, attempts
        raise _all_failed(last, attempts)

    async def stream(self, ranked: list[str], body: dict[str, Any], deadline: float) -> StreamStart:
        """Open a stream on the first candidate that delivers a content chunk."""
        attempts: list[Attempt] = []
        last: BackendError | None = None
        for name in self._order(ranked):
            backend = self.backends[name]
            for k in range(1 + self.retries):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise last or BackendError(
                        "request deadline exceeded", status=504, code="deadline_exceeded"
                    )
                t0 = time.monotonic()
                agen = backend.chat_stream(body, min(backend.cfg.timeout_s, remaining))
                first: list[dict[str, Any]] = []
                slot = self.limits[name]  # held until the stream ends (StreamStart.release)
                held = False
                try:
                    async with asyncio.timeout(remaining):
                        await slot.acquire()
                        held = True
                        async for batch in agen:
                            first.extend(batch)
                            if any(_committed(chunk) for chunk in batch):
                                break
                except (BackendError, TimeoutError) as e:
                    if held:
                        slot.release()
                    await agen.aclose()
                    err = (
                        e
                        if isinstance(e, BackendError)
                        else BackendError(
                            f"model {name!r}: no first token before the deadline",
                            status=504,
                            code="upstream_timeout",
                        )
                    )
                    attempts.append(Attempt(name, False, time.monotonic() - t0, err.message, err.status, t0))
                    last = _speaks_for(last, err)
                    if not err.fallback:
                        err.attempts = attempts  # type: ignore[attr-defined]
                        raise err from None
                    if err.code != "missing_credentials":
                        self._fail(name)
                    if (
                        err.retryable
                        and k < self.retries
                        and self.breakers[name].state == "closed"
                        and await self._backoff(k, deadline)
                    ):
                        continue
                    break
                except BaseException:
                    if held:
                        slot.release()
                    raise
                attempts.append(Attempt(name, True, time.monotonic() - t0, started=t0))
                return StreamStart(name, first, agen, attempts, t0, _once(slot.release))
        raise _all_failed(last, attempts)

    def stream_done(self, name: str, ok: bool) -> None:
        """Report how a committed stream ended (feeds the breaker)."""
        if ok:
            self._ok(name)
        else:
            self._fail(name)
