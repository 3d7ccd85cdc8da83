"""The one place where a gateway request becomes a routing decision.

`RoutingEngine.decide(ctx) -> RouteDecision` is called once per request by the app for
`/v1/chat/completions`, `/v1/messages` and `/v1/route`. Order:

1. hooks (`engine.add_hook(fn)`; for rules, guards and the cache of issue 4): each
   `async fn(ctx, engine) -> RouteDecision | None` may return a decision (short-circuit), edit
   `ctx` (e.g. narrow `ctx.allowed`, change `ctx.policy`), or raise `GatewayError` (block);
2. a concrete model name passes through unrouted;
3. an alias is routed: the alias's router estimates quality and cost for the whole conversation
   (`conversation_text`), the alias policy (trade-off / max_cost / min_quality, overridable per
   request via the body field `llmroute: {tradeoff, max_cost, min_quality}`) picks the model, and
   the remaining candidates are ranked for fallback.

Without hooks, router estimates are micro-batched: the requests that reach the router in the
same event-loop turn share one `router.estimate` call (at most `server.route_batch` prompts; each
request is still estimated on its own conversation, nothing is cached). A hook that wants the
default decision calls the synchronous `engine.route(ctx)`.

Routers are anything with `.models` (router column names) and `.estimate(prompts) -> (q, c)`,
(n, m) arrays (`llmroute.router.Router`). A gateway model is estimated by its `router_model`
column; its expected cost uses the gateway's configured prices when set (input tokens from the
text, `expected_output_tokens` output tokens), else the router's own cost estimate.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmroute.gateway.auth import GatewayError
from llmroute.gateway.config import AliasConfig, GatewayConfig, ModelConfig
from llmroute.policy import choose_row

__all__ = [
    "RequestContext",
    "RouteDecision",
    "RouterLike",
    "RoutingEngine",
    "choose_one",
    "conversation_text",
    "load_router",
]


class RouterLike(Protocol):
    """What the gateway needs from a router."""

    models: list[str]

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Expected quality and cost, each (len(prompts), len(models))."""
        ...


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return str(content)


def conversation_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text a router reads: every message's text (system, user, assistant, tool) joined by
    blank lines, so a single user message gives exactly its content."""
    if len(messages) == 1:
        return _text(messages[0].get("content"))
    return "\n\n".join(t for t in (_text(m.get("content")) for m in messages) if t)


@dataclass
class RequestContext:
    """One request on its way to a decision (hooks may read and edit it)."""

    request_id: str
    requested: str
    messages: list[dict[str, Any]]
    body: dict[str, Any]
    key_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    endpoint: str = "chat"
    policy: dict[str, float | None] = field(default_factory=dict)
    allowed: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _text: str | None = None

    @property
    def text(self) -> str:
        """`conversation_text(messages)`, computed once."""
        if self._text is None:
            self._text = conversation_text(self.messages)
        return self._text


@dataclass
class RouteDecision:
    """The chosen model, the ranked fallbacks and why."""

    model: str
    ranked: list[str]
    reason: str
    alias: str | None = None
    router: str | None = None
    expected_quality: dict[str, float] = field(default_factory=dict)
    expected_cost: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def candidates(self) -> list[dict[str, Any]]:
        """Ranked candidates with their estimates (for traces and `/v1/route`)."""
        return [
            {
                "model": m,
                "expected_quality": self.expected_quality.get(m),
                "expected_cost": self.expected_cost.get(m),
            }
            for m in self.ranked
        ]


def choose_one(
    q: list[float],
    c: list[float],
    ok: list[bool],
    *,
    tradeoff: float = 0.0,
    max_cost: float | None = None,
    min_quality: float | None = None,
) -> int:
    """`llmroute.policy.choose` for one row (`ok` = the admissible models), in plain Python: a few
    us instead of ~40 us of numpy calls on the gateway's hot path; see `policy.choose_row`."""
    return choose_row(q, c, tradeoff=tradeoff, max_cost=max_cost, min_quality=min_quality, mask=ok)


def load_router(ref: str, config: GatewayConfig) -> RouterLike:
    """Load a router by config reference: a saved router path or 'builtin:default'."""
    from llmroute.router import Router

    if ref == "builtin:default":
        from llmroute.router import default_router_path

        return Router.load(default_router_path())
    path = config.resolve_path(ref)
    if not path.exists():
        raise FileNotFoundError(
            f"router file {path} not found (routers: give a saved router path or 'builtin:default')"
        )
    return Router.load(path)


Hook = Callable[[RequestContext, "RoutingEngine"], Awaitable["RouteDecision | None"]]


class _AliasPlan:
    """Precomputed per-alias routing data (column indices, prices)."""

    def __init__(
        self,
        name: str,
        alias: AliasConfig,
        router: RouterLike,
        models: list[ModelConfig],
        expected_output_tokens: int,
    ) -> None:
        self.name = name
        self.alias = alias
        self.router = router
        cols = {m: i for i, m in enumerate(router.models)}
        names = alias.candidates or [m.name for m in models if m.estimated_by in cols]
        by_name = {m.name: m for m in models}
        self.models: list[str] = []
        idx: list[int] = []
        for n in names:
            col = by_name[n].estimated_by
            if col not in cols:
                raise ValueError(
                    f"aliases.{name}: model {n!r} maps to router column {col!r}, which router "
                    f"{alias.router!r} does not estimate; set router_model to one of {list(router.models)}"
                )
            self.models.append(n)
            idx.append(cols[col])
        if not self.models:
            raise ValueError(
                f"aliases.{name}: no candidate model maps onto router {alias.router!r} "
                f"(its models: {list(router.models)}); set router_model on some models"
            )
        self.idx = np.asarray(idx, dtype=np.intp)
        self.pin = np.array([by_name[n].input_per_mtok for n in self.models]) / 1e6
        self.pout = np.array([by_name[n].output_per_mtok for n in self.models]) / 1e6
        self.priced = (self.pin + self.pout) > 0
        self.any_priced = bool(self.priced.any())
        self.windows_list = [float(by_name[n].context_window or math.inf) for n in self.models]
        # plain-Python copies for the per-request path (numpy calls cost more than they save on a few columns)
        self.idx_list = [int(j) for j in idx]
        self.cost_rows = [
            (int(j), float(pi), float(po), bool(pr))
            for j, pi, po, pr in zip(idx, self.pin, self.pout, self.priced, strict=True)
        ]
        self.has_windows = any(math.isfinite(w) for w in self.windows_list)
        self.out_tokens = float(expected_output_tokens)


class RoutingEngine:
    """Turns `RequestContext`s into `RouteDecision`s (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        routers: dict[str, RouterLike],
        expected_output_tokens: int = 300,
        batch_size: int | None = None,
    ) -> None:
        self.config = config
        self.batch_size = config.server.route_batch if batch_size is None else batch_size
        self._batchers: dict[int, _Batcher] = {}
        self.routers = routers
        self.models = {m.name: m for m in config.models}
        self.hooks: list[Hook] = []
        self.plans = {
            name: _AliasPlan(name, a, routers[a.router], config.models, expected_output_tokens)
            for name, a in config.aliases.items()
        }

    def add_hook(self, hook: Hook) -> None:
        """Run `hook` before the estimator on every request (issue 4: rules, guards, cache)."""
        self.hooks.append(hook)

    def is_known(self, name: str) -> bool:
        """Whether `name` is a configured model or alias."""
        return name in self.models or name in self.plans

    def estimate(self, alias: str, text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(candidate names, expected quality, expected cost) of an alias's candidates for `text`."""
        plan = self.plans[alias]
        q, c = plan.router.estimate([text])
        qa, ca = self._columns(plan, q[0], c[0], text)
        return plan.models, np.asarray(qa, dtype=float), np.asarray(ca, dtype=float)

    @staticmethod
    def _columns(
        plan: _AliasPlan, qrow: np.ndarray, crow: np.ndarray, text: str
    ) -> tuple[list[float], list[float]]:
        """The alias's candidates' expected quality and cost (configured prices where set)."""
        qr = qrow.tolist() if isinstance(qrow, np.ndarray) else list(qrow)
        cr = crow.tolist() if isinstance(crow, np.ndarray) else list(crow)
        qa = [float(qr[j]) for j in plan.idx_list]
        if plan.any_priced:
            tin = len(text) / 4.0
            out = plan.out_tokens
            ca = [tin * pi + out * po if pr else float(cr[j]) for j, pi, po, pr in plan.cost_rows]
        else:
            ca = [float(cr[j]) for j in plan.idx_list]
        return qa, ca

    async def decide(self, ctx: RequestContext) -> RouteDecision:
        """The routing decision for one request (raises 404 `GatewayError` for unknown names)."""
        for hook in self.hooks:
            d = await hook(ctx, self)
            if d is not None:
                return d
        if self.batch_size > 1:
            return await self.route_async(ctx)
        return self.route(ctx)

    def _plan(self, ctx: RequestContext) -> _AliasPlan | None:
        name = ctx.requested
        if name in self.models:
            return None
        plan = self.plans.get(name)
        if plan is None:
            raise GatewayError(
                404,
                f"The model {name!r} does not exist on this gateway. Use GET /v1/models to list "
                "models and aliases.",
                code="model_not_found",
                param="model",
            )
        return plan

    def route(self, ctx: RequestContext) -> RouteDecision:
        """The decision without hooks (a hook calls this to decorate the default decision)."""
        plan = self._plan(ctx)
        if plan is None:
            return RouteDecision(model=ctx.requested, ranked=[ctx.requested], reason="direct")
        q, c = plan.router.estimate([ctx.text])
        return self._decision(ctx, plan, *self._columns(plan, q[0], c[0], ctx.text))

    async def route_async(self, ctx: RequestContext) -> RouteDecision:
        """`route`, with the router estimate micro-batched across concurrent requests: requests
        that reach this point in the same event-loop turn share one `router.estimate` call (up to
        `batch_size` prompts). Every request is still estimated on its own text; nothing is cached."""
        plan = self._plan(ctx)
        if plan is None:
            return RouteDecision(model=ctx.requested, ranked=[ctx.requested], reason="direct")
        batcher = self._batchers.get(id(plan.router))
        if batcher is None:
            batcher = self._batchers[id(plan.router)] = _Batcher(plan.router, self.batch_size)
        qrow, crow = await batcher.estimate(ctx.text)
        return self._decision(ctx, plan, *self._columns(plan, qrow, crow, ctx.text))

    def _decision(
        self, ctx: RequestContext, plan: _AliasPlan, q: list[float], c: list[float]
    ) -> RouteDecision:
        name = plan.name
        names = plan.models
        m = len(names)
        ok = [True] * m
        if ctx.allowed is not None:
            allowed = set(ctx.allowed)
            ok = [n in allowed for n in names]
            if not any(ok):
                raise GatewayError(
                    403,
                    f"no candidate of {name!r} is allowed for this request",
                    type="permission_error",
                    code="model_not_allowed",
                    param="model",
                )
        if plan.has_windows:
            tin = len(ctx.text) / 4.0
            ok = [o and tin <= w for o, w in zip(ok, plan.windows_list, strict=True)]
        pol = plan.alias
        policy = ctx.policy
        tradeoff = policy.get("tradeoff", pol.tradeoff) if policy else pol.tradeoff
        max_cost = policy.get("max_cost", pol.max_cost) if policy else pol.max_cost
        min_quality = policy.get("min_quality", pol.min_quality) if policy else pol.min_quality
        tradeoff = pol.tradeoff if tradeoff is None else float(tradeoff)
        pick = choose_one(q, c, ok, tradeoff=tradeoff, max_cost=max_cost, min_quality=min_quality)
        inf = math.inf
        score = [
            (qj if math.isfinite(qj) else -inf) - (tradeoff * cj if math.isfinite(tradeoff) else cj * 1e12)
            if math.isfinite(cj)
            else (qj if math.isfinite(qj) else -inf)
            for qj, cj in zip(q, c, strict=True)
        ]
        order = sorted((j for j in range(m) if ok[j] and j != pick), key=lambda j: (-score[j], c[j]))
        ranked = [names[pick]] + [names[j] for j in order]
        eq = dict(zip(names, q, strict=True))
        ec = dict(zip(names, c, strict=True))
        parts = [
            f"alias={name}",
            f"pick={names[pick]}",
            f"q={q[pick]:.3f}",
            f"cost={c[pick]:.2e}",
            f"lambda={tradeoff:g}",
        ]
        if max_cost is not None:
            parts.append(f"max_cost={max_cost:g}")
        if min_quality is not None:
            parts.append(f"min_quality={min_quality:g}")
        parts.append(f"of={m}")
        return RouteDecision(
            model=names[pick],
            ranked=ranked,
            reason=" ".join(parts),
            alias=name,
            router=pol.router,
            expected_quality=eq,
            expected_cost=ec,
        )


class _Batcher:
    """Collects the prompts of one event-loop turn and estimates them in one router call."""

    def __init__(self, router: RouterLike, max_batch: int) -> None:
        self.router = router
        self.max_batch = max_batch
        self.pending: list[tuple[str, asyncio.Future[tuple[np.ndarray, np.ndarray]]]] = []

    def estimate(self, text: str) -> asyncio.Future[tuple[np.ndarray, np.ndarray]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[np.ndarray, np.ndarray]] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((text, fut))
        return fut

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for k in range(0, len(pending), self.max_batch):
            chunk = [(t, f) for t, f in pending[k : k + self.max_batch] if not f.done()]
            if not chunk:
                continue
            try:
                q, c = self.router.estimate([t for t, _ in chunk])
            except Exception as e:
                for _, f in chunk:
                    if not f.done():
                        f.set_exception(e)
                continue
            for i, (_, f) in enumerate(chunk):
                if not f.done():
                    f.set_result((q[i], c[i]))
