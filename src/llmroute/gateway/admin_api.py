"""The admin API's HTTP side (`/admin/v1/...`): the request bodies (`KeyCreate`, `KeyLimits`),
their OpenAPI description (`admin_openapi`), the masked config (`masked_config`) and the
endpoints' handlers (`AdminApiMixin`, the HTTP methods of `KeyManager`: what each endpoint
checks, changes and answers).

The seam: `llmroute.gateway.admin_keys` keeps the keys and the config current on every worker
(the key store, the shared counter, reloads); this module turns requests into those changes.
`AdminApiMixin` is a base class of `KeyManager` (not used alone): its handlers are the
manager's own methods. The master-key check is `llmroute.gateway.admin_auth`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmroute.gateway.admin_auth import check_admin
from llmroute.gateway.asgi import JSON, Handler, Receive, Scope, Send, read_json, send_error, send_response
from llmroute.gateway.auth import ApiKey, GatewayError, generate_key, hash_key
from llmroute.gateway.config import ConfigError
from llmroute.gateway.keystore import KeyGeneration, KeyStore

__all__ = ["AdminApiMixin", "KeyCreate", "KeyLimits", "admin_openapi", "masked_config"]

log = logging.getLogger("llmroute.gateway.admin")  # one logger name for the admin side

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_LIMITS = ("budget_usd_day", "budget_usd_month", "rpm", "aliases")


class KeyLimits(BaseModel):
    """The limits of a key the admin API manages (a missing field: no limit)."""

    model_config = ConfigDict(extra="forbid")

    budget_usd_day: float | None = Field(None, ge=0)
    budget_usd_month: float | None = Field(None, ge=0)
    rpm: int | None = Field(None, gt=0)
    aliases: list[str] | None = Field(
        None, description="allowed models/aliases (fnmatch patterns); null = all"
    )


class KeyCreate(KeyLimits):
    """POST /admin/v1/keys: a new key (its id is its name in traces, metrics and budgets)."""

    id: str | None = Field(None, description="the key's name; default: a random 'key-...' id")


def _validated(model: type[BaseModel], body: Any) -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "<body>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise GatewayError(
            400, f"{loc}: {msg}. Allowed fields: {list(model.model_fields)}.", param=loc
        ) from None


def admin_openapi(error: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The admin API's OpenAPI paths and component schemas (for `/openapi.json` when the admin
    API is on), every operation under the `admin` security scheme (the master key as a bearer
    token); `error`: the schema of an error body."""
    schemas = {
        "KeyCreate": KeyCreate.model_json_schema(),
        "KeyLimits": KeyLimits.model_json_schema(),
    }
    obj = {"type": "object"}
    ok = {"description": "OK", "content": {"application/json": {"schema": obj}}}
    errors = {
        "4XX": {"description": "client error (401: no or wrong master key)", "content": {"application/json": {"schema": error}}},
        "5XX": {"description": "gateway error", "content": {"application/json": {"schema": error}}},
    }  # fmt: skip
    kid = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    limit = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}]

    def op(
        op_id: str, summary: str, body: str | None = None, status: str = "200", **extra: Any
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"operationId": op_id, "summary": summary, "security": [{"admin": []}],
                               "responses": {status: ok, **errors}, **extra}  # fmt: skip
        if body is not None:
            ref = {"$ref": f"#/components/schemas/{body}"}
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        return out

    paths = {
        "/admin/v1/keys": {
            "get": op("adminListKeys", "List keys (config file and key store; never a secret)"),
            "post": op(
                "adminCreateKey", "Create a key; its text is in the answer, shown once", "KeyCreate", "201"
            ),
        },
        "/admin/v1/keys/{id}": {
            "get": op("adminGetKey", "One key", parameters=kid),
            "patch": op(
                "adminUpdateKey", "Re-budget a stored key (null removes a limit)", "KeyLimits", parameters=kid
            ),
            "delete": op("adminRevokeKey", "Revoke a stored key", parameters=kid),
        },
        "/admin/v1/config": {"get": op("adminConfig", "The running config, secrets masked")},
        "/admin/v1/reload": {
            "post": op(
                "adminReload",
                "Re-read the config file, validate it and apply it live; the answer "
                "lists what changed and what needs a restart",
            )
        },
        "/admin/v1/audit": {"get": op("adminAudit", "Admin actions, newest first", parameters=limit)},
    }
    return paths, schemas


def masked_config(config: Any) -> dict[str, Any]:
    """The running config as JSON-able data with secrets masked: key hashes, model header values,
    proxy URLs with credentials, the passwords of the store, shared state (Redis), cache and OTLP
    URLs (env-var names stay: they are not secrets)."""
    from llmroute.gateway.store import _redact

    data = config.model_dump(mode="json")
    for k in data.get("keys", []):
        if k.get("key_sha256"):
            k["key_sha256"] = "***"
    if data.get("admin", {}).get("key_sha256"):
        data["admin"]["key_sha256"] = "***"
    for m in data.get("models", []):
        m["headers"] = {h: "***" for h in m.get("headers") or {}}
        if m.get("proxy") and "@" in m["proxy"]:
            m["proxy"] = _redact(m["proxy"])
    srv = data.get("server", {})
    if srv.get("proxy") and "@" in srv["proxy"]:
        srv["proxy"] = _redact(srv["proxy"])
    if data.get("store", {}).get("url"):
        data["store"]["url"] = _redact(data["store"]["url"])
    if data.get("state"):  # redis://:password@host (the cache's url copies it)
        data["state"] = _redact(data["state"])
    cache = data.get("cache")
    if isinstance(cache, dict) and isinstance(cache.get("url"), str):
        data["cache"] = {**cache, "url": _redact(cache["url"])}
    telemetry = data.get("telemetry") or {}
    if telemetry.get("otlp_endpoint"):
        telemetry["otlp_endpoint"] = _redact(telemetry["otlp_endpoint"])
    return data


class AdminApiMixin:
    """`KeyManager`'s endpoints (see its docstring for the list); the attributes below are the
    manager's (`KeyManager.__init__`, `llmroute.gateway.admin_keys`)."""

    gw: Any
    keystore: KeyStore | None
    generation: KeyGeneration
    seen: int
    config_seen: int
    config_keys: list[ApiKey]
    stored: list[dict[str, Any]]
    warnings: list[str]
    _lock: asyncio.Lock
    _changed: Callable[[str, str | None, str, dict[str, Any]], Awaitable[None]]
    _load_and_plan: Callable[[str], Awaitable[tuple[Any, list[ApiKey], Any]]]
    _swap: Callable[[Any, list[ApiKey]], None]
    _apply: Callable[[list[ApiKey], list[dict[str, Any]]], list[ApiKey]]
    config_path: Callable[[], str | None]

    def routes(self) -> dict[tuple[str, str], Handler]:
        """(method, path) -> handler for the fixed admin paths (`/admin/v1/keys/{id}`: `handle`)."""
        return {
            ("POST", "/admin/v1/keys"): self.handle,
            ("GET", "/admin/v1/keys"): self.handle,
            ("GET", "/admin/v1/config"): self.handle,
            ("POST", "/admin/v1/reload"): self.handle,
            ("GET", "/admin/v1/audit"): self.handle,
        }

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Any request under /admin/v1/: check the master key, then dispatch."""
        try:
            actor = check_admin(self.gw, scope)
            if self.keystore is None:
                raise GatewayError(503, "The gateway is still starting; retry.", code="not_ready")
            status, out = await self._dispatch(scope, receive, actor)
        except GatewayError as e:
            await send_error(send, e)
            return
        await send_response(send, status, orjson.dumps(out), [JSON, (b"cache-control", b"no-store")])

    async def _dispatch(self, scope: Scope, receive: Receive, actor: str) -> tuple[int, Any]:
        method, path = scope["method"], scope["path"].rstrip("/")
        if path == "/admin/v1/keys":
            if method == "POST":
                return await self.create(await self._body(scope, receive), actor)
            if method == "GET":
                return 200, await self.list_keys()
            raise self._method(method, path, "GET, POST")
        if path.startswith("/admin/v1/keys/"):
            kid = unquote(path[len("/admin/v1/keys/") :])
            if method == "PATCH":
                return await self.update(kid, await self._body(scope, receive), actor)
            if method == "DELETE":
                return await self.revoke(kid, actor)
            if method == "GET":
                return 200, self._one(kid)
            raise self._method(method, path, "GET, PATCH, DELETE")
        if path == "/admin/v1/config":
            if method != "GET":
                raise self._method(method, path, "GET")
            from llmroute.gateway.reload import RESTART_ONLY

            return 200, {
                "config": masked_config(getattr(self.gw, "live", self.gw).config),
                "restart_required_for": list(RESTART_ONLY),
            }
        if path == "/admin/v1/reload":
            if method != "POST":
                raise self._method(method, path, "POST")
            return await self.reload(actor)
        if path == "/admin/v1/audit":
            if method != "GET":
                raise self._method(method, path, "GET")
            qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            try:
                limit = max(1, min(10_000, int(qs.get("limit", ["100"])[0])))
            except ValueError:
                raise GatewayError(400, "limit: give a whole number (1-10000).", param="limit") from None
            assert self.keystore is not None
            return 200, {"object": "list", "data": await self.keystore.aaudit_log(limit)}
        raise GatewayError(
            404, f"No admin endpoint {path}. See the README's Admin API section.", code="not_found"
        )

    @staticmethod
    def _method(method: str, path: str, allow: str) -> GatewayError:
        return GatewayError(
            405,
            f"Method {method} not allowed on {path}; use {allow}.",
            code="method_not_allowed",
            headers={"Allow": allow},
        )

    async def _body(self, scope: Scope, receive: Receive) -> Any:
        live = getattr(self.gw, "live", self.gw)  # server.max_body_bytes as last reloaded
        return await read_json(scope, receive, live.max_body, live.max_depth)

    def _describe(self, key: ApiKey | None, row: dict[str, Any] | None, source: str) -> dict[str, Any]:
        """One key as the list shows it (never the key text or its hash)."""
        if row is not None:
            out = {k: row[k] for k in ("id", *_LIMITS, "created_ts", "updated_ts", "revoked_ts")}
        else:
            assert key is not None
            out = {
                "id": key.id,
                "budget_usd_day": key.budget_usd_day,
                "budget_usd_month": key.budget_usd_month,
                "rpm": key.rpm,
                "aliases": None if key.allowed is None else list(key.allowed),
            }
        kid = out["id"]
        live = self.gw.auth.keys
        out["source"] = source
        out["active"] = any(k.id == kid for k in live.values()) and (row is None or row["revoked_ts"] is None)
        budgets = self.gw.budgets
        if budgets is not None and kid in budgets.keys:
            out["usage"] = budgets.usage(kid)
        return out

    async def list_keys(self) -> dict[str, Any]:
        """GET /admin/v1/keys."""
        data = [self._describe(k, None, "config") for k in self.config_keys]
        config_ids = {k.id for k in self.config_keys}
        data += [self._describe(None, r, "store") for r in self.stored if r["id"] not in config_ids]
        return {"object": "list", "data": data, "warnings": self.warnings}

    def _one(self, kid: str) -> dict[str, Any]:
        for k in self.config_keys:
            if k.id == kid:
                return self._describe(k, None, "config")
        for r in self.stored:
            if r["id"] == kid:
                return self._describe(None, r, "store")
        raise GatewayError(404, f"No key '{kid}'. GET /admin/v1/keys lists them.", code="key_not_found")

    def _not_in_config(self, kid: str, what: str) -> None:
        if any(k.id == kid for k in self.config_keys):
            raise GatewayError(
                409,
                f"Key '{kid}' is defined in the config file: {what} it there and POST /admin/v1/reload.",
                code="key_in_config",
            )

    def _room(self, kid: str, *, rate: bool) -> None:
        """507 when the budget ledger (or, for a rate limit, the workers' rate ledger) has no slot
        left for a new key id: refused before anything is stored."""
        budgets = self.gw.budgets
        ledgers = [getattr(budgets, "_ledger", None)]
        if rate:
            ledgers.append(getattr(self.gw.auth, "_ledger", None))
        for ledger in ledgers:
            if ledger is not None and kid not in ledger and ledger.free_slots() == 0:
                raise GatewayError(
                    507,
                    f"No room for another key in the ledger {ledger.path} (one slot per key id ever "
                    "used). Stop the gateway and move that file away: the next start makes a larger "
                    "one, seeded with the spend persisted in the trace store.",
                    type="server_error",
                    code="ledger_full",
                )

    async def create(self, body: Any, actor: str) -> tuple[int, dict[str, Any]]:
        """POST /admin/v1/keys: 201 with the new key's text, shown this once."""
        req = _validated(KeyCreate, body)
        assert isinstance(req, KeyCreate) and self.keystore is not None
        kid = req.id or f"key-{secrets.token_hex(4)}"
        if not _ID_RE.match(kid):
            raise GatewayError(
                400,
                "id: 1-64 characters: letters, digits and . _ : - (starting with a letter or digit).",
                param="id",
            )
        self._not_in_config(kid, "change")
        self._room(kid, rate=bool(req.rpm))
        secret = generate_key()
        limits = req.model_dump(include=set(_LIMITS))
        row = await self.keystore.acreate(kid, hash_key(secret), **limits)
        if row is None:
            raise GatewayError(
                409,
                f"A key with id '{kid}' exists already (revoked ids are not reused); pick another id.",
                code="key_exists",
            )
        await self._changed("key.create", kid, actor, limits)
        return 201, {**self._one(kid), "key": secret}

    async def update(self, kid: str, body: Any, actor: str) -> tuple[int, dict[str, Any]]:
        """PATCH /admin/v1/keys/{id}: change the given limits (null removes one)."""
        req = _validated(KeyLimits, body)
        assert self.keystore is not None
        fields = req.model_dump(include=req.model_fields_set)
        if not fields:
            raise GatewayError(400, f"Give at least one of {list(_LIMITS)} to change.")
        self._not_in_config(kid, "change")
        if fields.get("rpm"):
            self._room(kid, rate=True)
        if await self.keystore.aupdate(kid, fields) is None:
            raise GatewayError(404, f"No live key '{kid}' in the key store.", code="key_not_found")
        await self._changed("key.update", kid, actor, fields)
        return 200, self._one(kid)

    async def revoke(self, kid: str, actor: str) -> tuple[int, dict[str, Any]]:
        """DELETE /admin/v1/keys/{id}: revoke; refused on the next request on every worker."""
        assert self.keystore is not None
        self._not_in_config(kid, "remove")
        if not await self.keystore.arevoke(kid):
            raise GatewayError(404, f"No live key '{kid}' in the key store.", code="key_not_found")
        await self._changed("key.revoke", kid, actor, {})
        return 200, self._one(kid)

    async def reload(self, actor: str) -> tuple[int, dict[str, Any]]:
        """POST /admin/v1/reload: validate the config file and build the new runtime off to the
        side (`llmroute.gateway.reload`), then swap it in with the file's keys and admin block; a
        bad file, or a runtime that fails to build, leaves the running config in place (400 saying
        why). The answer (and the audit entry) says what changed and what needs a restart."""
        assert self.keystore is not None
        path = self.config_path()
        if path is None:
            raise GatewayError(
                409,
                "This gateway was not started from a config file (llmroute serve --config): nothing to reload.",
                code="no_config_file",
            )
        async with self._lock:
            try:
                _cfg, config_keys, plan = await self._load_and_plan(path)
            except Exception as e:  # ConfigError, ValueError, a router file that does not load, ...
                why = str(e) if isinstance(e, ConfigError | ValueError) else f"{type(e).__name__}: {e}"
                await self.keystore.aaudit("config.reload_failed", path, actor, {"error": why})
                raise GatewayError(
                    400, f"Config not reloaded; the running one stays. {why}", code="invalid_config"
                ) from None
            self._swap(plan, config_keys)
            gen = self.generation.bump(config=True)
            self._apply(config_keys, await self.keystore.alist(revoked=True))
            self.seen, self.config_seen = gen, self.generation.config_value
        summary = plan.summary()
        detail = {"keys": len(config_keys), **summary}
        await self.keystore.aaudit("config.reload", path, actor, detail)
        log.info("admin: config reloaded from %s by %s: %s", path, actor, orjson.dumps(summary).decode())
        return 200, {
            "reloaded": True,
            "config_keys": len(config_keys),
            "stored_keys": sum(r["revoked_ts"] is None for r in self.stored),
            **summary,
            "warnings": self.warnings,
        }
