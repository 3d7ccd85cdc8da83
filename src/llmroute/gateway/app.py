"""The gateway ASGI application: OpenAI- and Anthropic-compatible endpoints in front of routed backends.

A raw ASGI app (no framework on the hot path; orjson; one pooled upstream `HTTPClient` created
at startup). Endpoints::

    POST /v1/chat/completions   OpenAI chat (stream and non-stream); unknown fields pass through
    POST /v1/messages           Anthropic Messages in, routed to any backend (stream too)
    POST /v1/responses          OpenAI Responses in (translated to chat), routed like chat (stream too)
    POST /v1/embeddings, /v1/completions   passed through to a named model (budgets, traces)
    POST /v1/messages/count_tokens         Anthropic token count, from the gateway's counter
    POST /v1/route              decision only: chosen model, ranked candidates, reason
    POST /v1/feedback           attach an outcome to a request id
    GET  /v1/models             aliases and models (with keys: those the caller's key may use)
    GET  /healthz, GET /metrics (Prometheus), GET /openapi.json

The code is split by API family over one shared request pipeline:

- this module: `Gateway` (construction, dispatch) and the pipeline every completion runs,
  whatever its API: parse + validate -> auth (key, permission, rate) ->
  `RoutingEngine.decide` (hooks, then the router) -> budget reservation -> response cache or
  `Executor` (retries, fallback, breakers, deadline) -> response with `x-llmroute-request-id`,
  `x-llmroute-model`, `x-llmroute-reason` -> metrics and a trace record queued to the store (off
  the hot path). A client disconnect cancels the upstream call.
- `api_openai` / `api_anthropic`: the `ApiFamily` of chat completions / Anthropic Messages:
  request validation (and translation to the OpenAI chat body every backend takes), error bodies,
  response and stream shapes.
- `app_lifecycle`: `Gateway.startup` / `shutdown` (store, budgets, upstream client, backends).
- `api_ops`: route, feedback, models, health, metrics and the OpenAPI document.
- `streaming`: the streamed-response relay (delivered-text billing) and client-disconnect handling.
- `billing`: `Pricing`, the budget hold before a call and the bill after it.
- `asgi`: the plumbing they share (responses, JSON bodies, errors, trace headers).

Build with `Gateway(config)` (loads routers and backends; `routers=` injects router objects) and
serve it with any ASGI server (`llmroute serve` uses uvicorn with uvloop + httptools).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from llmroute.gateway.admin import AdminAuth, KeyManager
from llmroute.gateway.api_anthropic import ANTHROPIC_MESSAGES
from llmroute.gateway.api_openai import OPENAI_CHAT, check_output_fits
from llmroute.gateway.api_ops import OpsEndpoints, openapi_document
from llmroute.gateway.api_passthrough import PassThrough
from llmroute.gateway.api_responses import OPENAI_RESPONSES
from llmroute.gateway.app_lifecycle import LifecycleMixin
from llmroute.gateway.asgi import (
    JSON,
    SSE,
    ErrorLog,
    Handler,
    Receive,
    Scope,
    Send,
    read_json,
    rejected_headers,
    request_headers,
    send_error,
    send_response,
    trace_headers,
)
from llmroute.gateway.auth import Authenticator, BudgetManager, GatewayError
from llmroute.gateway.backends import Backend, BackendError, make_backends
from llmroute.gateway.backends.http import HTTPClient
from llmroute.gateway.billing import Pricing
from llmroute.gateway.config import GatewayConfig
from llmroute.gateway.learning import Learning
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
from llmroute.gateway.streaming import DISCONNECT_EXT, Disconnect, relay_stream, settle_anyway
from llmroute.gateway.telemetry import Telemetry
from llmroute.gateway.tokens import response_text

__all__ = ["ApiFamily", "Gateway", "StreamEncoder", "openapi_document"]

log = logging.getLogger("llmroute.gateway")

# the former private names of `llmroute.gateway.streaming.Disconnect` and its scope extension
_Disconnect = Disconnect
_DISCONNECT_EXT = DISCONNECT_EXT


class StreamEncoder(Protocol):
    """One streamed response in an API family's wire format."""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The bytes for one OpenAI chunk from the backend (b"" for none)."""
        ...

    def finish(self) -> bytes:
        """The end of a complete stream."""
        ...

    def fail(self, message: str) -> bytes:
        """The end of a stream the upstream broke off with `message`."""
        ...


class ApiFamily(Protocol):
    """What differs between the completion APIs that share the request pipeline: how a request
    becomes the OpenAI chat body that is routed and executed, and how answers and errors look.
    Implemented by `api_openai.OPENAI_CHAT` and `api_anthropic.ANTHROPIC_MESSAGES`."""

    #: `RequestContext.endpoint` of the family's requests ("chat", "messages")
    endpoint: str

    def parse(self, body: Any) -> dict[str, Any]:
        """Validate the decoded JSON body (`GatewayError` 400) and return the OpenAI chat request."""
        ...

    def error_body(self, e: GatewayError) -> bytes:
        """The JSON error body for `e`."""
        ...

    def response(self, resp: dict[str, Any], model: str) -> dict[str, Any]:
        """The answer to send for the backend's chat completion `resp` from `model`."""
        ...

    def stream(self, model: str, rid: str, ctx: RequestContext) -> StreamEncoder:
        """The encoder of one streamed response from `model` to request `rid`."""
        ...

    def replay(self, events: list[bytes], model: str, rid: str, ctx: RequestContext) -> bytes:
        """The whole stream body for a cached answer given as OpenAI SSE events (`[DONE]` last)."""
        ...


_NO_LEARNING = (None, None, None)


def _learned(learning: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The trace's propensity, explored and learner columns of a learning decision."""
    return learning["propensity"], learning["explored"], learning["features"]


def _from_backend(e: BackendError) -> GatewayError:
    """The client's error for a failed upstream call. A 5xx that a retry cannot cure (a model
    without credentials: 501; upstream rejecting the gateway's own key) says
    `x-should-retry: false`, which the official openai/anthropic clients obey (they retry every
    other 5xx)."""
    headers = {"x-should-retry": "false"} if e.status >= 500 and not e.retryable else None
    return GatewayError(e.status, e.message, type=e.etype, code=e.code, param=e.param, headers=headers)


class Gateway(LifecycleMixin):
    """The ASGI app. See the module docstring; `startup` and `shutdown` are in
    `llmroute.gateway.app_lifecycle`."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        routers: dict[str, RouterLike] | None = None,
        backends: dict[str, Backend] | None = None,
        metrics: GatewayMetrics | None = None,
        shared: Gateway | None = None,
    ) -> None:
        """`shared`: the served gateway whose process-wide parts (shared state, keys and budgets,
        admin, metrics, dashboard, telemetry) this one reuses: a runtime built by a config reload
        (`llmroute.gateway.reload`)."""
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
        # `state: redis://...`: budgets, rate limits and breakers shared by replicas (gateway.state)
        self.state: Any = shared.state if shared is not None else None
        if config.state and shared is None:
            from llmroute.gateway.state import RedisState, register_metrics

            self.state = RedisState(config.state, on_error=config.on_state_error)
            register_metrics(self.state, self.metrics.registry)
        if self.guard is not None and shared is None:  # a reload's runtime: at the swap
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
            on_deployment_breaker=self.metrics.set_deployment_breaker,
            state=self.state,
        )
        self.auth = shared.auth if shared is not None else Authenticator(config.keys, state=self.state)
        # online learners of the aliases with `learning: {enabled: true}` (llmroute.gateway.learning)
        self.learning = Learning.create(config, self.engine)
        if self.learning is not None:
            self.learning.metrics = self.metrics
        self.sessions: Any = None  # sticky sessions and implicit outcomes (llmroute.gateway.sticky)
        if any(a.sticky is not None or a.implicit is not None for a in config.aliases.values()):
            from llmroute.gateway.sticky import attach_sessions

            self.sessions = attach_sessions(self)
        # admin API and master key; keys of the config file + the key store, kept current per request
        self.admin_auth = AdminAuth.from_config(config)
        self.keyman = shared.keyman if shared is not None else KeyManager(self)
        # the YAML file (POST /admin/v1/reload re-reads it)
        self.config_path: str | None = shared.config_path if shared is not None else None
        self.budgets: BudgetManager | None = None
        self.store: Any = None
        self.http: HTTPClient | None = None
        self.feedback_hooks: list[Callable[[str, dict[str, Any]], Awaitable[None]]] = []
        # prices and token counters: budget holds and bills (llmroute.gateway.billing)
        self.pricing = Pricing(config, self.engine)
        # its former name on the gateway (tests call it to check a stream's bill)
        self._estimated_cost = self.pricing.estimated_cost
        self.max_body = srv.max_body_bytes
        self.max_depth = srv.max_json_depth
        self.errors = ErrorLog(log)  # unexpected exceptions: first of each kind per minute, then a count
        self.timeout_s = srv.request_timeout_s
        self._ops = OpsEndpoints(self)  # route, feedback, models, health, metrics, openapi
        # aliases with a `cascade:` block: cheap model first, escalate on the verifier (issue 14)
        self.cascades: dict[str, Any] = {}
        if any(a.cascade is not None for a in config.aliases.values()):
            from llmroute.gateway.cascade import Cascade

            self.cascades = {n: Cascade(self, n, a.cascade) for n, a in config.aliases.items() if a.cascade}
        self._started = False
        # request ids: 128 random bits each (unguessable: feedback and traces are keyed by them);
        # one getrandom call, ~0.6 us. Not a buffer of random bytes: forked workers would share it.
        self.new_id: Callable[[], str] = lambda: os.urandom(16).hex()
        from llmroute.gateway.ui.dashboard import Dashboard

        self.dashboard = shared.dashboard if shared is not None else Dashboard(self)  # the /ui pages
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/chat/completions"): self._chat,
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/responses"): self._responses,
            **PassThrough(self).routes(),  # embeddings, completions, count_tokens
            **self._ops.routes(),
            **self.keyman.routes(),
            **self.dashboard.routes(),
        }
        # model or alias -> its candidates' (name, context window), where any window is configured
        cands = {m: [m] for m in self.engine.models} | {a: p.models for a, p in self.engine.plans.items()}
        windows = {n: [(m, self.engine.models[m].context_window) for m in ms] for n, ms in cands.items()}
        self._windows = {n: w for n, w in windows.items() if any(x is not None for _, x in w)}
        # OpenTelemetry spans and metrics over OTLP (config `telemetry:`); None: off, one check per request
        self.telemetry = shared.telemetry if shared is not None else Telemetry.create(config)
        if self.telemetry is not None:
            tel = self.telemetry
            self._routes = {(m, p): tel.wrap(m, p, h) for (m, p), h in self._routes.items()}
        self._allow: dict[str, str] = {}  # path -> its `Allow` header (405 answers)
        for method, path in sorted(self._routes):
            self._allow[path] = f"{self._allow[path]}, {method}" if path in self._allow else method
        # hot reload (llmroute.gateway.reload): requests go to `_live` (this gateway until a reload
        # swaps in a new runtime); `inflight` counts this runtime's requests so that a replaced one
        # is closed once they are done
        from llmroute.gateway.reload import router_signatures

        self._live: Gateway = self
        self.inflight = 0
        self.retired = False
        self.router_sigs = router_signatures(config)

    @property
    def live(self) -> Gateway:
        """The runtime serving new requests: this gateway, or the one its last config reload built."""
        return self._live

    # ---- lifecycle: startup() and shutdown() are LifecycleMixin's (llmroute.gateway.app_lifecycle)

    # ---- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            km = self.keyman
            if km.generation.value != km.seen:  # keys changed (admin API, any worker): reload first
                await km.refresh()
            rt = self._live  # the runtime this request starts and finishes on (config reloads)
            handler = rt._routes.get((scope["method"], scope["path"]))
            if handler is None and scope["path"].startswith("/admin/v1/"):
                handler = km.handle  # /admin/v1/keys/{id}
            if handler is None:
                path = scope["path"]
                allow = rt._allow.get(path)
                if allow is not None:
                    err = GatewayError(
                        405,
                        f"Method {scope['method']} not allowed on {path}; use {allow}.",
                        code="method_not_allowed",
                        headers={"Allow": allow},
                    )
                else:
                    err = GatewayError(404, f"No endpoint {path}. See /openapi.json.", code="not_found")
                # the Messages API's paths answer in its own error shape
                family = ANTHROPIC_MESSAGES if path.startswith("/v1/messages") else None
                await send_error(send, err, body=family.error_body(err) if family else None)
                return
            rt.inflight += 1
            try:
                await handler(scope, receive, send)
            except Exception as e:  # a bug, not the client's fault: log it, answer JSON if still possible
                rt.errors.exception(e, "internal error on %s %s", scope["method"], scope["path"])
                with contextlib.suppress(Exception):
                    await send_error(
                        send,
                        GatewayError(
                            500,
                            "Internal gateway error (logged).",
                            type="server_error",
                            code="internal_error",
                        ),
                    )
            finally:
                rt.inflight -= 1
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

    # ---- the shared pipeline -----------------------------------------------------------------
    async def prepare(
        self, scope: Scope, body: dict[str, Any], rid: str, endpoint: str
    ) -> tuple[RequestContext, RouteDecision, Any]:
        """auth -> decide, for the OpenAI chat request `body` (the model name's policy suffix and the
        `llmroute` field applied); shared by chat, messages and /v1/route. Returns the request
        context, the decision and the caller's API key (None without keys); raises `GatewayError`."""
        headers = request_headers(scope) if (self.auth.enabled or self.engine.hooks or self.sessions) else {}
        try:  # "alias@0.3", "alias@tradeoff=50": per-request policy in the model name
            model, policy = self.engine.split_model(body["model"])
        except GatewayError:
            if self.auth.enabled:
                self.auth.authenticate(headers)  # an unknown caller gets its 401 first
            raise
        key = self.auth.admit(headers, model) if self.auth.enabled else None
        policy.update(parse_request_policy(body.pop("llmroute", None)))  # 400 on unknown fields
        windows = self._windows.get(model)
        if windows is not None:
            check_output_fits(body, windows)  # 400: max_tokens fits no candidate's window
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
        if self.learning is not None:  # the alias's online learner may explore (propensity logged)
            self.learning.decide(ctx, decision)
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
        """Metrics + trace record (both queued, off the hot path), and OpenTelemetry spans when on."""
        if self.telemetry is not None:
            try:
                self.telemetry.record(
                    rid=rid,
                    ctx=ctx,
                    decision=decision,
                    model=model,
                    status=status,
                    t0=t0,
                    attempts=attempts,
                    usage=usage,
                    stream=stream,
                    ttft=ttft,
                    error=error,
                    response=response,
                    extra=extra,
                )
            except Exception as e:  # telemetry never fails a request
                self.errors.exception(e, "OpenTelemetry export of request %s failed", rid)
        total = time.perf_counter() - t0
        upstream = sum(a.latency_s for a in attempts)
        alias = decision.alias if decision is not None else None
        fails = [a for a in attempts if not a.ok]
        m = self.metrics
        for a in fails:
            m.observe_error(a.model, alias, kind=str(a.status or "error"))
        # a cascade's escalations are not fallbacks (its steps are in the trace's extra.cascade)
        if decision is not None and model and model != decision.model and not (extra and "cascade" in extra):
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
            if self.sessions is not None and ctx is not None:
                self.sessions.finished(ctx, model, status, response)
            return
        trace = self.config.trace
        # `extra`: a request refused before a decision existed (e.g. blocked by a rule or guard)
        rec_extra = decision.extra if decision is not None and decision.extra else None
        if extra:
            rec_extra = {**rec_extra, **extra} if rec_extra else extra
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
                *(
                    _NO_LEARNING
                    if decision is None or decision.learning is None
                    else _learned(decision.learning)
                ),
            )
        )
        if self.sessions is not None and ctx is not None:  # after the row: its outcomes land on it
            self.sessions.finished(ctx, model, status, response)

    async def reject(
        self,
        send: Send,
        e: GatewayError,
        rid: str,
        ctx: RequestContext | None,
        decision: RouteDecision | None,
        t0: float,
        error_body: bytes | None = None,
    ) -> None:
        """Answer a request refused before any upstream call (bad body, auth, rate, budget, rule):
        its trace row, the rejection metric for 401/403/429, and the error response
        (`error_body`: the API family's own error shape; None: OpenAI's)."""
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
        await send_error(send, e, rejected_headers(rid, decision, e), error_body)

    async def _upstream_failed(
        self,
        send: Send,
        e: BackendError,
        rid: str,
        ctx: RequestContext,
        decision: RouteDecision,
        t0: float,
        reservation: Any,
        api: ApiFamily,
        watch: Disconnect,
        *,
        stream: bool = False,
    ) -> None:
        """Every candidate failed before a response started: release the budget, trace, answer."""
        if reservation is not None:
            await self.budgets.release_async(reservation)  # type: ignore[union-attr]
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
        await send_error(
            send, ge, trace_headers(rid, decision.model, decision.reason, decision), api.error_body(ge)
        )

    # ---- completion endpoints: one pipeline, one API family each ----------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, OPENAI_CHAT)

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, ANTHROPIC_MESSAGES)

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, OPENAI_RESPONSES)

    async def _completion(self, scope: Scope, receive: Receive, send: Send, api: ApiFamily) -> None:
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        rid = self.new_id()
        ctx: RequestContext | None = None
        decision: RouteDecision | None = None
        reservation = None
        watch: Disconnect | None = None
        attempts: list[Attempt] = []
        try:
            try:
                body = api.parse(await read_json(scope, receive, self.max_body, self.max_depth))
                ctx, decision, key = await self.prepare(scope, body, rid, api.endpoint)
                cascade = self.cascades.get(decision.alias) if decision.alias else None
                if key is not None and self.budgets is not None:
                    hold = (
                        cascade.worst_cost(ctx, decision, body)
                        if cascade is not None
                        else self.pricing.max_cost(decision, body)
                    )
                    reservation = await self.budgets.reserve_async(key, hold)
            except GatewayError as e:
                await self.reject(send, e, rid, ctx, decision, t0, api.error_body(e))
                return
            watch = Disconnect(scope, receive)
            if ctx.extra.get("cache_hit") is not None:
                await self._cached(send, ctx, decision, rid, t0, reservation, api, bool(body.get("stream")))
                return
            if cascade is not None:  # the alias answers in steps (llmroute.gateway.cascade)
                run = cascade.stream if body.get("stream") else cascade.complete
                await run(send, body, ctx, decision, rid, t0, deadline, reservation, api, watch)
                return
            if body.get("stream"):
                await relay_stream(
                    self, send, body, ctx, decision, rid, t0, deadline, reservation, api, watch
                )
                return
            try:
                model, resp, attempts = await self.executor.complete(decision.ranked, body, deadline)
            except BackendError as e:
                await self._upstream_failed(send, e, rid, ctx, decision, t0, reservation, api, watch)
                return
            source = "usage" if resp.get("usage") else "estimate"
            usage = (
                self.pricing.cost(model, resp["usage"])
                if source == "usage"
                else self.pricing.estimated_cost(model, body, response_text(resp))
            )
            if reservation is not None:
                await self.budgets.commit_async(reservation, usage[2])  # type: ignore[union-attr]
            if self.guard is not None:
                self.guard.store(ctx, resp)
            reason = decision.reason if model == decision.model else f"{decision.reason} fallback={model}"
            out = api.response(resp, model)
            watch.done = True
            headers = trace_headers(rid, model, reason, decision)
            await send_response(send, 200, orjson.dumps(out), [JSON, *headers])
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
                extra={"cost_source": source},
            )
        except asyncio.CancelledError:
            # client went away: the upstream call was cancelled with us
            if reservation is not None and self.budgets is not None:
                await settle_anyway(self.budgets.release_async(reservation))
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
        except Exception as e:  # a bug, not the client's fault: a 500 with a trace row and a metric
            if reservation is not None and self.budgets is not None:
                self.budgets.release(reservation)  # before the answer: the client may retry at once
            await self._internal_error(send, e, rid, ctx, decision, t0, attempts, api, scope)
        finally:
            if reservation is not None and self.budgets is not None:
                self.budgets.release(reservation)  # every exit path: a no-op once committed
            if watch is not None:
                watch.stop()

    async def _internal_error(
        self,
        send: Send,
        e: Exception,
        rid: str,
        ctx: RequestContext | None,
        decision: RouteDecision | None,
        t0: float,
        attempts: list[Attempt],
        api: ApiFamily,
        scope: Scope,
    ) -> None:
        """An unexpected exception in the pipeline: log it (rate-limited per kind), record a 500
        (trace row, metric) and answer it unless the response had started already."""
        self.errors.exception(e, "internal error on %s %s (request %s)", scope["method"], scope["path"], rid)
        ge = GatewayError(500, "Internal gateway error (logged).", type="server_error", code="internal_error")
        with contextlib.suppress(Exception):  # the recording step may be what failed
            self._finish(
                rid=rid,
                ctx=ctx,
                decision=decision,
                model="",
                status=500,
                t0=t0,
                attempts=attempts,
                error=f"internal error: {type(e).__name__}",
            )
        with contextlib.suppress(Exception):  # fails if the response had started: nothing more to say
            await send_error(send, ge, rejected_headers(rid, decision, ge), api.error_body(ge))

    async def _cached(
        self,
        send: Send,
        ctx: RequestContext,
        decision: RouteDecision,
        rid: str,
        t0: float,
        reservation: Any,
        api: ApiFamily,
        stream: bool,
    ) -> None:
        """Answer from the response cache (issue 4): the stored response, or its SSE replay."""
        from llmroute.cache import replay_sse

        resp = ctx.extra["cache_hit"].response
        if reservation is not None:
            await self.budgets.release_async(reservation)  # type: ignore[union-attr]
        headers = trace_headers(rid, decision.model, decision.reason, decision)
        if stream:
            data = api.replay(list(replay_sse(resp)), decision.model, rid, ctx)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [SSE, (b"cache-control", b"no-cache"), *headers],
                }
            )
            await send({"type": "http.response.body", "body": data, "more_body": False})
        else:
            out = api.response(resp, decision.model)
            await send_response(send, 200, orjson.dumps(out), [JSON, *headers])
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
