"""The gateway's admin side: the master-key check for `/admin/v1/...` and the dashboard (`/ui`).

Config (`admin:` in the gateway YAML, `llmroute.gateway.config.AdminConfig`)::

    admin:
      key_env: LLMROUTE_ADMIN_KEY     # an environment variable holding the master key, or
      key_sha256: 3b1f...             # its sha256 hex (`llmroute keys hash`), like the API keys
      demo: false                     # true: no key needed, only when served on a loopback address

The master key is sent like an API key (`Authorization: Bearer <key>` or `x-api-key: <key>`) and
compared by its sha256 in constant time; it never appears in errors or logs. The master key is
not an API key: it does not call models, and API keys do not open the admin side.

Keyless demo mode (`demo: true`, no key configured) admits a request only when the gateway is
served on a loopback address and the request comes from one: the bind address is the one
`llmroute serve --host` names (it travels to the workers in `LLMROUTE_BIND_HOST`), else the
connection's local address. A web page the admin's browser opens must not reach it either: its
`Host` header must name a loopback address (a DNS-rebound name is refused) and an `Origin` header,
when sent, a loopback origin (a cross-site form or fetch is refused). A configured key always wins
over demo mode.

Use from an endpoint (raw ASGI)::

    from llmroute.gateway.admin import check_admin
    try:
        who = check_admin(gateway, scope)  # "key" or "demo"; raises GatewayError 401 / 403
    except GatewayError as e:
        await send_error(send, e)
        return
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmroute.gateway.asgi import JSON, Handler, Receive, Scope, Send, read_json, send_error, send_response
from llmroute.gateway.auth import ApiKey, Authenticator, GatewayError, extract_key, generate_key, hash_key
from llmroute.gateway.config import ConfigError, load_config
from llmroute.gateway.keystore import KeyGeneration, KeyStore
from llmroute.gateway.ledger import shared_dir_from_env
from llmroute.gateway.store import StoreError

__all__ = [
    "BIND_HOST_ENV",
    "AdminAuth",
    "KeyCreate",
    "KeyLimits",
    "KeyManager",
    "admin_openapi",
    "check_admin",
    "is_loopback",
    "masked_config",
    "merge_keys",
]

log = logging.getLogger("llmroute.gateway.admin")

#: Set by `llmroute serve` to its `--host`: where the gateway is bound (for demo mode).
BIND_HOST_ENV = "LLMROUTE_BIND_HOST"


def is_loopback(host: str | None) -> bool:
    """Whether `host` (an IP address or 'localhost') is a loopback address; False for None,
    wildcards ('0.0.0.0', '::') and any other name."""
    if not host:
        return False
    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name part of a `Host` header value ('127.0.0.1:8000' -> '127.0.0.1', '[::1]:80' -> '::1')."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def from_loopback_page(scope: Mapping[str, Any]) -> bool:
    """Whether a request's `Host` names a loopback address and its `Origin` (when sent) is a
    loopback origin: what keyless demo mode requires, so that neither a DNS-rebound name nor a
    cross-site page in the admin's browser can use it. A missing `Host` (HTTP/1.0) passes."""
    host = origin = None
    for k, v in scope.get("headers") or ():
        if k == b"host":
            host = v.decode("latin-1")
        elif k == b"origin":
            origin = v.decode("latin-1")
    if host is not None and not is_loopback(_host_name(host)):
        return False
    if origin is not None:
        try:
            name = urlsplit(origin.strip()).hostname
        except ValueError:
            return False
        return is_loopback(name)
    return True


class AdminAuth:
    """Checks the master key on a request (see the module docstring).

    `sha256`: the master key's sha256 hex, or None (no key configured). `demo`: keyless access on
    loopback. `bind_host`: where the server is bound (None: the `LLMROUTE_BIND_HOST` environment
    variable at check time, else each connection's local address).
    """

    def __init__(
        self, sha256: str | None = None, *, demo: bool = False, bind_host: str | None = None
    ) -> None:
        self.sha256 = sha256.lower() if sha256 else None
        self.demo = bool(demo)
        self.bind_host = bind_host

    @classmethod
    def from_config(cls, config: Any, env: Mapping[str, str] | None = None) -> AdminAuth:
        """From a `GatewayConfig` (its `admin` block) or an `AdminConfig`. Raises ValueError naming
        the variable when `key_env` is set but the variable is not."""
        admin = getattr(config, "admin", config)
        digest = getattr(admin, "key_sha256", None)
        name = getattr(admin, "key_env", None)
        if not digest and name:
            src = os.environ if env is None else env
            value = src.get(name)
            if not value:
                raise ValueError(
                    f"admin.key_env: environment variable {name} holding the admin master key is not set "
                    f"(set it, or store the key's hash in admin.key_sha256)"
                )
            digest = hash_key(value)
        return cls(digest, demo=bool(getattr(admin, "demo", False)))

    @property
    def enabled(self) -> bool:
        """Whether any admin access is possible (a master key, or demo mode)."""
        return self.sha256 is not None or self.demo

    def _bound_to_loopback(self, scope: Mapping[str, Any]) -> bool:
        host = self.bind_host or os.environ.get(BIND_HOST_ENV)
        if host is None:
            server = scope.get("server")
            host = server[0] if server else None
        client = scope.get("client")
        return is_loopback(host) and client is not None and is_loopback(client[0])

    def check(self, scope: Mapping[str, Any], presented: str | None = None) -> str:
        """Admit an admin request or raise `GatewayError` (401 no/wrong key, 403 admin off).

        `scope` is the ASGI scope; the key is read from its headers unless `presented` gives it
        (e.g. from a cookie). Returns "key" (the master key matched) or "demo" (keyless demo)."""
        if self.sha256 is not None:
            if presented is None:
                presented = extract_key(
                    {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                )
            if presented is None:
                raise GatewayError(
                    401,
                    "Missing admin key. Send the gateway's master key (admin.key_env / admin.key_sha256 "
                    "in its config) as 'Authorization: Bearer <key>' or as an 'x-api-key' header.",
                    type="authentication_error",
                    code="invalid_admin_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not hmac.compare_digest(hash_key(presented), self.sha256):
                raise GatewayError(
                    401,
                    "Invalid admin key. Send the gateway's master key (not an API key).",
                    type="authentication_error",
                    code="invalid_admin_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return "key"
        if not self.demo:
            raise GatewayError(
                403,
                "The admin API is off: set admin.key_env (or admin.key_sha256) in the gateway config, "
                "or admin.demo: true for keyless access on a loopback address.",
                type="permission_error",
                code="admin_disabled",
            )
        if not self._bound_to_loopback(scope):
            raise GatewayError(
                403,
                "Keyless admin access (admin.demo) works only when the gateway is served on a loopback "
                "address (--host 127.0.0.1) and called from it; set admin.key_env for any other address.",
                type="permission_error",
                code="admin_demo_not_loopback",
            )
        if not from_loopback_page(scope):
            raise GatewayError(
                403,
                "Keyless admin access (admin.demo) takes requests addressed to a loopback name (Host "
                "127.0.0.1 or localhost) and, from a browser, only from a page of the gateway itself; "
                "open the gateway at http://127.0.0.1:<port>, or set admin.key_env.",
                type="permission_error",
                code="admin_demo_not_loopback",
            )
        return "demo"


def check_admin(gateway: Any, scope: Mapping[str, Any], presented: str | None = None) -> str:
    """Check the master key on one request to `gateway` (a `Gateway`); see `AdminAuth.check`.

    Uses `gateway.admin_auth` (the gateway sets it from its config at start and on a reload),
    building it from `gateway.config` the first time if it is missing."""
    auth = getattr(gateway, "admin_auth", None)
    if auth is None:
        auth = gateway.admin_auth = AdminAuth.from_config(gateway.config)
    return auth.check(scope, presented)


# ---- the admin API ------------------------------------------------------------------------------

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


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    """A file's (modification time in ns, size, inode); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


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


def merge_keys(
    config_keys: Sequence[ApiKey], stored: Sequence[dict[str, Any]]
) -> tuple[list[ApiKey], list[str]]:
    """The keys the gateway accepts: the config file's, then the store's live ones. On an id (or
    key text) in both, the config file's wins and the stored one is skipped with a warning."""
    out = list(config_keys)
    ids = {k.id for k in out}
    hashes = {k.sha256 for k in out}
    warnings: list[str] = []
    for r in stored:
        if r.get("revoked_ts") is not None:
            continue
        if r["id"] in ids or r["sha256"] in hashes:
            warnings.append(
                f"key '{r['id']}' in the key store clashes with a key of the config file: the config's wins"
            )
            continue
        ids.add(r["id"])
        hashes.add(r["sha256"])
        out.append(
            ApiKey(
                id=r["id"],
                sha256=r["sha256"],
                budget_usd_day=r["budget_usd_day"],
                budget_usd_month=r["budget_usd_month"],
                rpm=r["rpm"],
                allowed=None if r["aliases"] is None else tuple(r["aliases"]),
            )
        )
    return out, warnings


class KeyManager:
    """Keys managed without restarts, and the admin API over them (`/admin/v1/...`).

    The gateway accepts the config file's keys and the live keys of the key store
    (`llmroute.gateway.keystore`); the config file's win a name clash. Every change is written to
    the store, audited, and then counted in the shared `KeyGeneration`; each request first
    compares that counter with the one its worker loaded (`stale`, well under a microsecond) and
    reloads the keys (`refresh`) when it moved. A config reload also bumps a second counter, so
    that every worker re-reads the config file and swaps in its new runtime the same way.

    Endpoints (all need the master key, see `AdminAuth`)::

        POST   /admin/v1/keys           create: {id?, budget_usd_day?, budget_usd_month?, rpm?, aliases?}
                                        -> 201 with the key text (`key`), shown this once
        GET    /admin/v1/keys           list (config and store keys, revoked ones too; never a secret)
        GET    /admin/v1/keys/{id}      one key, as the list shows it
        PATCH  /admin/v1/keys/{id}      re-budget: any of the limits (null removes one)
        DELETE /admin/v1/keys/{id}      revoke
        GET    /admin/v1/config         the running config, secrets masked
        POST   /admin/v1/reload         re-read the config file and apply it whole (llmroute.gateway.reload)
        GET    /admin/v1/audit?limit=N  admin actions, newest first
    """

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        folder = shared_dir_from_env()
        self.generation = KeyGeneration(folder)
        self.seen = self.generation.value
        self.config_seen = self.generation.config_value
        self.keystore: KeyStore | None = None
        self.config_keys: list[ApiKey] = []
        self.stored: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # SIGHUP reloads in progress
        # (config file, its (mtime, size, inode)) of the last config this worker applied
        self._applied: tuple[str | None, tuple[int, int, int] | None] = (None, None)
        self._sighup_loop: asyncio.AbstractEventLoop | None = None

    # ---- keeping keys current ---------------------------------------------------------------

    async def start(self, store: Any) -> list[ApiKey]:
        """At gateway startup (store open): load the stored keys and apply them with the config
        file's. Returns the keys the gateway accepts."""
        self.keystore = KeyStore(store)
        self.seen = self.generation.value
        self.config_seen = self.generation.config_value
        self.config_keys = [ApiKey.from_config(k) for k in self.gw.config.keys]
        self.stored = await self.keystore.alist(revoked=True)
        keys, self.warnings = merge_keys(self.config_keys, self.stored)
        for w in self.warnings:
            log.warning("%s", w)
        self.gw.auth.set_keys(keys)
        poll_s = getattr(self.gw.config.admin, "key_poll_s", None)
        self._watch_sighup()
        if poll_s:
            stamp = await self.keystore.astamp()
            reloaded = await self.keystore.areload_stamp()
            self._poller = asyncio.get_running_loop().create_task(self._poll(float(poll_s), stamp, reloaded))
        return keys

    async def _poll(self, every_s: float, stamp: tuple[int, float], reloaded: float) -> None:
        """Every `every_s`: if the key store changed, or a config reload was audited (another
        gateway sharing the store, e.g. on another host), bump the generation so that this
        gateway's workers reload on their next request (the config too after a reload)."""
        assert self.keystore is not None
        while True:
            await asyncio.sleep(every_s)
            try:
                now = await self.keystore.astamp()
                now_reloaded = await self.keystore.areload_stamp()
            except StoreError:  # the store is closed: the gateway is stopping
                return
            except Exception as e:  # the database is unreachable: try again next time
                log.warning("checking the key store for changes failed: %s: %s", type(e).__name__, e)
                continue
            if now_reloaded != reloaded:
                reloaded = now_reloaded
                stamp = now
                self.generation.bump(config=True)
            elif now != stamp:
                stamp = now
                self.generation.bump()

    def _watch_sighup(self) -> None:
        """`kill -HUP <pid>` of a gateway process reloads its config like POST /admin/v1/reload
        (audited with actor 'sighup'). Only where the event loop runs in the main thread."""
        import signal

        loop = asyncio.get_running_loop()

        def hup() -> None:
            task = loop.create_task(self._sighup())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, hup)
            self._sighup_loop = loop
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):  # not the main thread
            self._sighup_loop = None

    async def _sighup(self) -> None:
        try:
            _status, out = await self.reload("sighup")
            log.info("SIGHUP: config reloaded (runtime rebuilt: %s)", out.get("runtime_rebuilt"))
        except GatewayError as e:
            log.error("SIGHUP: %s", e.message)

    def stale(self) -> bool:
        """Whether keys changed since this worker loaded them (hot path: one memory read)."""
        return self.generation.value != self.seen

    async def refresh(self) -> None:
        """Reload the keys (and, after a config reload, the whole config: `_follow_reload`).
        On a failure (store unreachable) the current keys stay and the next try is 1 s later."""
        if self.keystore is None or time.monotonic() < self._retry_at:
            return
        async with self._lock:
            gen, cgen = self.generation.value, self.generation.config_value
            if gen == self.seen:
                return
            try:
                if cgen != self.config_seen:
                    await self._follow_reload()
                    self.config_seen = cgen  # a bad file is not retried until the next reload
                stored = await self.keystore.alist(revoked=True)
                self._apply(self.config_keys, stored)
            except Exception as e:  # keep serving with the keys we have
                self._retry_at = time.monotonic() + 1.0
                log.error("reloading API keys failed (%s: %s); the previous keys stay", type(e).__name__, e)
                return
            self.seen, self.config_seen = gen, cgen

    def _apply(self, config_keys: list[ApiKey], stored: list[dict[str, Any]]) -> list[ApiKey]:
        keys, warnings = merge_keys(config_keys, stored)
        self.gw.auth.set_keys(keys)  # ValueError (same key twice): nothing changed
        if self.gw.budgets is not None:
            self.gw.budgets.set_keys(keys)
        self.config_keys, self.stored, self.warnings = config_keys, stored, warnings
        return keys

    def _apply_config(self, cfg: Any, config_keys: list[ApiKey]) -> None:
        """Apply the config's keys and admin block (`cfg`: what the runtime runs)."""
        admin = AdminAuth.from_config(cfg)
        self.config_keys = config_keys
        live = getattr(self.gw, "live", self.gw)
        self.gw.admin_auth = live.admin_auth = admin
        live.config = live.config.model_copy(update={"keys": cfg.keys, "admin": cfg.admin})

    async def _load_and_plan(self, path: str) -> tuple[Any, list[ApiKey], Any]:
        """Read and validate the config file (keys, master key, the whole new runtime when
        anything beyond keys and admin changed). Returns (the config, its keys, the reload plan
        with its started runtime in `plan.runtime`, None when none is needed); raises
        `ConfigError` / `ValueError` / whatever building the runtime raised."""
        from llmroute.gateway.reload import plan_reload, start_runtime

        stamp = _file_stamp(path)  # before reading: a write after it is seen next time
        cfg = await asyncio.get_running_loop().run_in_executor(None, load_config, path)
        config_keys = [ApiKey.from_config(k) for k in cfg.keys]
        AdminAuth.from_config(cfg)
        Authenticator(merge_keys(config_keys, self.stored)[0])  # same key text twice
        plan = plan_reload(self.gw, cfg)
        plan.file_stamp = stamp
        plan.runtime = await start_runtime(self.gw, plan) if plan.needed else None
        return cfg, config_keys, plan

    def _swap(self, plan: Any, config_keys: list[ApiKey]) -> None:
        """Swap in the plan's runtime (if any) and apply its keys and admin block (no await)."""
        from llmroute.gateway.reload import swap_runtime

        if plan.runtime is not None:
            swap_runtime(self.gw, plan.runtime)
        self._apply_config(plan.config, config_keys)
        self._applied = (self.config_path(), plan.file_stamp)

    async def _follow_reload(self) -> None:
        """Another worker (or host) reloaded the config: re-read the file and do the same here. A
        file that is bad now keeps this worker's runtime (logged)."""
        from llmroute.gateway.reload import router_signatures

        path = self.config_path()
        if path is None:
            return
        live = getattr(self.gw, "live", self.gw)
        if self._applied == (path, _file_stamp(path)) and router_signatures(live.config) == live.router_sigs:
            return  # this worker runs that file already (the reload was its own, or seen before)
        try:
            _cfg, config_keys, plan = await self._load_and_plan(path)
        except Exception as e:
            log.error("config reload from %s failed here (%s: %s); this worker keeps its config", path,
                      type(e).__name__, e)  # fmt: skip
            return
        self._swap(plan, config_keys)
        if plan.needed:
            log.info("config reloaded from %s: %s", path, orjson.dumps(plan.summary()).decode())

    def config_path(self) -> str | None:
        """The config file the gateway was built from (`Gateway.config_path`, else the
        `LLMROUTE_CONFIG` environment variable of `llmroute serve --workers N`)."""
        return getattr(self.gw, "config_path", None) or os.environ.get("LLMROUTE_CONFIG") or None

    async def _changed(self, action: str, target: str | None, actor: str, detail: dict[str, Any]) -> None:
        """After a change is in the store: tell the other workers, apply it here, audit it."""
        assert self.keystore is not None
        async with self._lock:
            gen = self.generation.bump()
            self._apply(self.config_keys, await self.keystore.alist(revoked=True))
            self.seen = gen
        log.info("admin: %s %s by %s %s", action, target or "", actor, orjson.dumps(detail).decode())
        await self.keystore.aaudit(action, target, actor, detail)

    def close(self) -> None:
        """Stop polling the key store; release the shared counter."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._sighup_loop is not None:
            import signal

            with contextlib.suppress(Exception):
                self._sighup_loop.remove_signal_handler(signal.SIGHUP)
            self._sighup_loop = None
        self.generation.close()

    # ---- HTTP ---------------------------------------------------------------------------------

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
