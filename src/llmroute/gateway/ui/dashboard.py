"""The gateway's dashboard at `/ui`: server-rendered pages (Jinja2 templates, SVG charts drawn on
the server, a little vanilla JavaScript), every asset shipped in the package (works offline).

    GET  /ui                overview: traffic per alias and model over time, spend and savings
                            against always using the strongest candidate, latency, error and
                            fallback rates, breaker states, budgets per key
    GET  /ui/decisions      decision explorer: search by request id, filter by model, alias, key,
                            rule, status and time
    GET  /ui/decision?id=   one decision: candidates with expected quality and cost, policy, rule
                            and guard verdicts, cascade steps, fallbacks, feedback
    GET  /ui/quality        expected quality vs feedback, per model and calibrated by bins
    GET  /ui/playground     routes a prompt through POST /v1/route with a trade-off slider
    GET  /ui/router         each router's cost-quality points from its training summary
    GET/POST /ui/login      the admin key form (sets an HttpOnly session cookie)

Access: the admin (master) key (`admin:` in the config), as `Authorization: Bearer <key>` or through
the login form; or no key when `admin.demo` is on and the request came in on a loopback address.
Every page answers with a `Server-Timing: app;dur=<ms>` header (its server time).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import secrets
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmroute.gateway.asgi import Handler, Receive, Scope, Send, request_headers, send_response
from llmroute.gateway.auth import GatewayError, hash_key
from llmroute.gateway.ui import charts
from llmroute.gateway.ui.data import (
    ASSUMPTION,
    DashboardData,
    calibration,
    cumulative,
    series,
)

if TYPE_CHECKING:
    from llmroute.gateway.app import Gateway

__all__ = ["Dashboard"]

_HERE = Path(__file__).parent
_STATIC = {
    "/ui/static/app.css": ("app.css", b"text/css; charset=utf-8"),
    "/ui/static/app.js": ("app.js", b"text/javascript; charset=utf-8"),
}
_HTML = (b"content-type", b"text/html; charset=utf-8")
_COOKIE = "llmroute_ui"
#: How long a login lasts (the cookie's Max-Age and the expiry signed into its value).
SESSION_TTL_S = 12 * 3600
_WINDOWS = {"1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30, "all": None}


def _usd(v: float | None) -> str:
    """Dollars: cents from $10, four decimals below, three significant digits below a cent (small
    demo spends stay visible)."""
    if v is None or not math.isfinite(v):
        return "-"
    sign = "-" if v < 0 else ""
    a = abs(v)
    if 0 < a < 0.01:
        return f"{sign}${a:.3g}"  # one request's cost: three significant digits
    return f"{sign}${a:,.2f}" if a >= 10 else f"{sign}${a:,.4f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms")


def _time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _hour_label(h: int, width: int) -> str:
    d = datetime.fromtimestamp(h * 3600, UTC)
    return d.strftime("%m-%d") if width >= 24 else d.strftime("%m-%d %H:00")


class Dashboard:
    """The `/ui` pages of one `Gateway` (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        import jinja2

        self.gw = gateway
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(usd=_usd, pct=_pct, ms=_ms, time=_time)
        self._data: DashboardData | None = None
        self._static: dict[str, bytes] = {}
        self._secret: bytes | None = None

    def routes(self) -> dict[tuple[str, str], Handler]:
        """(method, path) -> handler, for the gateway's dispatch table."""
        pages = {
            "/ui": self.overview,
            "/ui/": self.overview,
            "/ui/decisions": self.decisions,
            "/ui/decision": self.decision,
            "/ui/quality": self.quality,
            "/ui/playground": self.playground,
            "/ui/router": self.router,
        }
        out: dict[tuple[str, str], Handler] = {("GET", p): self._page(h) for p, h in pages.items()}
        out[("GET", "/ui/login")] = self.login_form
        out[("POST", "/ui/login")] = self.login
        out[("POST", "/ui/logout")] = self.logout
        for path in _STATIC:
            out[("GET", path)] = self.static
        return out

    @property
    def data(self) -> DashboardData:
        """The trace store reader (created once the gateway's store is open)."""
        if self._data is None:
            cfg = self.gw.config
            self._data = DashboardData(self.gw.store, cfg.store.url, cfg.base_dir)
        return self._data

    def warm(self) -> None:
        """Start building the overview's aggregates in the background (the gateway calls this once
        its trace store is open)."""
        if self.gw.store is not None:
            self.data.warm()

    def close(self) -> None:
        """Close the reader's database connection."""
        if self._data is not None:
            self._data.close()

    # ---- access --------------------------------------------------------------------------------
    def _admin(self) -> Any:
        """The gateway's `AdminAuth` (`llmroute.gateway.admin`), or None when its config is broken
        (e.g. admin.key_env names an unset variable)."""
        from llmroute.gateway.admin import AdminAuth

        auth = getattr(self.gw, "admin_auth", None)
        if auth is None:
            try:
                auth = self.gw.admin_auth = AdminAuth.from_config(self.gw.config)
            except ValueError:
                return None
        return auth

    def _session_secret(self) -> bytes:
        """The key the session cookies are signed with: random, made when the first cookie is; the
        workers of `serve --workers N` share one through a file in `LLMROUTE_SHARED_DIR`. (Signing
        with the master key's sha256 alone let anyone who had read `admin.key_sha256` in a config
        file forge a cookie.) A restart makes a new one: logins end with the gateway."""
        if self._secret is None:
            from llmroute.gateway.ledger import shared_dir_from_env

            folder = shared_dir_from_env()
            self._secret = secrets.token_bytes(32) if folder is None else _shared_secret(Path(folder))
        return self._secret

    def _session_value(self, digest: str, expires: int | None = None) -> str:
        """The session cookie's value for the master key with sha256 `digest`: its expiry time and
        an HMAC of both under `_session_secret` (neither the key nor anything derived from it alone)."""
        if expires is None:
            expires = int(time.time()) + SESSION_TTL_S
        mac = hmac.new(self._session_secret(), f"{digest}:{expires}".encode(), hashlib.sha256)
        return f"{expires}.{mac.hexdigest()}"

    def _session_ok(self, value: str, digest: str) -> bool:
        """Whether a session cookie's value is one `_session_value` made and has not expired."""
        expires, _, _mac = value.partition(".")
        if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(value, self._session_value(digest, int(expires)))

    def authorized(self, scope: Scope) -> bool:
        """Whether the request may see the dashboard: the master key (`Authorization: Bearer` or
        `x-api-key`, `llmroute.gateway.admin.check_admin`), the session cookie the login form set,
        or keyless demo mode on loopback."""
        from llmroute.gateway.admin import check_admin

        auth = self._admin()
        if auth is None:
            return False
        try:
            check_admin(self.gw, scope)
            return True
        except GatewayError:
            pass
        if auth.sha256 is None:
            return False
        for part in request_headers(scope).get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == _COOKIE and self._session_ok(value, auth.sha256):
                return True
        return False

    # ---- plumbing ------------------------------------------------------------------------------
    def _page(self, build: Any) -> Handler:
        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            t0 = time.perf_counter()
            if not self.authorized(scope):
                await self._redirect(send, "/ui/login?next=" + urllib.parse.quote(scope["path"]))
                return
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            params = {k: v[-1] for k, v in query.items()}
            loop = asyncio.get_running_loop()
            status, body = await loop.run_in_executor(None, lambda: self._render(build, params))
            dur = (time.perf_counter() - t0) * 1000
            await send_response(
                send,
                status,
                body,
                [
                    _HTML,
                    (b"cache-control", b"no-store"),
                    (b"server-timing", f"app;dur={dur:.1f}".encode()),
                ],
            )

        return handler

    def _render(self, build: Any, params: dict[str, str]) -> tuple[int, bytes]:
        if self.gw.store is None:
            return 503, self._html("message.html", title="Not ready", message="The gateway is starting.")
        status, template, ctx = build(params)
        return status, self._html(template, **ctx)

    def _html(self, template: str, **ctx: Any) -> bytes:
        return self.env.get_template(template).render(**ctx).encode()

    async def _redirect(self, send: Send, location: str, cookie: str | None = None) -> None:
        headers = [(b"location", location.encode("latin-1", "replace")), (b"cache-control", b"no-store")]
        if cookie is not None:
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        await send_response(send, 303, b"", headers)

    async def static(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A file of `ui/static/` (public: no secrets in it)."""
        name, ctype = _STATIC[scope["path"]]
        body = self._static.get(name)
        if body is None:
            body = self._static[name] = (_HERE / "static" / name).read_bytes()
        await send_response(
            send, 200, body, [(b"content-type", ctype), (b"cache-control", b"public, max-age=300")]
        )

    async def login_form(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin key form."""
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        body = self._html(
            "login.html",
            title="Sign in",
            next=_safe_next(query.get("next", ["/ui"])[-1]),
            error=query.get("error", [""])[-1],
            configured=(self._admin() is not None and self._admin().sha256 is not None),
        )
        await send_response(send, 200, body, [_HTML, (b"cache-control", b"no-store")])

    async def login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the admin key posted by the form; on success set the session cookie."""
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if len(raw) > 16_384:
                break
            if not msg.get("more_body"):
                break
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
        key = form.get("key", [""])[-1].strip()
        nxt = _safe_next(form.get("next", ["/ui"])[-1])
        auth = self._admin()
        if (
            auth is None
            or auth.sha256 is None
            or not key
            or not hmac.compare_digest(hash_key(key), auth.sha256)
        ):
            await self._redirect(send, "/ui/login?error=1&next=" + urllib.parse.quote(nxt))
            return
        digest = auth.sha256
        cookie = (
            f"{_COOKIE}={self._session_value(digest)}; Path=/ui; Max-Age={SESSION_TTL_S}; HttpOnly; "
            "SameSite=Strict"
        )
        await self._redirect(send, nxt, cookie)

    async def logout(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Clear the session cookie."""
        await self._redirect(send, "/ui/login", f"{_COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict")

    # ---- pages (run off the event loop) ---------------------------------------------------------
    def _common(self, page: str) -> dict[str, Any]:
        return {"page": page, "demo": bool(getattr(getattr(self.gw.config, "admin", None), "demo", False))}

    def overview(self, params: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        window = params.get("window", "all")
        if window not in _WINDOWS:
            window = "all"
        data = self.data
        agg = data.refresh()
        hours = _WINDOWS[window]
        since_hour = None if hours is None else int(time.time() // 3600) - hours + 1
        total = agg.select(since_hour).get(None)
        by_model = agg.select(since_hour, by=lambda k: k[2])
        by_alias = agg.select(since_hour, by=lambda k: k[1])
        starts, per_alias, width = series(agg, lambda k: k[1], since_hour)
        _, per_model, _ = series(agg, lambda k: k[2], since_hour)
        labels = [_hour_label(h, width) for h in starts]
        c_starts, c_cost, c_base, c_per, c_width = cumulative(agg, since_hour)
        c_labels = [_hour_label(h, c_width) for h in c_starts]
        gw = self.gw
        breakers = {n: b.state for n, b in gw.executor.breakers.items()}
        budgets = []
        # every live key: the config file's and the admin API's (the budget manager holds both)
        live = gw.budgets.keys.values() if gw.budgets is not None else gw.config.keys
        for k in sorted(live, key=lambda k: k.id):
            use = gw.budgets.usage(k.id) if gw.budgets is not None else {}
            budgets.append(
                {
                    "id": k.id,
                    "day": use.get("day_spent", 0.0),
                    "day_budget": k.budget_usd_day,
                    "month": use.get("month_spent", 0.0),
                    "month_budget": k.budget_usd_month,
                }
            )
        ctx = {
            **self._common("overview"),
            "title": "Overview",
            "window": window,
            "windows": list(_WINDOWS),
            "total": total,
            "assumption": ASSUMPTION,
            "models": sorted(by_model.items(), key=lambda kv: -kv[1].requests),
            "aliases": sorted(by_alias.items(), key=lambda kv: -kv[1].requests),
            "breakers": breakers,
            "budgets": budgets,
            "chart_alias": charts.line_chart(labels, _top(per_alias), title="requests per alias"),
            "chart_model": charts.line_chart(labels, _top(per_model), title="requests per model"),
            "chart_spend": charts.line_chart(
                c_labels,
                {"always the strongest": c_base, "spend": c_cost},
                y_format=_usd,
                title="cumulative spend vs always the strongest candidate",
            ),
            "chart_saving": charts.line_chart(
                c_labels, {"saving per request": c_per}, y_format=_usd, title="saving per request"
            ),
            "bucket_hours": width,
        }
        return 200, "overview.html", ctx

    def decisions(self, params: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        data = self.data
        data.refresh()
        try:
            offset = min(max(0, int(params.get("offset", "0") or 0)), _MAX_OFFSET)
        except ValueError:
            offset = 0
        since = params.get("since", "")
        hours = _WINDOWS.get(since)
        filters = {
            "model": params.get("model") or None,
            "alias": params.get("alias") or None,
            "key_id": params.get("key") or None,
            "rule": params.get("rule") or None,
            "status": params.get("status") or None,
            "request_id": params.get("q") or None,
            "since": None if hours is None else time.time() - hours * 3600,
        }
        rows = data.decisions(**filters, limit=50, offset=offset)
        # policy rules, the config's rules and any rule seen firing in the traces
        configured = [
            str(r.get("name")) for r in self.gw.config.rules if isinstance(r, dict) and r.get("name")
        ]
        rules = ["tradeoff", "threshold", *sorted(set(configured) | data.agg.rules)]
        ctx = {
            **self._common("decisions"),
            "title": "Decisions",
            "rows": rows,
            "params": params,
            "options": data.distinct(),
            "rules": rules,
            "windows": list(_WINDOWS),
            "offset": offset,
            "next_query": urllib.parse.urlencode({**params, "offset": offset + 50}),
        }
        return 200, "decisions.html", ctx

    def decision(self, params: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        rid = params.get("id", "")
        d = self.data.decision(rid) if rid else None
        if d is None:
            return (
                404,
                "message.html",
                {**self._common("decisions"), "title": "Not found", "message": f"No request {rid[:64]!r}."},
            )
        extra = d.get("extra") if isinstance(d.get("extra"), dict) else {}
        ctx = {
            **self._common("decisions"),
            "title": f"Decision {rid[:12]}",
            "d": d,
            "extra": extra,
            "rules": extra.get("rules"),
            "policy": extra.get("policy"),
            "cascade": extra.get("cascade"),
            "cache": extra.get("cache"),
            "strongest": (
                max(
                    (c for c in d["candidates"] if isinstance(c.get("expected_quality"), int | float)),
                    key=lambda c: (c["expected_quality"], c.get("expected_cost") or 0),
                    default={},
                ).get("model")
            ),
        }
        return 200, "decision.html", ctx

    def quality(self, params: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        pts = self.data.feedback()
        per: dict[str, list[float]] = {}
        for m, eq, fq in pts:
            a = per.setdefault(m, [0.0, 0.0, 0.0])
            a[0] += 1
            a[1] += eq
            a[2] += fq
        models = [
            {"model": m, "n": int(a[0]), "expected": a[1] / a[0], "feedback": a[2] / a[0]}
            for m, a in sorted(per.items(), key=lambda kv: -kv[1][0])
        ]
        bins = calibration(pts)
        ctx = {
            **self._common("quality"),
            "title": "Quality",
            "n": len(pts),
            "models": models,
            "chart": charts.scatter_chart(
                [(e, f, f"n={n}") for e, f, n in bins],
                x_label="expected quality (router)",
                y_label="feedback quality",
                diagonal=True,
                line=[(e, f) for e, f, _ in bins],
                title="calibration",
            )
            if bins
            else "",
        }
        return 200, "quality.html", ctx

    def playground(self, params: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        gw = self.gw
        ctx = {
            **self._common("playground"),
            "title": "Playground",
            "aliases": sorted(gw.engine.plans),
            "needs_key": gw.auth.enabled,
        }
        return 200, "playground.html", ctx

    def router(self, params: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        gw = self.gw
        routers = []
        for name, r in gw.engine.routers.items():
            info = dict(getattr(r, "info", {}) or {})
            mean_q = info.get("mean_quality") or {}
            points = []
            for m in gw.config.models:
                q = mean_q.get(m.estimated_by)
                if isinstance(q, int | float):
                    price = (m.input_per_mtok + m.output_per_mtok) / 2
                    points.append((max(price, 1e-3), float(q), m.name))
            curve = info.get("curve")
            line: list[tuple[float, float]] = []
            if isinstance(curve, list):
                line = [
                    (float(p["cost"]), float(p["quality"]))
                    for p in curve
                    if isinstance(p, dict) and "cost" in p and "quality" in p
                ]
            if not line:
                line = _frontier(points)
            routers.append(
                {
                    "name": name,
                    "ref": gw.config.routers.get(name, ""),
                    "info": info,
                    "columns": sorted(mean_q.items(), key=lambda kv: -kv[1]),
                    "points": points,
                    "chart": charts.scatter_chart(
                        points,
                        x_label="price, USD per 1M tokens (mean of input and output)",
                        y_label="mean quality on training prompts",
                        log_x=True,
                        line=line,
                        title=f"cost-quality of router {name}",
                    ),
                    "aliases": [a for a, p in gw.engine.plans.items() if p.router is r],
                }
            )
        ctx = {**self._common("router"), "title": "Router", "routers": routers}
        return 200, "router.html", ctx


def _frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float]]:
    """The cost-quality frontier: from the cheapest point, each next point that is better."""
    out: list[tuple[float, float]] = []
    best = -math.inf
    for x, y, _ in sorted(points):
        if y > best:
            out.append((x, y))
            best = y
    return out


def _top(series_: dict[str, list[int]], n: int = 8) -> dict[str, list[int]]:
    """The `n` largest series; the rest summed as "other"."""
    ranked = sorted(series_.items(), key=lambda kv: -sum(kv[1]))
    out = dict(ranked[:n])
    rest = ranked[n:]
    if rest:
        out["other"] = [sum(v) for v in zip(*(s for _, s in rest), strict=True)]
    return out


#: The largest explorer offset taken (SQLite integers are 64-bit: a larger one was a 500).
_MAX_OFFSET = 2**40


def _shared_secret(folder: Path) -> bytes:
    """The 32-byte secret in `folder/ui-session.key`, made (atomically, mode 0600) by the first
    worker that asks; the others read the same one."""
    path = folder / "ui-session.key"
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
    except FileNotFoundError:
        pass
    tmp = folder / f"ui-session.key.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another worker made it first: theirs is the one
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def _safe_next(path: str) -> str:
    """A redirect target inside the dashboard (anything else: /ui)."""
    return path if path.startswith("/ui") and "//" not in path and "\\" not in path else "/ui"
