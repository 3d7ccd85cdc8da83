"""Endpoints passed through to one named model: `POST /v1/embeddings`, `POST /v1/completions`
(legacy text completions, streamed too), and Anthropic's `POST /v1/messages/count_tokens`.

Embeddings and completions are not routed: the request names a configured model on an
OpenAI-compatible provider, and goes to that model's `/embeddings` or `/completions` as it is
(`model` set to the upstream id). An alias is a 400 that lists its models: a router picks between
chat answers, but embeddings of different models live in different vector spaces, and a text
completion prompt is no conversation the routers were trained on. The rest of the pipeline
applies: API keys (permission, rate limit), a budget hold (the input's upper bound, plus
`max(n, best_of)` x `max_tokens` per prompt of output) settled with the upstream's usage (or a
central estimate when it sent none), metrics and a trace row (`endpoint` embeddings / completions).

`count_tokens` answers from the gateway's own token counter (`llmroute.gateway.tokens`: the plain
cl100k count of the request translated to chat, with the per-message and tool-use allowances the
budget holds use): an estimate for any model, with no upstream call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.api_anthropic import ANTHROPIC_MESSAGES
from llmroute.gateway.api_openai import DONE, OPENAI_CHAT, OpenAIStream
from llmroute.gateway.asgi import (
    JSON,
    SSE,
    Handler,
    Receive,
    Scope,
    Send,
    bad_request,
    read_json,
    rejected_headers,
    request_headers,
    send_error,
    send_response,
    trace_headers,
)
from llmroute.gateway.auth import GatewayError, max_request_cost
from llmroute.gateway.backends import BackendError
from llmroute.gateway.backends.anthropic import anthropic_to_openai_request
from llmroute.gateway.reliability import Attempt
from llmroute.gateway.routing import RequestContext, RouteDecision
from llmroute.gateway.schemas import (
    CompletionsRequest,
    CountTokensRequest,
    EmbeddingsRequest,
    passthrough_input,
    validate,
)
from llmroute.gateway.streaming import Disconnect, settle_anyway
from llmroute.gateway.tokens import TokenCounter, estimate_input_tokens

if TYPE_CHECKING:
    from llmroute.gateway.app import Gateway

__all__ = ["PassThrough", "input_tokens"]

#: endpoint -> (request schema, the field holding the input, the upstream path)
_ENDPOINTS: dict[str, tuple[type, str, str]] = {
    "embeddings": (EmbeddingsRequest, "input", "/embeddings"),
    "completions": (CompletionsRequest, "prompt", "/completions"),
}


def input_tokens(value: Any, counter: TokenCounter) -> int:
    """Tokens of an embeddings `input` / completions `prompt`: a string, strings (counted by
    `counter`), a token array or token arrays (their lengths)."""
    if isinstance(value, str):
        return counter.count(value)
    total = 0
    for x in value:
        total += counter.count(x) if isinstance(x, str) else (len(x) if isinstance(x, list) else 1)
    return total


def _prompts(value: Any) -> int:
    """How many prompts a completions `prompt` holds (each gets `n` completions)."""
    if isinstance(value, str) or not value or isinstance(value[0], int):
        return 1
    return len(value)


def _integral(value: list[Any]) -> list[Any]:
    """Token arrays with integral floats (417.0, valid JSON Schema integers) as ints."""
    out: list[Any] = []
    for x in value:
        if type(x) is float and x.is_integer() and abs(x) < 2**63:
            x = int(x)
        elif type(x) is list:
            x = _integral(x)
        out.append(x)
    return out


def _completion_text(chunk: dict[str, Any]) -> str:
    return "".join(c.get("text") or "" for c in chunk.get("choices") or () if isinstance(c, dict))


class PassThrough:
    """The pass-through endpoints of a `Gateway` (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def routes(self) -> dict[tuple[str, str], Handler]:
        """(method, path) -> handler, for the gateway's dispatch table."""
        return {
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/embeddings"): self.embeddings,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/completions"): self.completions,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
        }

    # ---- the named model -------------------------------------------------------------------
    def _model(self, name: str, endpoint: str) -> str:
        """The configured model `name` on an OpenAI-compatible provider; 400 for an alias or another
        provider, 404 for an unknown name."""
        engine = self.gw.engine
        base = name.rpartition("@")[0] if "@" in name and name not in engine.models else name
        plan = engine.plans.get(base)
        if plan is not None:
            usable = [m for m in plan.models if engine.models[m].api == "openai"]
            raise bad_request(
                f"{name!r} is a routed alias: /v1/{endpoint} goes to one named model, not routed "
                f"(a router picks between chat answers). Name a model, e.g. one of {usable or plan.models}.",
                "model",
                code="alias_not_supported",
            )
        cfg = engine.models.get(name)
        if cfg is None:
            raise GatewayError(
                404,
                f"The model {name!r} does not exist on this gateway. Use GET /v1/models to list models.",
                code="model_not_found",
                param="model",
            )
        if cfg.api != "openai":
            raise bad_request(
                f"The model {name!r} is served by the {cfg.provider} provider, which has no "
                f"/v1/{endpoint}; name a model on an OpenAI-compatible provider.",
                "model",
                code="endpoint_not_supported",
            )
        return name

    def _hold(self, model: str, body: dict[str, Any], endpoint: str) -> float:
        """The most the request can cost on `model` (the budget hold)."""
        cfg = self.gw.engine.models[model]
        field = _ENDPOINTS[endpoint][1]
        tin = input_tokens(body[field], self.gw.pricing.counters[model])
        if endpoint == "embeddings":
            return max_request_cost(cfg.input_per_mtok, 0.0, tin, 0)
        if isinstance(body.get("suffix"), str):
            tin += self.gw.pricing.counters[model].count(body["suffix"])
        out = body.get("max_tokens") or cfg.context_window or 4096
        per_prompt = max(int(body.get("n") or 1), int(body.get("best_of") or 1))
        return max_request_cost(
            cfg.input_per_mtok, cfg.output_per_mtok, tin, out, per_prompt * _prompts(body[field])
        )

    def _bill(
        self, model: str, body: dict[str, Any], endpoint: str, usage: Any, text: str
    ) -> tuple[tuple[int, int, float], str]:
        """((input, output tokens, USD), source): the upstream's usage, else a central estimate."""
        if isinstance(usage, dict) and usage:
            return self.gw.pricing.cost(model, usage), "usage"
        c = TokenCounter.central()
        ti = input_tokens(body[_ENDPOINTS[endpoint][1]], c)
        to = c.count(text)
        pin, pout = self.gw.pricing.prices[model]
        return (ti, to, ti * pin + to * pout), "estimate"

    # ---- embeddings and completions ---------------------------------------------------------
    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/embeddings: passed through to the named model."""
        await self._call(scope, receive, send, "embeddings")

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/completions: passed through to the named model (stream too)."""
        await self._call(scope, receive, send, "completions")

    async def _call(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        gw = self.gw
        schema, field, path = _ENDPOINTS[endpoint]
        t0 = time.perf_counter()
        rid = gw.new_id()
        ctx: RequestContext | None = None
        decision: RouteDecision | None = None
        reservation = None
        watch: Disconnect | None = None
        try:
            try:
                body = await read_json(scope, receive, gw.max_body, gw.max_depth)
                if type(body) is dict and isinstance(body.get(field), list):
                    body[field] = _integral(body[field])
                body = validate(body, schema)
                passthrough_input(body[field], field)
                headers = request_headers(scope) if gw.auth.enabled else {}
                key = gw.auth.admit(headers, body["model"]) if gw.auth.enabled else None
                model = self._model(body["model"], endpoint)
                value = body[field]
                texts = [value] if isinstance(value, str) else [x for x in value if isinstance(x, str)]
                ctx = RequestContext(
                    request_id=rid,
                    requested=model,
                    messages=[{"role": "user", "content": "\n".join(texts)}] if texts else [],
                    body=body,
                    key_id=key.id if key is not None else None,
                    headers=headers,
                    endpoint=endpoint,
                )
                decision = RouteDecision(model=model, ranked=[model], reason="direct")
                if key is not None and gw.budgets is not None:
                    reservation = await gw.budgets.reserve_async(key, self._hold(model, body, endpoint))
            except GatewayError as e:
                await gw.reject(send, e, rid, ctx, decision, t0)
                return
            watch = Disconnect(scope, receive)
            if endpoint == "completions" and body.get("stream"):  # embeddings do not stream
                await self._stream(send, body, ctx, decision, rid, t0, reservation, watch, path)
                return
            backend: Any = gw.backends[model]
            t1 = time.monotonic()
            try:
                async with gw.executor.limits[model]:
                    resp = await backend.post(path, body, min(backend.cfg.timeout_s, gw.timeout_s))
            except BackendError as e:
                e.attempts = [Attempt(model, False, time.monotonic() - t1, e.message, e.status)]  # type: ignore[attr-defined]
                await gw._upstream_failed(send, e, rid, ctx, decision, t0, reservation, OPENAI_CHAT, watch)
                return
            attempts = [Attempt(model, True, time.monotonic() - t1)]
            text = _completion_text(resp) if endpoint == "completions" else ""
            usage, source = self._bill(model, body, endpoint, resp.get("usage"), text)
            if reservation is not None:
                await gw.budgets.commit_async(reservation, usage[2])  # type: ignore[union-attr]
            watch.done = True
            await send_response(send, 200, orjson.dumps(resp), [JSON, *trace_headers(rid, model, "direct")])
            gw._finish(
                rid=rid,
                ctx=ctx,
                decision=decision,
                model=model,
                status=200,
                t0=t0,
                attempts=attempts,
                usage=usage,
                response=resp.get("choices") if endpoint == "completions" else None,
                extra={"cost_source": source},
            )
        except asyncio.CancelledError:  # the client went away: the upstream call was cancelled with us
            if reservation is not None and gw.budgets is not None:
                await settle_anyway(gw.budgets.release_async(reservation))
            gw._finish(
                rid=rid,
                ctx=ctx,
                decision=decision,
                model="",
                status=499,
                t0=t0,
                attempts=[],
                error="client disconnected",
            )
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as e:  # a bug: a 500 with a trace row
            if reservation is not None and gw.budgets is not None:
                gw.budgets.release(reservation)
            await gw._internal_error(send, e, rid, ctx, decision, t0, [], OPENAI_CHAT, scope)
        finally:
            if reservation is not None and gw.budgets is not None:
                gw.budgets.release(reservation)  # a no-op once committed
            if watch is not None:
                watch.stop()

    async def _stream(
        self,
        send: Send,
        body: dict[str, Any],
        ctx: RequestContext,
        decision: RouteDecision,
        rid: str,
        t0: float,
        reservation: Any,
        watch: Disconnect,
        path: str,
    ) -> None:
        """A streamed completion: the upstream's events relayed as they come (its usage event only
        when the client asked for it), billed by the usage or the delivered text."""
        gw = self.gw
        model = decision.model
        backend: Any = gw.backends[model]
        slot = gw.executor.limits[model]
        t1 = time.monotonic()
        await slot.acquire()
        try:
            agen = backend.stream(path, body, min(backend.cfg.timeout_s, gw.timeout_s))
            try:
                first = await anext(agen, [])
            except BaseException as e:
                await asyncio.shield(agen.aclose())
                if not isinstance(e, BackendError):
                    raise
                e.attempts = [Attempt(model, False, time.monotonic() - t1, e.message, e.status)]  # type: ignore[attr-defined]
                await gw._upstream_failed(
                    send, e, rid, ctx, decision, t0, reservation, OPENAI_CHAT, watch, stream=True
                )
                return
            ttft = time.perf_counter() - t0
            headers = [SSE, (b"cache-control", b"no-cache"), *trace_headers(rid, model, "direct")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            usage_raw: Any = None
            delivered: list[str] = []
            error: str | None = None
            status = 200

            def encode(batch: list[dict[str, Any]]) -> bytes:
                nonlocal usage_raw
                out = []
                for chunk in batch:
                    if chunk.get("usage"):
                        usage_raw = chunk["usage"]
                    delivered.append(_completion_text(chunk))
                    if not chunk.pop("_usage_only", False):
                        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
                return b"".join(out)

            try:
                data = encode(first)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                async with asyncio.timeout(max(0.001, gw.timeout_s - (time.perf_counter() - t0))):
                    async for batch in agen:
                        data = encode(batch)
                        if data:
                            await send({"type": "http.response.body", "body": data, "more_body": True})
            except (BackendError, TimeoutError) as e:
                error = e.message if isinstance(e, BackendError) else "request deadline exceeded mid-stream"
            except asyncio.CancelledError:
                error, status = "client disconnected", 499
            finally:
                await asyncio.shield(agen.aclose())
        finally:
            slot.release()
        usage, source = self._bill(model, body, "completions", usage_raw, "".join(delivered))
        cancelled = status == 499
        if reservation is not None and await settle_anyway(gw.budgets.commit_async(reservation, usage[2])):  # type: ignore[union-attr]
            error, status = error or "client disconnected", 499  # gone meanwhile; the settle still lands
        if status == 200:
            watch.done = True
            tail = DONE if error is None else OpenAIStream().fail(error)
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        gw._finish(
            rid=rid,
            ctx=ctx,
            decision=decision,
            model=model,
            status=status,
            t0=t0,
            attempts=[Attempt(model, error is None or status == 499, time.monotonic() - t1, error)],
            usage=usage,
            stream=True,
            ttft=ttft,
            error=error,
            extra={"cost_source": source},
        )
        if cancelled:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()

    # ---- count_tokens ------------------------------------------------------------------------
    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/messages/count_tokens: `{"input_tokens": N}` for a Messages request, from the
        gateway's token counter (no upstream call); errors in the Anthropic shape."""
        gw = self.gw
        rid = gw.new_id()
        try:
            body = validate(await read_json(scope, receive, gw.max_body, gw.max_depth), CountTokensRequest)
            headers = request_headers(scope) if gw.auth.enabled else {}
            if gw.auth.enabled:
                gw.auth.authenticate(headers)  # an unknown caller gets its 401 first
            name, _ = gw.engine.split_model(body["model"])
            if gw.auth.enabled:
                gw.auth.admit(headers, name)
            if name not in gw.engine.models and name not in gw.engine.plans:
                raise GatewayError(
                    404,
                    f"The model {name!r} does not exist on this gateway. Use GET /v1/models to list "
                    "models and aliases.",
                    code="model_not_found",
                    param="model",
                )
        except GatewayError as e:
            if e.status in (401, 403, 429):
                gw.metrics.observe_rejection(e.status, e.code or e.type, e.key_id)
            await send_error(send, e, rejected_headers(rid, None, e), ANTHROPIC_MESSAGES.error_body(e))
            return
        chat = anthropic_to_openai_request({**body, "max_tokens": 1})
        n = estimate_input_tokens(chat, TokenCounter.central())
        await send_response(
            send, 200, orjson.dumps({"input_tokens": n}), [JSON, *trace_headers(rid, name, "count")]
        )
