"""The one place where a gateway request becomes a routing decision.

`RoutingEngine.decide(ctx) -> RouteDecision` is called once per request by the app for
`/v1/chat/completions`, `/v1/messages` and `/v1/route`. Order:

1. hooks (`engine.add_hook(fn)`; for rules, guards and the cache of issue 4): each
   `async fn(ctx, engine) -> RouteDecision | None` may return a decision (short-circuit), edit
   `ctx` (e.g. narrow `ctx.allowed`, change `ctx.policy`), or raise `GatewayError` (block);
2. a concrete model name passes through unrouted;
3. an alias is routed: the alias's router estimates quality and cost for the whole conversation
   (`conversation_text`), the effective policy (below) picks the model, on an alias with
   `sticky:` a conversation stays on the model that answered its earlier turn unless switching
   gains more than the margin (`llmroute.gateway.sticky`), and the remaining candidates are
   ranked for fallback.

Policy of an alias, per request (first that applies):

- the request's own knobs: the body object `llmroute: {tradeoff, max_cost, min_quality,
  strong_share, on_unmet}` (unknown fields are a 400) and a model-name suffix
  (`llmroute/auto@0.3` = `@share=0.3`, `@tradeoff=50`; see `split_model`), then rules (`set`);
- the alias's config (`tradeoff`, `max_cost`, `min_quality`, `on_unmet`);
- the policy stored in the router file: its trade-off and, when it was calibrated
  (`llmroute calibrate`), its strong/weak threshold.

Threshold rule on an alias (the router's calibrated threshold when the alias sets no trade-off,
max_cost or min_quality; or a per-request strong share): the router's strong and weak are router
columns; a candidate stands for the column its `router_model` names. When the strong-minus-weak
score of the prompt reaches the threshold, the pick is the strong column's candidate (the
cheapest by the trade-off when several map to it), else the weak column's; the other candidates
stay fallbacks. A strong share maps to a threshold with the score quantiles the router stored at
fit / calibrate time (`Router.threshold_for_share`). When the alias has no (admissible)
candidate on the strong or the weak column, or max_cost / min_quality are set, the trade-off
rule decides and the reason says why the threshold did not apply.

When no admissible candidate meets max_cost / min_quality the decision says so
(`constraints_met`, `unmet_constraints`, the reason and the `x-llmroute-constraint` header);
`on_unmet: closest` (default) serves the closest candidate (the cheapest / the best),
`on_unmet: reject` answers 422 `constraint_unmet`.

Without hooks, router estimates are micro-batched: the requests that reach the router in the
same event-loop turn share one `router.estimate` call (at most `server.route_batch` prompts; each
request is still estimated on its own conversation, nothing is cached). A hook that wants the
default decision calls the synchronous `engine.route(ctx)`.

Routers are anything with `.models` (router column names) and `.estimate(prompts) -> (q, c)`,
(n, m) arrays (`llmroute.router.Router`). A gateway model is estimated by its `router_model`
column; its expected cost uses the gateway's configured prices when set (input tokens from the
text, `expected_output_tokens` output tokens), else the router's own cost estimate.

The request and decision types, and the parsing of a request's own policy, are in
`llmroute.gateway.routing_types` (importable from here too).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from llmroute.gateway.auth import GatewayError
from llmroute.gateway.config import AliasConfig, GatewayConfig, ModelConfig
from llmroute.gateway.routing_types import (
    SUFFIX_HELP,
    RequestContext,
    RouteDecision,
    RouterLike,
    _bad,
    choose_one,
    constraint_header,
    conversation_text,
    parse_model_suffix,
    parse_request_policy,
)
from llmroute.policy import unmet_constraints

log = logging.getLogger("llmroute.gateway.routing")

__all__ = [
    "SUFFIX_HELP",
    "RequestContext",
    "RouteDecision",
    "RouterLike",
    "RoutingEngine",
    "choose_one",
    "constraint_header",
    "conversation_text",
    "load_router",
    "parse_model_suffix",
    "parse_request_policy",
]


def load_router(ref: str, config: GatewayConfig) -> RouterLike:
    """Load a router by config reference (a saved router path or 'builtin:default'), with the
    configured models that have a `profile:` added (`add_profiled_models`)."""
    from llmroute.router import Router

    if ref == "builtin:default":
        from llmroute.router import default_router_path

        router = Router.load(default_router_path())
    else:
        path = config.resolve_path(ref)
        if not path.exists():
            raise FileNotFoundError(
                f"router file {path} not found (routers: give a saved router path or 'builtin:default')"
            )
        router = Router.load(path)
    add_profiled_models(router, config)
    return router


def add_profiled_models(router: Any, config: GatewayConfig) -> list[str]:
    """Add to `router` every configured model with a `profile:` whose router column it lacks
    (`llmroute.onboard.add_model`: the profile's rows named like the model, or like its
    router_model, or a one-model table; its config price when set). Returns the added columns."""
    from llmroute.data.table import ModelPrice
    from llmroute.onboard import add_model, profile_table

    added: list[str] = []
    for m in config.models:
        col = m.estimated_by
        if not m.profile or col in router.models or col in added:
            continue
        path = config.resolve_path(m.profile)
        if not path.exists():
            raise FileNotFoundError(f"models.{m.name}.profile: {path} not found")
        table = profile_table(path)
        source = m.name if m.name in table.models else col
        priced = m.input_per_mtok > 0 or m.output_per_mtok > 0
        price = ModelPrice(m.input_per_mtok, m.output_per_mtok) if priced else None
        try:
            add_model(router, col, table, price, profile_model=source)
        except ValueError as exc:
            raise ValueError(f"models.{m.name}.profile: {exc}") from exc
        added.append(col)
    return added


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
        # every candidate priced by the config: the router's cost model is not needed
        self.all_priced = bool(self.priced.all())
        self.windows_list = [float(by_name[n].context_window or math.inf) for n in self.models]
        # plain-Python copies for the per-request path (numpy calls cost more than they save on a few columns)
        self.idx_list = [int(j) for j in idx]
        self.cost_rows = [
            (int(j), float(pi), float(po), bool(pr))
            for j, pi, po, pr in zip(idx, self.pin, self.pout, self.priced, strict=True)
        ]
        self.has_windows = any(math.isfinite(w) for w in self.windows_list)
        self.out_tokens = float(expected_output_tokens)
        self._policy_from_router(router, [by_name[n].estimated_by for n in self.models])

    def _policy_from_router(self, router: RouterLike, columns: list[str]) -> None:
        """The router file's policy as it applies to this alias (see the module docstring)."""
        pol = dict(getattr(router, "policy", None) or {})
        self.router_policy = pol
        lam = pol.get("tradeoff")
        self.router_tradeoff = 0.0 if lam is None else float(lam)
        thr = pol.get("threshold")
        self.threshold: float | None = None if thr is None else float(thr)
        strong, weak = pol.get("strong"), pol.get("weak")
        self.strong_col, self.weak_col = strong, weak
        self.strong_idx = [i for i, col in enumerate(columns) if strong is not None and col == strong]
        self.weak_idx = [i for i, col in enumerate(columns) if weak is not None and col == weak]
        # why the threshold rule can never apply on this alias (None: it can)
        self.no_threshold: str | None = None
        if strong is None or weak is None or strong == weak:
            self.no_threshold = "the router has no strong/weak pair"
        elif not self.strong_idx:
            self.no_threshold = f"no candidate maps to the router's strong column {strong!r}"
        elif not self.weak_idx:
            self.no_threshold = f"no candidate maps to the router's weak column {weak!r}"
        self._share_thresholds: dict[float, float] = {}

    def maps_shares(self) -> bool:
        """Whether the router can turn a strong share into a threshold (see `share_threshold`)."""
        pol = self.router_policy
        pair = [pol.get("strong"), pol.get("weak")]
        return bool(pol.get("score_quantiles")) and list(pol.get("score_pair") or ()) == pair

    def share_threshold(self, share: float) -> float:
        """The router's threshold for a strong share (cached per share); a 400 when the router
        cannot map shares (no score distribution stored: never calibrated nor fitted with one)."""
        thr = self._share_thresholds.get(share)
        if thr is not None:
            return thr
        fn = getattr(self.router, "threshold_for_share", None)
        try:
            if fn is None:
                raise ValueError(
                    "its router has no strong/weak calibration; calibrate it with `llmroute calibrate "
                    "--router FILE --prompts FILE --strong-share 0.3 --out FILE` and serve that file"
                )
            thr = float(fn(share))
        except ValueError as e:
            raise GatewayError(
                400,
                f"The model {self.name!r} cannot route by strong share: {e}. Meanwhile use a trade-off "
                f"suffix ({self.name}@tradeoff=50).",
                param="model",
                code="share_not_calibrated",
            ) from None
        if len(self._share_thresholds) < 1024:
            self._share_thresholds[share] = thr
        return thr

    def info(self) -> dict[str, Any]:
        """The alias's effective default policy (for `/v1/models`)."""
        a = self.alias
        own = a.tradeoff is not None or a.max_cost is not None or a.min_quality is not None
        rule = (
            "threshold"
            if not own and self.threshold is not None and self.no_threshold is None
            else "tradeoff"
        )
        out: dict[str, Any] = {
            "rule": rule,
            "tradeoff": a.tradeoff if a.tradeoff is not None else self.router_tradeoff,
            "tradeoff_from": "alias" if a.tradeoff is not None else "router",
            "max_cost": a.max_cost,
            "min_quality": a.min_quality,
            "on_unmet": a.on_unmet,
        }
        if rule == "threshold":
            out.update(
                threshold=self.threshold,
                strong=self.strong_col,
                weak=self.weak_col,
                strong_share=self.router_policy.get("strong_share"),
            )
        suffixes = [f"{self.name}@tradeoff=<lambda>"]
        if self.no_threshold is None and self.maps_shares():
            suffixes.insert(0, f"{self.name}@<strong share 0..1>")
        out["model_suffixes"] = suffixes
        if a.cascade is not None:  # what a client of the alias pays for: several answers per request
            out["cascade"] = a.cascade.model_dump(exclude={"learned_verifier"}) | {
                "next": a.cascade.next_mode,
                "learned_verifier": a.cascade.learned_verifier is not None,
            }
        return out


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
        self._batchers: dict[tuple[int, bool], _Batcher] = {}
        self.routers = routers
        self.models = {m.name: m for m in config.models}
        self.hooks: list[Hook] = []
        # called with each micro-batch's (request, decision) pairs before its requests resume: the
        # online learner decides them there in one vectorised step (llmroute.gateway.learning)
        self.batch_listeners: list[Callable[[list[tuple[RequestContext, RouteDecision]]], None]] = []
        # sticky sessions and implicit outcomes (`llmroute.gateway.sticky.SessionTracker`), set by
        # the gateway; `model_down(name)`: whether the model's circuit breaker is open now
        self.sessions: Any = None
        self.model_down: Callable[[str], bool] | None = None
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

    def split_model(self, name: str) -> tuple[str, dict[str, float]]:
        """(model or alias name, policy from its suffix) for a requested model name.

        `alias@0.3` / `alias@share=0.3` ask for a strong share, `alias@tradeoff=50` for a
        trade-off (RouteLLM's convention, usable from any client). A name without '@', a known
        name, and an unknown base are returned as they are (unknown: a 404 later). A bad suffix
        on an alias, or any suffix on a concrete model, is a 400 naming `model`.
        """
        if "@" not in name or name in self.models or name in self.plans:
            return name, {}
        base, _, suffix = name.rpartition("@")
        if base in self.models:
            raise _bad(
                f"The model {name!r}: suffixes ({SUFFIX_HELP}) apply to routed aliases only; "
                f"{base!r} is a concrete model.",
                "model",
            )
        if base not in self.plans:
            return name, {}
        try:
            return base, parse_model_suffix(suffix)
        except ValueError as e:
            raise _bad(
                f"Bad model suffix '@{suffix}' in {name!r} ({e}); use {SUFFIX_HELP}.", "model"
            ) from None

    def alias_info(self, name: str) -> dict[str, Any]:
        """An alias's effective default policy and the model suffixes it accepts (`/v1/models`)."""
        return self.plans[name].info()

    def estimate(self, alias: str, text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(candidate names, expected quality, expected cost) of an alias's candidates for `text`."""
        plan = self.plans[alias]
        q, c = plan.router.estimate([text])
        qa, ca = self._columns(plan, q[0], c[0], text)
        return plan.models, np.asarray(qa, dtype=float), np.asarray(ca, dtype=float)

    @staticmethod
    def _columns(
        plan: _AliasPlan, qrow: np.ndarray, crow: np.ndarray | None, text: str
    ) -> tuple[list[float], list[float]]:
        """The alias's candidates' expected quality and cost (configured prices where set)."""
        qr = qrow.tolist() if isinstance(qrow, np.ndarray) else list(qrow)
        qa = [float(qr[j]) for j in plan.idx_list]
        if plan.all_priced or crow is None:  # crow is None only when every candidate is priced
            tin = len(text) / 4.0
            out = plan.out_tokens
            return qa, [tin * pi + out * po for _, pi, po, _ in plan.cost_rows]
        cr = crow.tolist() if isinstance(crow, np.ndarray) else list(crow)
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
        if plan.all_priced and hasattr(plan.router, "estimate_quality"):
            qrow, crow = plan.router.estimate_quality([ctx.text])[0], None
        else:
            q, c = plan.router.estimate([ctx.text])
            qrow, crow = q[0], c[0]
        return self._decision(ctx, plan, *self._columns(plan, qrow, crow, ctx.text))

    async def route_async(self, ctx: RequestContext) -> RouteDecision:
        """`route`, with the router estimate micro-batched across concurrent requests: requests
        that reach this point in the same event-loop turn share one `router.estimate` call (up to
        `batch_size` prompts). Every request is still estimated on its own text; nothing is cached."""
        plan = self._plan(ctx)
        if plan is None:
            return RouteDecision(model=ctx.requested, ranked=[ctx.requested], reason="direct")
        quality_only = plan.all_priced and hasattr(plan.router, "estimate_quality")
        bkey = (id(plan.router), quality_only)
        batcher = self._batchers.get(bkey)
        if batcher is None:
            batcher = self._batchers[bkey] = _Batcher(
                plan.router, self.batch_size, quality_only, self.batch_listeners
            )
        return await batcher.decide(
            ctx, lambda q, c: self._decision(ctx, plan, *self._columns(plan, q, c, ctx.text))
        )

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
        req = ctx.policy
        # the effective policy: request (suffix, body, rules) > alias config > router file
        set_by = ctx.extra.get("policy_set_by") if ctx.extra else None
        lam_req = req.get("tradeoff") if req else None
        if lam_req is not None:
            tradeoff, source = float(lam_req), "rule" if set_by and "tradeoff" in set_by else "request"
        elif pol.tradeoff is not None:
            tradeoff, source = pol.tradeoff, "alias"
        else:
            tradeoff, source = plan.router_tradeoff, "router"
        if req:
            max_cost = req.get("max_cost", pol.max_cost)
            min_quality = req.get("min_quality", pol.min_quality)
            share = req.get("strong_share")
            on_unmet = req.get("on_unmet") or pol.on_unmet
        else:
            max_cost, min_quality, share, on_unmet = pol.max_cost, pol.min_quality, None, pol.on_unmet
        eff: dict[str, Any] = {
            "rule": "tradeoff",
            "tradeoff": tradeoff,
            "tradeoff_from": source,
            "max_cost": max_cost,
            "min_quality": min_quality,
            "on_unmet": on_unmet,
        }
        notes: list[str] = []
        # threshold rule: a per-request strong share, or the router's calibrated threshold when
        # neither the request nor the alias sets a policy of its own
        threshold: float | None = None
        if share is not None:
            eff["strong_share"] = share
            share_thr = plan.share_threshold(share)  # a 400 when the router cannot map shares
            if max_cost is not None or min_quality is not None:
                notes.append("strong share not applied: max_cost/min_quality set")
            elif plan.no_threshold is not None:
                notes.append(f"strong share not applied: {plan.no_threshold}")
            else:
                threshold = share_thr
        elif plan.threshold is not None and source == "router" and max_cost is None and min_quality is None:
            if plan.no_threshold is not None:
                notes.append(f"router threshold not applied: {plan.no_threshold}")
            else:
                threshold = plan.threshold
        pick = -1
        if threshold is not None:
            strong_ok = [j for j in plan.strong_idx if ok[j]]
            weak_ok = [j for j in plan.weak_idx if ok[j]]
            if not strong_ok or not weak_ok:
                col = plan.strong_col if not strong_ok else plan.weak_col
                notes.append(f"threshold not applied: no admissible candidate on column {col!r}")
            else:
                score = q[strong_ok[0]] - q[weak_ok[0]]
                side = set(strong_ok if score >= threshold else weak_ok)
                pick = choose_one(q, c, [j in side for j in range(m)], tradeoff=tradeoff)
                eff.update(
                    rule="threshold",
                    threshold=threshold,
                    score=score,
                    strong=plan.strong_col,
                    weak=plan.weak_col,
                )
        if pick < 0:
            pick = choose_one(q, c, ok, tradeoff=tradeoff, max_cost=max_cost, min_quality=min_quality)
            if min_quality is not None:
                eff["rule"] = "min_quality"
        inf = math.inf
        score_l = [
            (qj if math.isfinite(qj) else -inf) - (tradeoff * cj if math.isfinite(tradeoff) else cj * 1e12)
            if math.isfinite(cj)
            else (qj if math.isfinite(qj) else -inf)
            for qj, cj in zip(q, c, strict=True)
        ]
        sticky = None
        if self.sessions is not None:  # sticky sessions (llmroute.gateway.sticky)
            pick, sticky = self._sticky(ctx, plan, q, c, score_l, pick, max_cost, min_quality, eff)
        order = sorted((j for j in range(m) if ok[j] and j != pick), key=lambda j: (-score_l[j], c[j]))
        ranked = [names[pick]] + [names[j] for j in order]
        eq = dict(zip(names, q, strict=True))
        ec = dict(zip(names, c, strict=True))
        unmet: list[str] = []
        if eff["rule"] != "threshold" and (max_cost is not None or min_quality is not None):
            unmet = unmet_constraints(q[pick], c[pick], max_cost=max_cost, min_quality=min_quality)
        if set_by:
            eff["set_by"] = dict(set_by)
        parts = [
            f"alias={name}",
            f"pick={names[pick]}",
            f"q={q[pick]:.3f}",
            f"cost={c[pick]:.2e}",
        ]
        if eff["rule"] == "threshold":
            parts.append(f"threshold={threshold:.3g} score={eff['score']:.3g}")
            if share is not None:
                parts.append(f"share={share:g}")
        else:
            parts.append(f"lambda={tradeoff:g}")
            if source != "alias":
                parts.append(f"lambda_from={source}")
        if max_cost is not None:
            parts.append(f"max_cost={max_cost:g}")
        if min_quality is not None:
            parts.append(f"min_quality={min_quality:g}")
        parts.append(f"of={m}")
        if set_by:
            parts.append("set_by=" + ",".join(f"{k}:{r}" for k, r in set_by.items()))
        if unmet:
            parts.append("unmet=" + ",".join(unmet))
        if sticky is not None:
            parts.append(f"sticky={sticky['state']}" + (f":{sticky['reason']}" if "reason" in sticky else ""))
        reason = " ".join(parts)
        if notes:
            reason += " (" + "; ".join(notes) + ")"
        d = RouteDecision(
            model=names[pick],
            ranked=ranked,
            reason=reason,
            alias=name,
            router=pol.router,
            expected_quality=eq,
            expected_cost=ec,
            policy=eff,
            constraints_met=not unmet,
            unmet_constraints=unmet,
        )
        if eff["rule"] == "threshold" or set_by or unmet or notes:
            d.extra["policy"] = d.summary()
        if sticky is not None:
            d.extra["sticky"] = sticky
        if unmet and on_unmet == "reject":
            raise self._reject(d, max_cost, min_quality)
        return d

    def _sticky(
        self,
        ctx: RequestContext,
        plan: _AliasPlan,
        q: list[float],
        c: list[float],
        reward: list[float],
        pick: int,
        max_cost: float | None,
        min_quality: float | None,
        eff: dict[str, Any],
    ) -> tuple[int, dict[str, Any] | None]:
        """The request's session (`SessionTracker.begin`, kept in `ctx.extra["session"]`) and, on a
        sticky alias, the model to serve: the session's model unless excluded or the pick's reward
        beats it by more than the margin (`llmroute.gateway.sticky`)."""
        from llmroute.gateway.sticky import excluded_reason

        sess = self.sessions.begin(ctx, plan.name)
        if sess is None:
            return pick, None
        ctx.extra["session"] = sess
        threshold = eff["rule"] == "threshold"  # max_cost / min_quality do not apply then
        tin = len(ctx.text) / 4.0

        def excluded(j: int) -> str | None:
            return excluded_reason(
                j,
                pick,
                plan.models,
                q,
                c,
                allowed=ctx.allowed,
                input_tokens=tin,
                windows=plan.windows_list,
                down=self.model_down,
                max_cost=None if threshold else max_cost,
                min_quality=None if threshold else min_quality,
            )

        return self.sessions.choose(sess, plan.models, reward, pick, excluded)

    @staticmethod
    def _reject(d: RouteDecision, max_cost: float | None, min_quality: float | None) -> GatewayError:
        """The 422 for `on_unmet: reject` (names the unmet limit and what to change)."""
        what = []
        if "max_cost" in d.unmet_constraints:
            what.append(
                f"max_cost=${max_cost:.3g} (the closest, {d.model}, is expected to cost "
                f"${d.expected_cost.get(d.model, math.nan):.3g})"
            )
        if "min_quality" in d.unmet_constraints:
            what.append(
                f"min_quality={min_quality:g} (the closest, {d.model}, is expected to reach "
                f"{d.expected_quality.get(d.model, math.nan):.3f})"
            )
        err = GatewayError(
            422,
            f"No candidate of {d.alias!r} meets {' and '.join(what)}. Relax the limit, or send "
            '"llmroute": {"on_unmet": "closest"} to get the closest candidate anyway.',
            code="constraint_unmet",
            param=f"llmroute.{d.unmet_constraints[0]}",
            headers=dict(d.headers()),
        )
        err.trace_extra = {"policy": d.summary(), "candidates": d.candidates()}
        return err


class _Batcher:
    """Collects the requests of one event-loop turn, estimates their prompts in one router call
    and makes their decisions (`RoutingEngine._decision`, given per request).

    With `quality_only` (every candidate of the aliases it serves is priced by the config) it
    calls `router.estimate_quality` and gives `None` for the cost row: the router's cost model
    is skipped. `listeners` are called with the chunk's (request, decision) pairs before the
    requests resume (the online learner decides them together; a listener's error is logged,
    never raised to the requests)."""

    def __init__(
        self,
        router: RouterLike,
        max_batch: int,
        quality_only: bool = False,
        listeners: list[Callable[[list[tuple[RequestContext, RouteDecision]]], None]] | None = None,
    ) -> None:
        self.router = router
        self.max_batch = max_batch
        self.quality_only = quality_only
        self.listeners = listeners if listeners is not None else []
        self.pending: list[
            tuple[
                RequestContext,
                Callable[[np.ndarray, np.ndarray | None], RouteDecision],
                asyncio.Future[RouteDecision],
            ]
        ] = []

    def decide(
        self, ctx: RequestContext, make: Callable[[np.ndarray, np.ndarray | None], RouteDecision]
    ) -> asyncio.Future[RouteDecision]:
        """The decision `make(quality row, cost row)` of `ctx`, once its batch is estimated."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[RouteDecision] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((ctx, make, fut))
        return fut

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for k in range(0, len(pending), self.max_batch):
            chunk = [p for p in pending[k : k + self.max_batch] if not p[2].done()]
            if not chunk:
                continue
            texts = [ctx.text for ctx, _, _ in chunk]
            try:
                if self.quality_only:
                    q = self.router.estimate_quality(texts)  # type: ignore[attr-defined]
                    c = None
                else:
                    q, c = self.router.estimate(texts)
            except Exception as e:
                for _, _, f in chunk:
                    if not f.done():
                        f.set_exception(e)
                continue
            made: list[tuple[RequestContext, RouteDecision, asyncio.Future[RouteDecision]]] = []
            for i, (ctx, make, f) in enumerate(chunk):
                try:
                    made.append((ctx, make(q[i], None if c is None else c[i]), f))
                except Exception as e:  # e.g. 403 no candidate allowed: that request's error
                    f.set_exception(e)
            if self.listeners and made:
                pairs = [(ctx, d) for ctx, d, _ in made]
                for listener in self.listeners:
                    try:
                        listener(pairs)
                    except Exception:  # a listener's failure must not fail the requests
                        log.exception("batch listener %r failed", listener)
            for _, d, f in made:
                if not f.done():
                    f.set_result(d)
