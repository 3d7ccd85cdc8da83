"""The gateway's operations endpoints: the routing decision alone, feedback, the model list,
health, Prometheus metrics and the OpenAPI document.

    POST /v1/route        decision only: chosen model, ranked candidates, reason (no upstream call)
    POST /v1/feedback     attach an outcome to a request id
    GET  /v1/models       aliases and models (with keys: those the caller's key may use)
    GET  /healthz, GET /metrics (Prometheus), GET /openapi.json

`OpsEndpoints(gateway).routes()` gives the `Gateway` its handlers for these paths; they use the
gateway's routing engine, auth, store and metrics, and the shared pipeline's `Gateway.prepare`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.api_openai import validate_chat
from llmroute.gateway.asgi import (
    JSON,
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
from llmroute.gateway.auth import GatewayError
from llmroute.gateway.backends.http import public_url

if TYPE_CHECKING:
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import GatewayConfig
    from llmroute.gateway.routing import RoutingEngine

__all__ = ["OpsEndpoints", "model_list", "openapi_document"]


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


def model_list(config: GatewayConfig, engine: RoutingEngine) -> list[dict[str, Any]]:
    """The /v1/models entries: every alias (its router, effective policy, accepted model suffixes
    and candidates), then every model (provider, router column, prices, context window)."""
    return [
        {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "llmroute",
            "llmroute": {
                "kind": "alias",
                "router": a.router,
                **engine.alias_info(name),  # effective policy, accepted model suffixes
                "candidates": engine.plans[name].models,
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


class OpsEndpoints:
    """The operations endpoints of one `Gateway` (see the module docstring). The model list and
    the OpenAPI document are rendered once, here; a key's own model list on its first request."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.model_list = model_list(gateway.config, gateway.engine)
        self._models_body = self._models_for(None)
        self._models_by_key: dict[str, bytes] = {}
        self._openapi = orjson.dumps(openapi_document())

    def routes(self) -> dict[tuple[str, str], Handler]:
        """(method, path) -> handler, for the gateway's dispatch table."""
        return {
            ("POST", "/v1/route"): self.route,
            ("POST", "/v1/feedback"): self.feedback,
            ("GET", "/v1/models"): self.models,
            ("GET", "/models"): self.models,
            ("GET", "/healthz"): self.health,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/openapi.json"): self.openapi,
        }

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/route: the decision a chat request would get (`prompt` stands for one user
        message), with each ranked candidate's base URL (scheme://host[:port]/path only: no
        user:password, no query string); no upstream call."""
        gw = self.gw
        rid = gw.new_id()
        try:
            body = await read_json(scope, receive, gw.max_body, gw.max_depth)
            if isinstance(body, dict) and "messages" not in body and isinstance(body.get("prompt"), str):
                body["messages"] = [{"role": "user", "content": body["prompt"]}]
            validate_chat(body)
            _ctx, decision, _ = await gw.prepare(scope, body, rid, "route")
        except GatewayError as e:
            if e.status in (401, 403, 429):
                gw.metrics.observe_rejection(e.status, e.code or e.type, e.key_id)
            await send_error(send, e, rejected_headers(rid, None, e))
            return
        engine = gw.engine
        gw.metrics.observe_decision(
            decision.model if decision.model in engine.models else "",
            decision.alias if decision.alias in engine.plans else None,
        )
        out = {
            "id": rid,
            "object": "llmroute.decision",
            "model": decision.model,
            "alias": decision.alias,
            "router": decision.router,
            "reason": decision.reason,
            "ranked": [
                {**c, "base_url": public_url(engine.models[c["model"]].base_url)}
                for c in decision.candidates()
            ],
            **decision.summary(),
        }
        await send_response(
            send,
            200,
            orjson.dumps(out),
            [JSON, *trace_headers(rid, decision.model, decision.reason, decision)],
        )

    async def feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/feedback: merge an outcome (e.g. `quality` in [0, 1]) into a request's trace
        record, then tell the feedback hooks; 404 for an unknown request id. With API keys
        configured, only the key that made the request may give its feedback (another key's
        request id is answered 404 like an unknown one: ids of other tenants are not confirmed)."""
        gw = self.gw
        try:
            body = await read_json(scope, receive, gw.max_body, gw.max_depth)
            if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
                raise bad_request(
                    "'request_id' is required (the x-llmroute-request-id of a response).", "request_id"
                )
            owner = None
            if gw.auth.enabled:
                key = gw.auth.authenticate(request_headers(scope))
                owner = key.id if key is not None else None
            outcome = {k: v for k, v in body.items() if k != "request_id"}
            q = outcome.get("quality")
            if q is not None and (not isinstance(q, int | float) or isinstance(q, bool) or not 0 <= q <= 1):
                raise bad_request("'quality' must be a number in [0, 1].", "quality")
            if not outcome:
                raise bad_request('Give an outcome, e.g. {"request_id": ..., "quality": 1.0}.')
            found = await gw.store.aattach_feedback(body["request_id"], outcome, owner) if gw.store else False
            if not found:
                raise GatewayError(
                    404,
                    f"Unknown request id {body['request_id'][:64]!r}.",
                    code="not_found",
                    param="request_id",
                )
            for hook in gw.feedback_hooks:
                await hook(body["request_id"], outcome)
        except GatewayError as e:
            await send_error(send, e)
            return
        await send_response(send, 200, b'{"ok":true}', [JSON])

    def _models_for(self, key: Any) -> bytes:
        """The /v1/models body: every alias and model, or only those API key `key` may use."""
        data = self.model_list if key is None else [m for m in self.model_list if key.may_use(m["id"])]
        return orjson.dumps({"object": "list", "data": data})

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /v1/models. With API keys configured the caller must present one (401 otherwise)
        and sees only the aliases and models its key may use (its `aliases` allow-list)."""
        gw = self.gw
        body = self._models_body
        if gw.auth.enabled:
            try:
                key = gw.auth.authenticate(request_headers(scope))
            except GatewayError as e:
                gw.metrics.observe_rejection(e.status, e.code or e.type, None)
                await send_error(send, e)
                return
            if key is not None and key.allowed is not None:
                cached = self._models_by_key.get(key.id)
                if cached is None:
                    cached = self._models_by_key[key.id] = self._models_for(key)
                body = cached
        await send_response(send, 200, body, [JSON])

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /healthz: liveness, the number of models, the aliases and each breaker's state."""
        gw = self.gw
        br = {n: b.state for n, b in gw.executor.breakers.items()}
        body = {
            "status": "ok",
            "models": len(gw.backends),
            "aliases": sorted(gw.engine.plans),
            "breakers": br,
        }
        await send_response(send, 200, orjson.dumps(body), [JSON])

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /metrics: the Prometheus exposition."""
        data, ctype = self.gw.metrics.render()
        await send_response(send, 200, data, [(b"content-type", ctype.encode())])

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /openapi.json: `openapi_document()`."""
        await send_response(send, 200, self._openapi, [JSON])
