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

import re
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway import schemas as S
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
from llmroute.gateway.outcomes import EXPLICIT, PENDING, UNKNOWN, record_or_defer, score_from_feedback

if TYPE_CHECKING:
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import GatewayConfig
    from llmroute.gateway.routing import RoutingEngine

__all__ = ["OpsEndpoints", "model_list", "openapi_document", "validate_route"]


#: (path, method, summary, request schema or None, 2xx schema, 2xx media types, error schema)
_OPERATIONS: tuple[tuple[str, str, str, Any, Any, tuple[str, ...], Any], ...] = (
    (
        "/v1/chat/completions",
        "post",
        "Chat completion, routed when model is an alias (stream: text/event-stream)",
        S.ChatRequest,
        S.ChatCompletion,
        ("application/json", "text/event-stream"),
        S.OpenAIError,
    ),
    (
        "/v1/messages",
        "post",
        "Anthropic Messages API, routed to any backend (stream: text/event-stream)",
        S.MessagesRequest,
        S.AnthropicReply,
        ("application/json", "text/event-stream"),
        S.AnthropicError,
    ),
    (
        "/v1/responses",
        "post",
        "OpenAI Responses API, translated to chat and routed like it (stream: text/event-stream)",
        S.ResponsesRequest,
        S.ResponseObject,
        ("application/json", "text/event-stream"),
        S.OpenAIError,
    ),
    (
        "/v1/embeddings",
        "post",
        "Embeddings, passed through to the named model (not routed)",
        S.EmbeddingsRequest,
        S.Embeddings,
        ("application/json",),
        S.OpenAIError,
    ),
    (
        "/v1/completions",
        "post",
        "Text completions, passed through to the named model (stream: text/event-stream)",
        S.CompletionsRequest,
        S.TextCompletion,
        ("application/json", "text/event-stream"),
        S.OpenAIError,
    ),
    (
        "/v1/messages/count_tokens",
        "post",
        "Anthropic token count of a Messages request, from the gateway's token counter",
        S.CountTokensRequest,
        S.TokenCount,
        ("application/json",),
        S.AnthropicError,
    ),
    (
        "/v1/route",
        "post",
        "Routing decision only (no upstream call)",
        S.RouteRequest,
        S.Decision,
        ("application/json",),
        S.OpenAIError,
    ),
    (
        "/v1/feedback",
        "post",
        "Attach an outcome (quality in [0, 1], any other fields) to a request id",
        S.FeedbackRequest,
        S.FeedbackAck,
        ("application/json",),
        S.OpenAIError,
    ),
    (
        "/v1/models",
        "get",
        "Aliases and models the caller's API key may use",
        None,
        S.ModelList,
        ("application/json",),
        S.OpenAIError,
    ),
    ("/healthz", "get", "Liveness and breaker states", None, S.Health, ("application/json",), S.OpenAIError),
    ("/metrics", "get", "Prometheus metrics", None, None, ("text/plain",), S.OpenAIError),
    ("/openapi.json", "get", "This document", None, None, ("application/json",), S.OpenAIError),
)
#: a routed alias's per-request policy suffixes, as `RoutingEngine.split_model` accepts them
_TRADEOFF_SUFFIX = r"@tradeoff=[0-9]{1,4}(?:\.[0-9]{1,4})?"
_SHARE_SUFFIX = r"@(?:(?:share|strong_share)=)?(?:0(?:\.[0-9]{1,4})?|1(?:\.0{1,4})?)"
_TRACE_HEADERS = (
    ("x-llmroute-request-id", "this request's id (for /v1/feedback)"),
    ("x-llmroute-model", "the model that answered"),
    ("x-llmroute-reason", "why that model"),
    ("x-llmroute-constraint", "with max_cost/min_quality: 'met' or which limit no candidate meets"),
    ("x-llmroute-rule", "the rules that changed this request's policy"),
    ("x-llmroute-sticky", "on a sticky alias: new, held model=M gain=G margin=X, or broken model=M reason=R"),
    ("x-llmroute-tradeoff", "the trade-off a rule set"),
)


def _maps_shares(engine: RoutingEngine | None, alias: str) -> bool:
    """Whether `alias` takes a strong share (model suffix, `llmroute.strong_share`); unknown
    without an engine (then assumed)."""
    if engine is None:
        return True
    plan = engine.plans.get(alias)
    return plan is not None and plan.no_threshold is None and plan.maps_shares()


def _model_schema(config: GatewayConfig, engine: RoutingEngine | None) -> dict[str, Any]:
    """The served `model` field: a configured model or alias, or an alias with a policy suffix
    (a strong-share suffix only on aliases whose router maps shares)."""
    names = [*config.aliases, *(m.name for m in config.models)]
    out: dict[str, Any] = {"anyOf": [{"enum": names}]}
    share = [a for a in config.aliases if _maps_shares(engine, a)]
    for aliases, suffix in ((list(config.aliases), _TRADEOFF_SUFFIX), (share, _SHARE_SUFFIX)):
        if aliases:
            alt = "|".join(re.escape(a) for a in aliases)
            out["anyOf"].append({"type": "string", "pattern": f"^(?:{alt})(?:{suffix})$"})
    return out


def openapi_document(
    config: GatewayConfig | None = None, engine: RoutingEngine | None = None
) -> dict[str, Any]:
    """The gateway's OpenAPI 3.1 document (served at /openapi.json), generated from the request
    and response schemas of `llmroute.gateway.schemas`: what it describes is what the server
    validates. With `config` (and its `engine`), `model` lists the configured models and aliases
    (an alias with the policy suffixes it takes too), `llmroute.strong_share` is left out where no
    alias maps shares, and with API keys the endpoints that need one say so. With the admin API on
    (`admin:` has a master key or demo mode) its endpoints are in it too (`admin.admin_openapi`)."""
    structs = [s for op in _OPERATIONS for s in (op[3], op[4], op[6]) if s is not None]
    refs, components = S.json_schemas(list(dict.fromkeys(structs)))
    ref = dict(zip(dict.fromkeys(structs), refs, strict=True))
    if config is not None:
        model = _model_schema(config, engine)
        if engine is not None and not any(_maps_shares(engine, a) for a in config.aliases):
            del components["RequestPolicy"]["properties"]["strong_share"]
        for s in (S.ChatRequest, S.MessagesRequest, S.RouteRequest, S.ResponsesRequest, S.CountTokensRequest):
            prop = components[s.__name__]["properties"]["model"]
            prop.pop("type", None)
            prop.pop("minLength", None)
            prop.update(model)
        # embeddings and completions: a named model on an OpenAI-compatible provider (no alias)
        named = [m.name for m in config.models if m.api == "openai"]
        for s in (S.EmbeddingsRequest, S.CompletionsRequest):
            prop = components[s.__name__]["properties"]["model"]
            prop.pop("minLength", None)
            prop["enum"] = named
    headers = {h: {"schema": {"type": "string"}, "description": d} for h, d in _TRACE_HEADERS}
    secured = config is not None and bool(config.keys)
    paths: dict[str, Any] = {}
    # a completion's request id is what /v1/feedback takes (schemathesis' stateful phase follows it)
    feedback = {
        "operationId": "feedback",
        "requestBody": {"request_id": "$response.header.x-llmroute-request-id", "quality": 1},
    }
    for path, method, summary, body, ok, media, err in _OPERATIONS:
        ok_content = {
            m: {"schema": ref[ok] if ok is not None and m == "application/json" else {}} for m in media
        }
        error = {"description": "error", "content": {"application/json": {"schema": ref[err]}}}
        op: dict[str, Any] = {
            "operationId": path.rsplit("/", 1)[-1].split(".")[0],
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "headers": headers, "content": ok_content},
                "4XX": {**error, "description": "client error (the field at fault in the message)"},
                "5XX": {**error, "description": "upstream or gateway error"},
            },
        }
        if path in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
            op["responses"]["200"]["links"] = {"Feedback": feedback}
        if path == "/v1/feedback":  # another worker's trace inside its commit window: kept
            op["responses"]["202"] = {
                "description": "Accepted: pending until the trace lands",
                "content": ok_content,
            }
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref[body]}}}
        if secured and path not in ("/healthz", "/metrics", "/openapi.json"):
            op["security"] = [{"bearer": []}]
        paths[path] = {method: op}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "llmroute gateway",
            "version": "0.1.0",
            "description": "OpenAI-compatible routing gateway: aliases route each request to a model. "
            "Generated from the request schemas the server validates with.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    admin = getattr(config, "admin", None)
    if admin is not None and (admin.key_env or admin.key_sha256 or admin.demo):  # the admin API is on
        from llmroute.gateway.admin import admin_openapi

        admin_paths, admin_schemas = admin_openapi(ref[S.OpenAIError])
        paths.update(admin_paths)
        doc["components"]["schemas"].update(admin_schemas)
        doc["components"].setdefault("securitySchemes", {})["admin"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the gateway's master key (admin.key_env / admin.key_sha256)",
        }
    return doc


def validate_route(body: Any) -> dict[str, Any]:
    """A `/v1/route` body checked against `schemas.RouteRequest` (400 naming the field), with
    `prompt` turned into one user message when `messages` is absent."""
    body = S.validate(body, S.RouteRequest)
    if body.get("messages") is None:
        if body.get("prompt") is None:
            raise bad_request(
                "'messages' is required (or 'prompt', a string standing for one user message).", "messages"
            )
        body["messages"] = [{"role": "user", "content": body["prompt"]}]
    return body


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
        # key id -> (its allow-list when the body was built, the body): rebuilt when the list
        # changes (an admin PATCH or a reload)
        self._models_by_key: dict[str, tuple[tuple[str, ...], bytes]] = {}
        self._openapi = orjson.dumps(openapi_document(gateway.config, gateway.engine))

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
            body = validate_route(await read_json(scope, receive, gw.max_body, gw.max_depth))
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
        """POST /v1/feedback: merge an outcome (`quality` or `score` in [0, 1], `thumbs`, a `label`,
        any other fields) into a request's trace record, learn from it where the request's alias
        learns, then tell the feedback hooks (`outcomes.record_outcome`); 404 for an unknown
        request id, 202 {"status": "pending"} when other workers share the store and the id is not
        there yet (`outcomes.record_or_defer`: kept until the trace lands). With API keys
        configured, only the key that made the request may give its feedback (another key's
        request id is answered 404 like an unknown one: ids of other tenants are not confirmed)."""
        gw = self.gw
        try:
            body = S.validate(await read_json(scope, receive, gw.max_body, gw.max_depth), S.FeedbackRequest)
            owner = None
            if gw.auth.enabled:
                key = gw.auth.authenticate(request_headers(scope))
                owner = key.id if key is not None else None
            outcome = {k: v for k, v in body.items() if k != "request_id"}
            if not outcome:
                raise bad_request('Give an outcome, e.g. {"request_id": ..., "quality": 1.0}.')
            try:
                score = score_from_feedback(outcome)
            except ValueError as e:
                raise bad_request(f"{e}.") from None
            fields = {k: v for k, v in outcome.items() if k != "quality"}
            status = await record_or_defer(
                gw, body["request_id"], score, EXPLICIT, owner=owner, fields=fields
            )
            if status == UNKNOWN:
                raise GatewayError(
                    404,
                    f"Unknown request id {body['request_id'][:64]!r}.",
                    code="not_found",
                    param="request_id",
                )
        except GatewayError as e:
            await send_error(send, e)
            return
        if status == PENDING:  # another worker's trace, not committed yet: kept until it lands
            wait = gw.pending_outcomes.wait_s
            msg = (
                f"Request id not in the trace store yet (another worker's trace may still be in its commit "
                f"window); the outcome is kept and recorded when the trace lands, within {wait:g} s."
            )
            body_out = orjson.dumps({"ok": True, "status": "pending", "message": msg})
            await send_response(send, 202, body_out, [JSON])
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
                if cached is None or cached[0] != key.allowed:
                    cached = self._models_by_key[key.id] = (key.allowed, self._models_for(key))
                body = cached[1]
        await send_response(send, 200, body, [JSON])

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /healthz: liveness, the number of models, the aliases and each breaker's state;
        with `state: redis://...` also the shared state's health (status 'degraded' while Redis
        does not answer: the gateway still routes); with online learning, `learning` per alias
        (`Learning.health`: on, last sync, outcomes applied, snapshot id, pending feedback)."""
        gw = self.gw
        br = {n: b.state for n, b in gw.executor.breakers.items()}
        body: dict[str, Any] = {
            "status": "ok",
            "models": len(gw.backends),
            "aliases": sorted(gw.engine.plans),
            "breakers": br,
        }
        if gw.state is not None:
            body["state"] = gw.state.health()
            if not body["state"]["ok"]:
                body["status"] = "degraded"
        if gw.learning is not None:  # per learning alias: on, last sync, outcomes applied, snapshot
            body["learning"] = gw.learning.health()
        pending = getattr(gw, "pending_outcomes", None)
        if pending is not None:  # feedback waiting for another worker's trace (202 answers)
            body["pending_feedback"] = pending.stats()
        await send_response(send, 200, orjson.dumps(body), [JSON])

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /metrics: the Prometheus exposition."""
        data, ctype = self.gw.metrics.render()
        await send_response(send, 200, data, [(b"content-type", ctype.encode())])

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /openapi.json: `openapi_document()`."""
        await send_response(send, 200, self._openapi, [JSON])
