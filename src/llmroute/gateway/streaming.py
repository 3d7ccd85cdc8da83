"""The streamed-response path of the gateway pipeline, and client-disconnect handling.

`relay_stream` relays one routed stream: it starts the upstream stream through the `Executor`
(fallback before the first token), sends the response headers, re-encodes each chunk in the
API family's wire format, and bills what was streamed: the upstream's usage when it arrived,
else the delivered text's tokens plus the input estimate (a broken-off or disconnected stream;
`llmroute.gateway.billing.Pricing.estimated_cost`). `Disconnect` cancels the request task when
the client goes away before the response is complete, which cancels the upstream call with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from llmroute.gateway.asgi import SSE, Receive, Scope, Send, trace_headers
from llmroute.gateway.backends import BackendError
from llmroute.gateway.backends.anthropic import PROMPT_TOKENS
from llmroute.gateway.reliability import Attempt
from llmroute.gateway.tokens import stream_text

if TYPE_CHECKING:
    from llmroute.gateway.app import ApiFamily, Gateway
    from llmroute.gateway.routing import RequestContext, RouteDecision

__all__ = ["DISCONNECT_EXT", "Disconnect", "relay_stream", "settle_anyway"]

#: ASGI scope extension offered by `llmroute.gateway._uvicorn.CoalescingHttpToolsProtocol`
DISCONNECT_EXT = "llmroute.on_disconnect"


class Disconnect:
    """Cancels the request task when the client disconnects before the response is complete.

    Under `llmroute serve` (uvicorn with `CoalescingHttpToolsProtocol`) the server calls back on
    the disconnect (the `llmroute.on_disconnect` scope extension): no extra task per request.
    Under any other ASGI server a watcher task waits in `receive()` for `http.disconnect`."""

    __slots__ = ("done", "task", "watcher")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.done = False
        self.task = asyncio.current_task()
        ext = (scope.get("extensions") or {}).get(DISCONNECT_EXT)
        if ext is not None:
            self.watcher: asyncio.Future[None] | None = None
            ext["register"](self._cancel)
        else:
            self.watcher = asyncio.ensure_future(self._watch(receive))

    def _cancel(self) -> None:
        if not self.done and self.task is not None:
            self.task.cancel()

    async def _watch(self, receive: Receive) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                self._cancel()
                return

    def stop(self) -> None:
        """The request is over. uvicorn answers the pending `receive` with `http.disconnect` once the
        response is complete, so a watcher normally ends on its own in the next loop turn;
        cancelling it at once would leave a CancelledError/traceback/frame cycle holding the whole
        request cycle per request for the garbage collector. A watcher still waiting one turn later
        (another server, or no complete response) is cancelled then."""
        self.done = True
        if self.watcher is not None and not self.watcher.done():
            asyncio.get_running_loop().call_soon(self._reap)

    def _reap(self) -> None:
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()


async def settle_anyway(settle: Awaitable[None]) -> bool:
    """Await a budget settle (`BudgetManager.commit_async` / `release_async`) in a request that
    may be cancelled (again) meanwhile: the settle still lands then (`RedisLedger.settle_async`
    finishes it), that cancellation is absorbed (`Task.uncancel`) so the caller goes on to
    record the request, and True says it happened."""
    try:
        await settle
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True
    return False


async def relay_stream(
    gw: Gateway,
    send: Send,
    body: dict[str, Any],
    ctx: RequestContext,
    decision: RouteDecision,
    rid: str,
    t0: float,
    deadline: float,
    reservation: Any,
    api: ApiFamily,
    watch: Disconnect,
) -> None:
    """Answer the streamed request `body` from `decision`'s candidates through `gw`'s executor
    (the routed path without a cascade): headers, the chunks as they come, and the tail; the
    budget `reservation` is charged and the request traced however the stream ends."""
    try:
        start = await gw.executor.stream(decision.ranked, body, deadline)
    except BackendError as e:
        await gw._upstream_failed(send, e, rid, ctx, decision, t0, reservation, api, watch, stream=True)
        return
    try:
        model = start.model
        ttft = time.perf_counter() - t0
        reason = decision.reason if model == decision.model else f"{decision.reason} fallback={model}"
        trace = trace_headers(rid, model, reason, decision)
        headers = [SSE, (b"cache-control", b"no-cache"), *trace]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        usage_raw: dict[str, Any] | None = None
        delivered: list[str] = []  # the streamed text, billed when no usage arrives
        reported_in: int | None = None  # input tokens an Anthropic upstream reported first
        cancelled = False
        enc = api.stream(model, rid, ctx)
        feed = enc.feed
        error: str | None = None
        t_up = time.perf_counter()

        cache = gw.guard is not None and bool(gw.guard.cache)
        # the whole answer, for the response cache and an alias's answer-level implicit outcomes
        answer = gw.sessions is not None and gw.sessions.wants_answer(decision.alias)
        collected: list[dict[str, Any]] | None = [] if cache or answer else None

        def encode(chunk: dict[str, Any]) -> bytes:
            nonlocal usage_raw, reported_in
            if collected is not None:
                collected.append(chunk)
            if chunk.get("usage"):
                usage_raw = chunk["usage"]
            if chunk.get("choices"):
                delivered.append(stream_text(chunk))
                if PROMPT_TOKENS in chunk:
                    reported_in = int(chunk[PROMPT_TOKENS] or 0)
            return feed(chunk)

        try:
            first = b"".join(encode(c) for c in start.first)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                async for batch in start.rest:
                    data = b"".join([encode(chunk) for chunk in batch])
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
            gw.executor.stream_done(model, True)
        except (BackendError, TimeoutError) as e:
            error = e.message if isinstance(e, BackendError) else "request deadline exceeded mid-stream"
            gw.executor.stream_done(model, False)
            with contextlib.suppress(Exception):
                await start.rest.aclose()  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            # client disconnected: close the upstream stream now; billed and recorded below
            cancelled = True
            error = "client disconnected"
            with contextlib.suppress(Exception):
                await asyncio.shield(start.rest.aclose())  # type: ignore[attr-defined]
    finally:
        start.release()  # the model's concurrency slot, however the stream ended
    # bill what was streamed: the upstream's usage when it arrived, else the delivered text's
    # tokens plus the input estimate (a broken-off or disconnected stream)
    source = "usage" if usage_raw else "estimate"
    usage = (
        gw.pricing.cost(model, usage_raw)
        if usage_raw
        else gw.pricing.estimated_cost(model, body, "".join(delivered), reported_in)
    )
    interrupted = 0  # cancellations caught here (the disconnect above, and one during the settle)
    if cancelled:
        interrupted += 1
    if reservation is not None:
        try:
            await gw.budgets.commit_async(reservation, usage[2])  # type: ignore[union-attr]
        except asyncio.CancelledError:
            # the client went away while Redis booked the cost: the settle still lands
            # (RedisLedger.settle_async); the request is recorded as disconnected below
            interrupted += 1
            cancelled = True
            error = error or "client disconnected"
    if cancelled:
        gw._finish(
            rid=rid,
            ctx=ctx,
            decision=decision,
            model=model,
            status=499,
            t0=t0,
            attempts=[*start.attempts],
            usage=usage,
            stream=True,
            ttft=ttft,
            error=error,
            extra={"cost_source": source},
        )
        task = asyncio.current_task()
        if task is not None:
            for _ in range(interrupted):
                task.uncancel()
        return
    if collected is not None and error is None:
        from llmroute.cache import assemble_stream

        whole = assemble_stream(collected)
        if cache:
            gw.guard.store(ctx, whole)
        if answer:
            ctx.extra["answer"] = whole  # read by SessionTracker.finished (length, refusal)
    tail = enc.finish() if error is None else enc.fail(error)
    watch.done = True
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    attempts = [*start.attempts]
    up = attempts[-1]
    attempts[-1] = Attempt(
        model, error is None, up.latency_s + (time.perf_counter() - t_up), error, None, up.started
    )
    gw._finish(
        rid=rid,
        ctx=ctx,
        decision=decision,
        model=model,
        status=200,
        t0=t0,
        attempts=attempts,
        usage=usage,
        stream=True,
        ttft=ttft,
        error=error,
        extra={"cost_source": source},
    )
