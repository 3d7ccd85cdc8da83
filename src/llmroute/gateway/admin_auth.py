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

import hmac
import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from llmroute.gateway.auth import GatewayError, extract_key, hash_key

__all__ = ["BIND_HOST_ENV", "AdminAuth", "check_admin", "from_loopback_page", "is_loopback"]

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
