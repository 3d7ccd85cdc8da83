"""The gateway ASGI application: OpenAI- and Anthropic-compatible endpoints in front of routed backends.

A raw ASGI app (no framework on the hot path; orjson; one pooled upstream `HTTPClient` created
at startup). Endpoints::

    POST /v1/chat/completions   OpenAI chat (stream and non-stream); unknown fields pass through
    POST /v1/messages           Anthropic Messages in, routed to any backend (stream too)
    POST /v1/route              decision only: chosen model, ranked candidates, reason
    POST /v1/feedback           attach an outcome to a request id
    GET  /v1/models             aliases and models (with keys: those the caller's key may use)
    GET  /healthz, GET /metrics (Prometheus), GET /openapi.json

Request path: parse + validate -> auth (key, permission, rate) -> `RoutingEngine.decide` (hooks,
then the router) -> budget reservation -> `Executor` (retries, fallback, breakers, deadline) ->
response with `x-llmroute-request-id`, `x-llmroute-model`, `x-llmroute-reason` -> metrics and a
trace record queued to the store (off the hot path). A client disconnect cancels the upstream call.

Build with `Gateway(config)` (loads routers and backends; `routers=` injects router objects) and
serve it with any ASGI server (`llmroute serve` uses uvicorn with uvloop + httptools).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from llmroute.gateway.auth import (
    Authenticator,
    BudgetManager,
    GatewayError,
    estimate_input_tokens,
    max_request_cost,
)
from llmroute.gateway.backends import Backend, BackendError, make_backends
from llmroute.gateway.backends.anthropic import (
    PROMPT_TOKENS,
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from llmroute.gateway.backends.http import HTTPClient
from llmroute.gateway.config import GatewayConfig
from llmroute.gateway.metrics import GatewayMetrics
from llmroute.gateway.reliability import Attempt, Executor
from llmroute.gateway.routing import (
    RequestContext,
    RouteDecision,
    RouterLike,
    RoutingEngine,
    load_router,
    parse_request_policy,
)

__all__ = ["Gateway", "openapi_document"]

log = logging.getLogger("llmroute.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream")
_ROLES = frozenset(("system", "user", "assistant", "tool", "developer", "function"))
_DONE = b"data: [DONE]\n\n"
# ASGI scope extension offered by `llmroute.gateway._uvicorn.CoalescingHttpToolsProtocol`
_DISCONNECT_EXT = "llmroute.on_disconnect"


def _hdr(name: bytes, value: str) -> tuple[bytes, bytes]:
    return name, value.encode("latin-1", "replace")


def _bad(message: str, param: str | None = None, status: int = 400, code: str | None = None) -> GatewayError:
    return GatewayError(status, message, param=param, code=code)


def _validate_chat(body: Any) -> None:
    """OpenAI chat request checks that must give a 400 (never a 500) before anything runs."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(
            "'model' is required and must be a non-empty string (a model name or an alias "
            "such as 'llmroute/auto').",
            "model",
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad(
            "'messages' is required and must be a non-empty array of {role, content} objects.", "messages"
        )
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object with 'role' and 'content'.", f"messages[{i}]")
        if m.get("role") not in _ROLES:
            raise _bad(f"messages[{i}].role must be one of {sorted(_ROLES)}.", f"messages[{i}].role")
        c = m.get("content")
        if c is not None and not isinstance(c, str | list):
            raise _bad(
                f"messages[{i}].content must be a string or an array of content parts.",
                f"messages[{i}].content",
            )
    for k, types, what in (
        ("stream", (bool,), "a boolean"),
        ("temperature", (int, float), "a number"),
        ("top_p", (int, float), "a number"),
        ("max_tokens", (int,), "an integer"),
        ("max_completion_tokens", (int,), "an integer"),
        ("n", (int,), "an integer"),
        ("tools", (list,), "an array"),
        ("stream_options", (dict,), "an object"),
        ("llmroute", (dict,), 'an object such as {"tradeoff": 0.0, "max_cost": 0.01}'),
    ):
        v = body.get(k)
        if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
            raise _bad(f"'{k}' must be {what}.", k)
    mt = body.get("max_tokens")
    if isinstance(mt, int) and mt <= 0:
        raise _bad("'max_tokens' must be a positive integer.", "max_tokens")


def _validate_anthropic(body: Any) -> None:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("'model' is required and must be a string.", "model")
    if (
        not isinstance(body.get("max_tokens"), int)
        or isinstance(body.get("max_tokens"), bool)
        or body["max_tokens"] <= 0
    ):
        raise _bad("'max_tokens' is required and must be a positive integer.", "max_tokens")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' is required and must be a non-empty array.", "messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise _bad(f"messages[{i}].role must be 'user' or 'assistant'.", f"messages[{i}].role")
        if not isinstance(m.get("content"), str | list):
            raise _bad(
                f"messages[{i}].content must be a string or an array of blocks.", f"messages[{i}].content"
            )
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _bad("'stream' must be a boolean.", "stream")


def _input_tokens(ctx: RequestContext) -> int:
    """The prompt's input tokens as far as the gateway can tell before any upstream usage arrives
    (about 4 characters per token: the estimate routing uses)."""
    return max(1, round(len(ctx.text) / 4))


def _anthropic_error(e: GatewayError) -> bytes:
    etype = {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
    }.get(e.status, "invalid_request_error" if e.status < 500 else "api_error")
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": e.message}})


def _from_backend(e: BackendError) -> GatewayError:
    """The client's error for a failed upstream call. A 5xx that a retry cannot cure (a model
    without credentials: 501; upstream rejecting the gateway's own key) says
    `x-should-retry: false`, which the official openai/anthropic clients obey (they retry every
    other 5xx)."""
    headers = {"x-should-retry": "false"} if e.status >= 500 and not e.retryable else None
    return GatewayError(e.status, e.message, type=e.etype, code=e.code, param=e.param, headers=headers)


def openapi_document() -> dict[str, Any]:
    """The gateway's OpenAPI 3.1 document (served at /openapi.json)."""
    msg = {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}, "content": {}}}
    chat = {
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": True,
        "properties": {
            "model": {
                "type": "string",
                "description": "a model name (passes through) or an alias such as llmroute/auto; an "
                "alias takes a per-request policy suffix: @0.3 or @share=0.3 (share of requests for "
                "the strong model), @tradeoff=50",
            },
            "messages": {"type": "array", "items": msg},
            "stream": {"type": "boolean"},
            "tools": {"type": "array"},
            "tool_choice": {},
            "response_format": {"type": "object"},
            "temperature": {"type": "number"},
            "max_tokens": {"type": "integer"},
            "n": {"type": "integer"},
            "llmroute": {
                "type": "object",
                "description": "per-request policy (other fields: 400)",
                "additionalProperties": False,
                "properties": {
                    "tradeoff": {"type": ["number", "null"], "minimum": 0},
                    "max_cost": {"type": ["number", "null"], "minimum": 0},
                    "min_quality": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                    "strong_share": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                    "on_unmet": {"enum": ["closest", "reject", None]},
                },
            },
        },
    }
    err = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {},
                    "code": {},
                },
            }
        },
    }
    trace_headers = {
        h: {"schema": {"type": "string"}}
        for h in ("x-llmroute-request-id", "x-llmroute-model", "x-llmroute-reason")
    }
    for h, what in (
        ("x-llmroute-constraint", "with max_cost/min_quality: 'met' or which limit no candidate meets"),
        ("x-llmroute-rule", "the rules that changed this request's policy"),
        ("x-llmroute-tradeoff", "the trade-off a rule set"),
    ):
        trace_headers[h] = {"schema": {"type": "string"}, "description": what}

    def op(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        o: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "headers": trace_headers},
                "4XX": {"description": "client error", "content": {"application/json": {"schema": err}}},
            },
        }
        if body is not None:
            o["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return o

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llmroute gateway",
            "version": "0.1.0",
            "description": "OpenAI-compatible routing gateway: aliases route each request to a model.",
        },
        "paths": {
            "/v1/chat/completions": {"post": op("Chat completion, routed when model is an alias", chat)},
            "/v1/messages": {"post": op("Anthropic Messages API, routed to any backend", {"type": "object"})},
            "/v1/route": {"post": op("Routing decision only", chat)},
            "/v1/feedback": {
                "post": op(
                    "Attach an outcome to a request id",
                    {
                        "type": "object",
                        "required": ["request_id"],
                        "properties": {"request_id": {"type": "string"}, "quality": {"type": "number"}},
                    },
                )
            },
            "/v1/models": {"get": op("Aliases and models the caller's API key may use")},
            "/healthz": {"get": op("Liveness and breaker states")},
            "/metrics": {"get": op("Prometheus metrics")},
            "/openapi.json": {"get": op("This document")},
        },
    }


class _Disconnect:
    """Cancels the request task when the client disconnects before the response is complete.

    Under `llmroute serve` (uvicorn with `CoalescingHttpToolsProtocol`) the server calls back on
    the disconnect (the `llmroute.on_disconnect` scope extension): no extra task per request.
    Under any other ASGI server a watcher task waits in `receive()` for `http.disconnect`."""

    __slots__ = ("done", "task", "watcher")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.done = False
        self.task = asyncio.current_task()
        ext = (scope.get("extensions") or {}).get(_DISCONNECT_EXT)
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


class Gateway:
    """The ASGI app. See the module docstring."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        routers: dict[str, RouterLike] | None = None,
        backends: dict[str, Backend] | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.config = config
        srv = config.server
        if routers is None:
            needed = {a.router for a in config.aliases.values()}
            routers = {
                name: load_router(ref, config) for name, ref in config.routers.items() if name in needed
            }
        self.engine = RoutingEngine(config, routers)
        self.guard: Any = None  # rules, guards and response cache (issue 4)
        if config.rules or config.cache:
            from llmroute.signals.gateway import GatewayGuard

            self.guard = GatewayGuard(config, routers)
            self.engine.add_hook(self.guard.hook)
        self.backends = backends if backends is not None else make_backends(config)
        self.metrics = metrics or GatewayMetrics()
        if self.guard is not None:
            from llmroute.signals.gateway import register_metrics

            register_metrics(self.guard, self.metrics.registry)
        self.executor = Executor(
            self.backends,
            retries=srv.retries,
            backoff_s=srv.backoff_s,
            breaker_failures=srv.breaker_failures,
            breaker_cooldown_s=srv.breaker_cooldown_s,
            max_fallbacks=srv.max_fallbacks,
            on_breaker=self.metrics.set_breaker,
        )
        self.auth = Authenticator(config.keys)
        self.budgets: BudgetManager | None = None
        self.store: Any = None
        self.http: HTTPClient | None = None
        self.feedback_hooks: list[Callable[[str, dict[str, Any]], Awaitable[None]]] = []
        self.prices = {m.name: (m.input_per_mtok / 1e6, m.output_per_mtok / 1e6) for m in config.models}
        self.max_body = srv.max_body_bytes
        self.timeout_s = srv.request_timeout_s
        self._model_list: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "llmroute",
                "llmroute": {
                    "kind": "alias",
                    "router": a.router,
                    **self.engine.alias_info(name),  # effective policy, accepted model suffixes
                    "candidates": self.engine.plans[name].models,
                },
            }
            for name, a in config.aliases.items()
        ] + [
            {
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": m.provider,
                "llmroute": {
                    "kind": "model",
                    "provider": m.provider,
                    "router_model": m.estimated_by,
                    "input_per_mtok": m.input_per_mtok,
                    "output_per_mtok": m.output_per_mtok,
                    "context_window": m.context_window,
                },
            }
            for m in config.models
        ]
        self._models_body = self._models_for(None)
        self._models_by_key: dict[str, bytes] = {}
        self._openapi = orjson.dumps(openapi_document())
        self._started = False
        # request ids: a random per-process prefix + a counter (an os.urandom call per request costs a syscall)
        prefix = os.urandom(6).hex()
        counter = itertools.count(1)
        self._new_id = lambda: f"{prefix}{next(counter):012x}"
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/chat/completions"): self._chat,
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/route"): self._route,
            ("POST", "/v1/feedback"): self._feedback,
            ("GET", "/v1/models"): self._models,
            ("GET", "/models"): self._models,
            ("GET", "/healthz"): self._health,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/openapi.json"): self._openapi_ep,
        }
        self._paths = {p for _, p in self._routes}

    # ---- lifecycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        """Open the pooled HTTP session, the trace store and the budgets; start the backends."""
        if self._started:
            return
        from llmroute.gateway.store import open_store

        cfg = self.config
        if cfg.server.blas_threads:
            # per-request matrix products are tiny: extra BLAS threads only fight for the cores
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(limits=cfg.server.blas_threads)
            if cfg.server.blas_threads == 1:
                # BLAS is single-threaded process-wide now: routers can skip their per-call limit
                for r in self.engine.routers.values():
                    if hasattr(r, "blas_single_thread"):
                        r.blas_single_thread = True
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(
            None,
            lambda: open_store(
                cfg.store.url,
                base_dir=cfg.base_dir,
                store_prompts=cfg.trace.store_prompts,
                store_responses=cfg.trace.store_responses,
                batch_size=cfg.store.batch_size,
                flush_interval_s=cfg.store.flush_interval_s,
            ),
        )
        self.metrics.bind_store(self.store)
        self.budgets = BudgetManager(cfg.keys, store=self.store)
        self.http = HTTPClient(limit_per_origin=1024)
        for b in self.backends.values():
            await b.start(self.http)
        self._started = True

    async def shutdown(self) -> None:
        """Close backends, the session and the store (draining queued traces), then the metrics
        (a worker of `llmroute serve --workers N` publishes its last counts, store totals included)
        and the budgets and rate limits (releasing the shared ledgers)."""
        if not self._started:
            return
        self._started = False
        for b in self.backends.values():
            with contextlib.suppress(Exception):
                await b.close()
        if self.http is not None:
            await self.http.close()
        if self.store is not None:
            await self.store.close()
        # joins the publisher thread (up to seconds): off the event loop
        await asyncio.get_running_loop().run_in_executor(None, self.metrics.close)
        if self.budgets is not None:
            self.budgets.close()
        self.auth.close()

    # ---- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is None:
                path = scope["path"]
                if path in self._paths:
                    await self._error(
                        send,
                        GatewayError(
                            405, f"Method {scope['method']} not allowed on {path}.", code="method_not_allowed"
                        ),
                    )
                else:
                    await self._error(
                        send, GatewayError(404, f"No endpoint {path}. See /openapi.json.", code="not_found")
                    )
                return
            try:
                await handler(scope, receive, send)
            except Exception:  # a bug, not the client's fault: log it, answer JSON if still possible
                log.exception("internal error on %s %s", scope["method"], scope["path"])
                with contextlib.suppress(Exception):
                    await self._error(
                        send,
                        GatewayError(
                            500,
                            "Internal gateway error (logged).",
                            type="server_error",
                            code="internal_error",
                        ),
                    )
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as e:  # pragma: no cover - reported by the server
                        await send({"type": "lifespan.startup.failed", "message": f"{type(e).__name__}: {e}"})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(
        self,
        send: Send,
        e: GatewayError,
        extra: list[tuple[bytes, bytes]] | None = None,
        anthropic: bool = False,
    ) -> None:
        headers = [_JSON, *(extra or ())]
        headers += [_hdr(k.lower().encode(), v) for k, v in e.headers.items()]
        body = _anthropic_error(e) if anthropic else orjson.dumps(e.body())
        await self._send(send, e.status, body, headers)

    async def _read_json(self, scope: Scope, receive: Receive) -> Any:
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    if int(v) > self.max_body:
                        raise GatewayError(
                            413,
                            f"Request body too large: the limit is {self.max_body} bytes.",
                            code="request_too_large",
                        )
                except ValueError:
                    raise _bad("Invalid Content-Length header.") from None
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise asyncio.CancelledError
            b = msg.get("body", b"")
            if b:
                size += len(b)
                if size > self.max_body:
                    raise GatewayError(
                        413,
                        f"Request body too large: the limit is {self.max_body} bytes.",
                        code="request_too_large",
                    )
                chunks.append(b)
            if not msg.get("more_body"):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not raw:
            raise _bad("The request body is empty; send a JSON object.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise _bad(f"The request body is not valid JSON: {e.msg} at position {e.pos}.") from None

    @staticmethod
    def _headers(scope: Scope) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

    def _trace_headers(
        self, rid: str, model: str, reason: str, decision: RouteDecision | None = None
    ) -> list[tuple[bytes, bytes]]:
        out = [
            _hdr(b"x-llmroute-request-id", rid),
            _hdr(b"x-llmroute-model", model),
            _hdr(b"x-llmroute-reason", reason),
        ]
        if decision is not None and decision.policy:  # constraint / rule headers (RouteDecision.headers)
            out += [_hdr(k.encode(), v) for k, v in decision.headers()]
        return out

    def _rejected_headers(
        self, rid: str, decision: RouteDecision | None, e: GatewayError
    ) -> list[tuple[bytes, bytes]]:
        """Trace headers for a request refused before any upstream call (no model was called)."""
        model = decision.model if decision is not None else "none"
        return self._trace_headers(rid, model, f"rejected {e.status} {e.code or e.type}")

    def _max_cost(self, decision: RouteDecision, body: dict[str, Any]) -> float:
        tin = estimate_input_tokens(body.get("messages") or [])
        mt = body.get("max_tokens") or body.get("max_completion_tokens")
        worst = 0.0
        for name in decision.ranked[: 1 + self.config.server.max_fallbacks]:
            cfg = self.engine.models[name]
            out = mt or cfg.context_window or 4096
            worst = max(worst, max_request_cost(cfg.input_per_mtok, cfg.output_per_mtok, tin, out))
        return worst

    def _cost(self, model: str, usage: dict[str, Any] | None) -> tuple[int, int, float]:
        if not usage:
            return 0, 0, 0.0
        ti = int(usage.get("prompt_tokens") or 0)
        to = int(usage.get("completion_tokens") or 0)
        pin, pout = self.prices[model]
        return ti, to, ti * pin + to * pout

    async def _prepare(
        self, scope: Scope, body: dict[str, Any], rid: str, endpoint: str
    ) -> tuple[RequestContext, RouteDecision, Any]:
        """auth -> decide; shared by chat, messages and route."""
        headers = self._headers(scope) if (self.auth.enabled or self.engine.hooks) else {}
        try:  # "alias@0.3", "alias@tradeoff=50": per-request policy in the model name
            model, policy = self.engine.split_model(body["model"])
        except GatewayError:
            if self.auth.enabled:
                self.auth.authenticate(headers)  # an unknown caller gets its 401 first
            raise
        key = self.auth.admit(headers, model) if self.auth.enabled else None
        policy.update(parse_request_policy(body.pop("llmroute", None)))  # 400 on unknown fields
        ctx = RequestContext(
            request_id=rid,
            requested=model,
            messages=body["messages"],
            body=body,
            key_id=key.id if key is not None else None,
            headers=headers,
            endpoint=endpoint,
            policy=policy,
        )
        decision = await self.engine.decide(ctx)
        return ctx, decision, key

    def _finish(
        self,
        *,
        rid: str,
        ctx: RequestContext | None,
        decision: RouteDecision | None,
        model: str,
        status: int,
        t0: float,
        attempts: list[Attempt],
        usage: tuple[int, int, float] = (0, 0, 0.0),
        stream: bool = False,
        ttft: float | None = None,
        error: str | None = None,
        response: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Metrics + trace record (both queued, off the hot path)."""
        total = time.perf_counter() - t0
        upstream = sum(a.latency_s for a in attempts)
        alias = decision.alias if decision is not None else None
        fails = [a for a in attempts if not a.ok]
        m = self.metrics
        for a in fails:
            m.observe_error(a.model, alias, kind=str(a.status or "error"))
        if decision is not None and model and model != decision.model:
            m.observe_fallback(
                alias, decision.model, model, reason=str(fails[-1].status if fails else "error")
            )
        label = model if model in self.engine.models else ""
        m.observe_request(
            model=label,
            alias=alias if alias in self.engine.plans else None,
            status=status,
            overhead_s=max(0.0, total - upstream),
            upstream_s=upstream,
            total_s=total,
            tokens_in=usage[0],
            tokens_out=usage[1],
            cost_usd=usage[2],
            fallbacks=len(fails),
            ttft_s=ttft,
            stream=stream,
        )
        if self.store is None:
            return
        trace = self.config.trace
        # `extra`: a request refused before a decision existed (e.g. blocked by a rule or guard)
        rec_extra = decision.extra if decision is not None and decision.extra else extra or None
        # one tuple in TRACE_FIELDS order (store.write_row): cheaper than a dict on both sides of the queue
        self.store.write_row(
            (
                rid,
                time.time(),
                ctx.key_id if ctx else None,
                alias,
                model or None,
                ctx.requested if ctx else None,
                status,
                error,
                decision.reason if decision else None,
                stream,
                decision.candidates() if decision else [],
                [
                    {"model": a.model, "error": a.error, "status": a.status, "latency_ms": a.latency_s * 1000}
                    for a in fails
                ],
                max(0.0, total - upstream) * 1000,
                upstream * 1000,
                total * 1000,
                None if ttft is None else ttft * 1000,
                usage[0],
                usage[1],
                usage[2],
                ctx.text if ctx is not None and trace.store_prompts else None,
                response if trace.store_responses else None,
                None,  # outcome: attached later by /v1/feedback
                rec_extra,
            )
        )

    async def _upstream_failed(
        self,
        send: Send,
        e: BackendError,
        rid: str,
        ctx: RequestContext,
        decision: RouteDecision,
        t0: float,
        reservation: Any,
        anthropic: bool,
        watch: _Disconnect,
        *,
        stream: bool = False,
    ) -> None:
        """Every candidate failed before a response started: release the budget, trace, answer."""
        if reservation is not None:
            self.budgets.release(reservation)  # type: ignore[union-attr]
        ge = _from_backend(e)
        self._finish(
            rid=rid,
            ctx=ctx,
            decision=decision,
            model="",
            status=ge.status,
            t0=t0,
            attempts=getattr(e, "attempts", []),
            error=e.message,
            stream=stream,
        )
        watch.done = True
        await self._error(
            send, ge, self._trace_headers(rid, decision.model, decision.reason, decision), anthropic
        )

    # ---- endpoints ---------------------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, anthropic=False)

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, anthropic=True)

    async def _completion(self, scope: Scope, receive: Receive, send: Send, *, anthropic: bool) -> None:
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        rid = self._new_id()
        ctx: RequestContext | None = None
        decision: RouteDecision | None = None
        reservation = None
        watch: _Disconnect | None = None
        attempts: list[Attempt] = []
        try:
            try:
                body = await self._read_json(scope, receive)
                if anthropic:
                    _validate_anthropic(body)
                    body = anthropic_to_openai_request(body)
                else:
                    _validate_chat(body)
                ctx, decision, key = await self._prepare(
                    scope, body, rid, "messages" if anthropic else "chat"
                )
                if key is not None and self.budgets is not None:
                    reservation = self.budgets.reserve(key, self._max_cost(decision, body))
            except GatewayError as e:
                self._finish(
                    rid=rid,
                    ctx=ctx,
                    decision=decision,
                    model="",
                    status=e.status,
                    t0=t0,
                    attempts=[],
                    error=e.message,
                    extra=getattr(e, "trace_extra", None),
                )
                if e.status in (401, 403, 429):
                    self.metrics.observe_rejection(e.status, e.code or e.type, ctx.key_id if ctx else None)
                await self._error(send, e, self._rejected_headers(rid, decision, e), anthropic)
                return
            watch = _Disconnect(scope, receive)
            if ctx.extra.get("cache_hit") is not None:
                await self._cached(
                    send, ctx, decision, rid, t0, reservation, anthropic, bool(body.get("stream"))
                )
                return
            if body.get("stream"):
                await self._stream(
                    send, body, ctx, decision, rid, t0, deadline, reservation, anthropic, watch
                )
                return
            try:
                model, resp, attempts = await self.executor.complete(decision.ranked, body, deadline)
            except BackendError as e:
                await self._upstream_failed(send, e, rid, ctx, decision, t0, reservation, anthropic, watch)
                return
            usage = self._cost(model, resp.get("usage"))
            if reservation is not None:
                self.budgets.commit(reservation, usage[2])  # type: ignore[union-attr]
            if self.guard is not None:
                self.guard.store(ctx, resp)
            reason = decision.reason if model == decision.model else f"{decision.reason} fallback={model}"
            out = openai_to_anthropic_response(resp, model) if anthropic else resp
            watch.done = True
            headers = self._trace_headers(rid, model, reason, decision)
            await self._send(send, 200, orjson.dumps(out), [_JSON, *headers])
            self._finish(
                rid=rid,
                ctx=ctx,
                decision=decision,
                model=model,
                status=200,
                t0=t0,
                attempts=attempts,
                usage=usage,
                response=resp.get("choices"),
            )
        except asyncio.CancelledError:
            # client went away: the upstream call was cancelled with us
            if reservation is not None and self.budgets is not None:
                self.budgets.release(reservation)
            self._finish(
                rid=rid,
                ctx=ctx,
                decision=decision,
                model="",
                status=499,
                t0=t0,
                attempts=attempts,
                error="client disconnected",
            )
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
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
        deadline: float,
        reservation: Any,
        anthropic: bool,
        watch: _Disconnect,
    ) -> None:
        try:
            start = await self.executor.stream(decision.ranked, body, deadline)
        except BackendError as e:
            await self._upstream_failed(
                send, e, rid, ctx, decision, t0, reservation, anthropic, watch, stream=True
            )
            return
        try:
            model = start.model
            ttft = time.perf_counter() - t0
            reason = decision.reason if model == decision.model else f"{decision.reason} fallback={model}"
            trace = self._trace_headers(rid, model, reason, decision)
            headers = [_SSE, (b"cache-control", b"no-cache"), *trace]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            usage_raw: dict[str, Any] | None = None
            conv = OpenAIToAnthropicStream(model, rid, _input_tokens(ctx)) if anthropic else None
            error: str | None = None
            t_up = time.perf_counter()

            collected: list[dict[str, Any]] | None = (
                [] if self.guard is not None and self.guard.cache else None
            )

            def encode(chunk: dict[str, Any]) -> bytes:
                nonlocal usage_raw
                if collected is not None:
                    collected.append(chunk)
                if chunk.get("usage"):
                    usage_raw = chunk["usage"]
                if conv is not None:
                    return b"".join(conv.feed(chunk))
                chunk.pop(PROMPT_TOKENS, None)
                if chunk.pop("_usage_only", False):
                    return b""
                return b"data: " + orjson.dumps(chunk) + b"\n\n"

            try:
                first = b"".join(encode(c) for c in start.first)
                if first:
                    await send({"type": "http.response.body", "body": first, "more_body": True})
                async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                    async for batch in start.rest:
                        data = b"".join([encode(chunk) for chunk in batch])
                        if data:
                            await send({"type": "http.response.body", "body": data, "more_body": True})
                self.executor.stream_done(model, True)
            except (BackendError, TimeoutError) as e:
                error = e.message if isinstance(e, BackendError) else "request deadline exceeded mid-stream"
                self.executor.stream_done(model, False)
                with contextlib.suppress(Exception):
                    await start.rest.aclose()  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                # client disconnected: close the upstream stream now, then let the caller record it
                with contextlib.suppress(Exception):
                    await asyncio.shield(start.rest.aclose())  # type: ignore[attr-defined]
                raise
        finally:
            start.release()  # the model's concurrency slot, however the stream ended
        usage = self._cost(model, usage_raw)
        if reservation is not None:
            self.budgets.commit(reservation, usage[2])  # type: ignore[union-attr]
        if collected is not None and error is None:
            from llmroute.cache import assemble_stream

            self.guard.store(ctx, assemble_stream(collected))
        if conv is not None:
            tail = b"".join(conv.finish()) if error is None else OpenAIToAnthropicStream.error(error)
        else:
            tail = (
                _DONE
                if error is None
                else (
                    b"data: "
                    + orjson.dumps(
                        {
                            "error": {
                                "message": error,
                                "type": "upstream_error",
                                "param": None,
                                "code": "stream_interrupted",
                            }
                        }
                    )
                    + b"\n\n"
                    + _DONE
                )
            )
        watch.done = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        attempts = [*start.attempts]
        attempts[-1] = Attempt(
            model, error is None, attempts[-1].latency_s + (time.perf_counter() - t_up), error
        )
        self._finish(
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
        )

    async def _cached(
        self,
        send: Send,
        ctx: RequestContext,
        decision: RouteDecision,
        rid: str,
        t0: float,
        reservation: Any,
        anthropic: bool,
        stream: bool,
    ) -> None:
        """Answer from the response cache (issue 4): the stored response, or its SSE replay."""
        from llmroute.cache import replay_sse

        resp = ctx.extra["cache_hit"].response
        if reservation is not None:
            self.budgets.release(reservation)  # type: ignore[union-attr]
        headers = self._trace_headers(rid, decision.model, decision.reason, decision)
        if stream:
            events = list(replay_sse(resp))
            if anthropic:
                conv = OpenAIToAnthropicStream(decision.model, rid, _input_tokens(ctx))
                data = b"".join(b"".join(conv.feed(orjson.loads(e[6:]))) for e in events[:-1]) + b"".join(
                    conv.finish()
                )
            else:
                data = b"".join(events)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [_SSE, (b"cache-control", b"no-cache"), *headers],
                }
            )
            await send({"type": "http.response.body", "body": data, "more_body": False})
        else:
            out = openai_to_anthropic_response(resp, decision.model) if anthropic else resp
            await self._send(send, 200, orjson.dumps(out), [_JSON, *headers])
        self._finish(
            rid=rid,
            ctx=ctx,
            decision=decision,
            model=decision.model,
            status=200,
            t0=t0,
            attempts=[],
            stream=stream,
            response=resp.get("choices"),
        )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = self._new_id()
        try:
            body = await self._read_json(scope, receive)
            if isinstance(body, dict) and "messages" not in body and isinstance(body.get("prompt"), str):
                body["messages"] = [{"role": "user", "content": body["prompt"]}]
            _validate_chat(body)
            _ctx, decision, _ = await self._prepare(scope, body, rid, "route")
        except GatewayError as e:
            if e.status in (401, 403, 429):
                self.metrics.observe_rejection(e.status, e.code or e.type, e.key_id)
            await self._error(send, e, self._rejected_headers(rid, None, e))
            return
        self.metrics.observe_decision(
            decision.model if decision.model in self.engine.models else "",
            decision.alias if decision.alias in self.engine.plans else None,
        )
        out = {
            "id": rid,
            "object": "llmroute.decision",
            "model": decision.model,
            "alias": decision.alias,
            "router": decision.router,
            "reason": decision.reason,
            "ranked": [
                {**c, "base_url": self.engine.models[c["model"]].base_url} for c in decision.candidates()
            ],
            **decision.summary(),
        }
        await self._send(
            send,
            200,
            orjson.dumps(out),
            [_JSON, *self._trace_headers(rid, decision.model, decision.reason, decision)],
        )

    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._read_json(scope, receive)
            if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
                raise _bad(
                    "'request_id' is required (the x-llmroute-request-id of a response).", "request_id"
                )
            if self.auth.enabled:
                self.auth.authenticate(self._headers(scope))
            outcome = {k: v for k, v in body.items() if k != "request_id"}
            q = outcome.get("quality")
            if q is not None and (not isinstance(q, int | float) or isinstance(q, bool) or not 0 <= q <= 1):
                raise _bad("'quality' must be a number in [0, 1].", "quality")
            if not outcome:
                raise _bad('Give an outcome, e.g. {"request_id": ..., "quality": 1.0}.')
            found = await self.store.aattach_feedback(body["request_id"], outcome) if self.store else False
            if not found:
                raise GatewayError(
                    404,
                    f"Unknown request id {body['request_id'][:64]!r}.",
                    code="not_found",
                    param="request_id",
                )
            for hook in self.feedback_hooks:
                await hook(body["request_id"], outcome)
        except GatewayError as e:
            await self._error(send, e)
            return
        await self._send(send, 200, b'{"ok":true}', [_JSON])

    def _models_for(self, key: Any) -> bytes:
        """The /v1/models body: every alias and model, or only those API key `key` may use."""
        data = self._model_list if key is None else [m for m in self._model_list if key.may_use(m["id"])]
        return orjson.dumps({"object": "list", "data": data})

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /v1/models. With API keys configured the caller must present one (401 otherwise)
        and sees only the aliases and models its key may use (its `aliases` allow-list)."""
        body = self._models_body
        if self.auth.enabled:
            try:
                key = self.auth.authenticate(self._headers(scope))
            except GatewayError as e:
                self.metrics.observe_rejection(e.status, e.code or e.type, None)
                await self._error(send, e)
                return
            if key is not None and key.allowed is not None:
                cached = self._models_by_key.get(key.id)
                if cached is None:
                    cached = self._models_by_key[key.id] = self._models_for(key)
                body = cached
        await self._send(send, 200, body, [_JSON])

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        br = {n: b.state for n, b in self.executor.breakers.items()}
        body = {
            "status": "ok",
            "models": len(self.backends),
            "aliases": sorted(self.engine.plans),
            "breakers": br,
        }
        await self._send(send, 200, orjson.dumps(body), [_JSON])

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        data, ctype = self.metrics.render()
        await self._send(send, 200, data, [(b"content-type", ctype.encode())])

    async def _openapi_ep(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._send(send, 200, self._openapi, [_JSON])
