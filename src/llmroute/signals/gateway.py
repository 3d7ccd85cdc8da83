"""The gateway hook for rules, guards and the response cache (issue 4).

`GatewayGuard(config, routers)` is built by the gateway when its config has `rules:` or
`cache:`; `guard.hook` is registered with `RoutingEngine.add_hook` and runs before the router:

1. rules: evaluate the `signals:`/`rules:` sections on the request. A block raises a
   `GatewayError` (status from the rule, code `blocked_by_rule`, header `x-llmroute-rules`);
   redaction rewrites the forwarded messages; `set` overrides the policy (trade-off, budget,
   allowed models; over the caller's own values too, and the response says so in
   `x-llmroute-rule` and `x-llmroute-tradeoff`, see `RouteDecision.headers`); a route action
   pins a model or switches the alias.
2. cache: look the (redacted) request up; on a hit the decision carries `cache_hit` in
   `ctx.extra` and the gateway answers from the cache (stream replayed as SSE).
3. the default decision (`engine.route(ctx)`) is decorated: `reason` gets a compact
   `rules: ...` / `cache: ...` suffix (the `x-llmroute-reason` header) and `extra` the full
   verdict trace and cache info (the decision trace).

`guard.store(ctx, response)` caches a completed response (called by the gateway after a 200).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmroute.cache import CacheHit, SemanticCache
from llmroute.signals.engine import RuleEngine, Verdict


class GatewayGuard:
    """Rules + guards + cache for one gateway (see the module docstring)."""

    def __init__(
        self, config: Any, routers: dict[str, Any], *, encoder: Any = None, redis_client: Any = None
    ) -> None:
        self.config = config
        self.routers = routers
        first = next(iter(routers.values()), None)
        if encoder is None:
            encoder = getattr(first, "encoder", None) or "static-minilm"
        base = Path(getattr(config, "base_dir", ".") or ".")
        self.rules: RuleEngine | None = None
        if config.rules:
            self.rules = RuleEngine({"signals": config.signals, "rules": config.rules}, encoder=encoder,
                                    router=first, base_dir=base)  # fmt: skip
            self.rules.warm()
            encoder = self.rules.encoder or encoder
        self.cache: SemanticCache | None = None
        cfg = dict(config.cache or {})
        if cfg and cfg.get("enabled", True):
            if cfg.get("backend", "sqlite") == "sqlite" and cfg.get("path") not in (None, ":memory:"):
                resolve = getattr(config, "resolve_path", None)
                p = Path(cfg["path"])
                cfg["path"] = str(
                    resolve(cfg["path"]) if resolve is not None else p if p.is_absolute() else base / p
                )
            self.scope_by = cfg.pop("scope", "alias+key")
            if self.scope_by not in ("alias+key", "alias", "global"):
                raise ValueError("cache.scope must be 'alias+key', 'alias' or 'global'")
            if isinstance(encoder, str | dict) and cfg.get("semantic", True):
                from llmroute.signals.hashenc import resolve_encoder

                encoder = resolve_encoder(encoder)
            trace = getattr(config, "trace", None)
            self.cache = SemanticCache.from_config(
                cfg,
                encoder,
                redis_client=redis_client,
                store_prompts=bool(getattr(trace, "store_prompts", False)),
            )

    # ---- request path --------------------------------------------------------------------------
    def _scope(self, ctx: Any) -> str:
        if self.scope_by == "global":
            return ""
        if self.scope_by == "alias":
            return str(ctx.requested)
        return f"{ctx.requested}|{ctx.key_id or ''}"

    def _router_for(self, engine: Any, name: str) -> Any:
        plan = getattr(engine, "plans", {}).get(name)
        return plan.router if plan is not None else next(iter(self.routers.values()), None)

    async def hook(self, ctx: Any, engine: Any) -> Any:
        """`RoutingEngine` hook: returns the (decorated) decision or raises `GatewayError`."""
        from llmroute.gateway.auth import GatewayError
        from llmroute.gateway.routing import RouteDecision

        verdict: Verdict | None = None
        if self.rules is not None:
            verdict = self.rules.evaluate(ctx.messages, tools=ctx.body.get("tools"), alias=ctx.requested,
                                          key=ctx.key_id, router=self._router_for(engine, ctx.requested))  # fmt: skip
            ctx.extra["rules"] = verdict.trace()
            if verdict.blocked:
                err = GatewayError(
                    verdict.status, f"{verdict.message} (rule {verdict.rule!r})", code="blocked_by_rule",
                    headers={"x-llmroute-rules": verdict.header()},
                )  # fmt: skip
                err.trace_extra = {"rules": ctx.extra["rules"]}  # the trace record explains the block
                raise err
            if verdict.redacted:
                ctx.messages = verdict.messages
                ctx.body["messages"] = verdict.messages
                ctx._text = None
            set_by = {}
            for k in ("tradeoff", "max_cost", "min_quality"):
                if k in verdict.overrides:
                    ctx.policy[k] = verdict.overrides[k]
                    set_by[k] = verdict.set_by.get(k, verdict.rule or "")
            if "allowed" in verdict.overrides:
                set_by["allowed"] = verdict.set_by.get("allowed", verdict.rule or "")
            if set_by:  # the decision names these rules in its reason and response headers
                ctx.extra["policy_set_by"] = set_by
            if "allowed" in verdict.overrides:
                allowed = list(verdict.overrides["allowed"])
                ctx.allowed = allowed if ctx.allowed is None else [m for m in ctx.allowed if m in allowed]
            alias = verdict.target.get("alias")
            if alias is not None:
                if not engine.is_known(alias):
                    raise GatewayError(500, f"rule {verdict.rule!r} routes to unknown alias {alias!r}",
                                       type="server_error", code="bad_rule_target")  # fmt: skip
                ctx.requested = alias
        hit: CacheHit | None = None
        if self.cache is not None and ctx.endpoint != "route":
            scope = self._scope(ctx)
            ctx.extra["cache_scope"] = scope
            hit = self.cache.lookup(ctx.messages, scope=scope, params=ctx.body)
        if hit is not None:
            ctx.extra["cache_hit"] = hit
            served = str(hit.response.get("model") or ctx.requested)
            decision = RouteDecision(model=ctx.requested if ctx.requested in engine.models else served,
                                     ranked=[], reason="cache", alias=ctx.requested)  # fmt: skip
        elif verdict is not None and "model" in verdict.target:
            m = verdict.target["model"]
            if m not in engine.models:
                raise GatewayError(500, f"rule {verdict.rule!r} routes to unknown model {m!r}",
                                   type="server_error", code="bad_rule_target")  # fmt: skip
            decision = RouteDecision(model=m, ranked=[m], reason="rule")
        else:
            decision = engine.route(ctx)
        suffix = []
        if verdict is not None:
            suffix.append(f"rules: {verdict.header()}")
            decision.extra["rules"] = ctx.extra["rules"]
        if self.cache is not None and ctx.endpoint != "route":
            suffix.append(f"cache: {hit.header() if hit else 'miss'}")
            decision.extra["cache"] = hit.info() if hit else {"hit": False}
        if suffix:
            decision.reason = f"{decision.reason} | {' | '.join(suffix)}"
        return decision

    def store(self, ctx: Any, response: dict[str, Any]) -> None:
        """Cache a completed response for this request (no-op without a cache or on a hit)."""
        if self.cache is None or ctx is None or "cache_hit" in ctx.extra or "cache_scope" not in ctx.extra:
            return
        self.cache.store(ctx.messages, response, scope=ctx.extra["cache_scope"], params=ctx.body)


class CacheCollector:
    """Prometheus collector for the response cache counters (`llmroute_cache_*_total`)."""

    def __init__(self, cache: SemanticCache) -> None:
        self.cache = cache

    def describe(self) -> list[Any]:
        """No up-front description (collected at scrape time)."""
        return []

    def collect(self) -> Any:
        """Yield the cache counters."""
        from prometheus_client.core import CounterMetricFamily

        s = self.cache.stats.as_dict()
        lookups = CounterMetricFamily(
            "llmroute_cache_lookups", "Response cache lookups by result.", labels=["result"]
        )
        lookups.add_metric(["exact_hit"], s["exact_hits"])
        lookups.add_metric(["semantic_hit"], s["semantic_hits"])
        lookups.add_metric(["miss"], s["misses"])
        yield lookups
        stores = CounterMetricFamily("llmroute_cache_stores", "Responses stored in the cache (skipped: not cacheable).",
                                     labels=["result"])  # fmt: skip
        stores.add_metric(["stored"], s["stores"])
        stores.add_metric(["skipped"], s["skipped"])
        yield stores


def register_metrics(guard: GatewayGuard | None, registry: Any) -> None:
    """Export the guard's cache counters on the gateway's Prometheus registry (no-op without a cache)."""
    if guard is not None and guard.cache is not None:
        registry.register(CacheCollector(guard.cache))
