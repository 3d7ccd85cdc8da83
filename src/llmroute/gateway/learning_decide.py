"""The decision side of the gateway's online learning (`llmroute.gateway.learning`, see its
docstring for the design): one alias's learner in one worker (`_AliasLearner`: the router's
embeddings, expected quality and cost per candidate as the learner reads them, and the updates
given to it, made at its next read) and the decisions made with it (`DecideMixin`: `decide`,
`decide_batch`, the routing engine's micro-batch listener, and `_explore_ok`).

The seam: this is what runs per request (benchmarked per request by benchmarks/online_gateway.py);
the outcome side (`llmroute.gateway.learning_outcomes`) runs per outcome and per sync, and the
lifecycle (`llmroute.gateway.learning.Learning`) once per process. `DecideMixin` is a base class
of `Learning` (not used alone): its methods are the gateway's `Learning` methods, so the request
path calls them as before, with no extra indirection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from llmroute.gateway.learning_state import Delta, Outcome
from llmroute.gateway.learning_traces import encode_contexts
from llmroute.online.learner import OnlineLearner

if TYPE_CHECKING:
    from llmroute.gateway.config import LearningConfig
    from llmroute.gateway.routing import RequestContext, RouteDecision

__all__ = ["DecideMixin"]

#: from this many requests of one alias in a micro-batch on, their picks are vectorised
#: (`OnlineLearner.pick_many`, ~40 numpy calls of fixed cost); below, the contexts and the
#: posterior's part by three products (`OnlineLearner.prepare_embeddings`) and the picks request
#: by request in plain floats (`OnlineLearner.pick_rows`): the same choices and probabilities
#: either way. In process the per-request path was the cheaper up to ~24-28 requests (16 before
#: pick_rows; thread CPU per request at 24: 11-12 vs 13-14 us, load ~8.5)
_VECTOR_MIN = 28


class _AliasLearner:
    """One alias's learner in one worker process."""

    def __init__(self, alias: str, cfg: LearningConfig, models: list[str], router: Any) -> None:
        self.alias = alias
        self.cfg = cfg
        self.models = list(models)
        self.index = {m: i for i, m in enumerate(self.models)}
        self.router = router
        # the router's prompt embedding (cached per text by the router: the estimate just made it)
        self._embed = getattr(router, "_embed", None)
        self._batch_embeddings = getattr(router, "batch_embeddings", None)
        if hasattr(router, "keep_batch_embeddings"):
            router.keep_batch_embeddings = True  # so the context below is a cache hit
        self.embed_dim = int(self._embed(["dimension probe"]).shape[1]) if self._embed is not None else 1
        self.learner = self.fresh()
        self.snapshot_id = 0  # the snapshot this learner started from
        self.seq = 0  # the last delta applied
        self.snap_seq = 0  # the seq of the newest snapshot known to this worker
        self.decisions = 0
        self.explored = 0

    def fresh(self) -> OnlineLearner:
        """A learner warm-started from the router (zero residual prior)."""
        c = self.cfg
        return OnlineLearner(
            self.models,
            self.embed_dim,
            method=c.learner,
            max_explore=c.max_explore,
            dim=c.dim,
            prior_var=c.prior_var,
            confidence=c.confidence,
            explore_loss=c.explore_loss,
            explore_decay=c.explore_decay,
            max_pending=1,  # updates use the features stored in the trace, not the learner's own map
            seed=c.seed,
        )

    def configure(self, learner: OnlineLearner) -> OnlineLearner:
        """Apply the config's choice settings to a restored learner (its seed per process)."""
        c = self.cfg
        learner.method, learner.max_explore, learner.confidence = c.learner, c.max_explore, c.confidence
        learner.explore_loss, learner.explore_decay = c.explore_loss, c.explore_decay
        learner.max_pending = 1
        learner.rng = np.random.default_rng([c.seed, os.getpid()])
        return learner

    def compatible(self, learner: OnlineLearner) -> bool:
        return (
            learner.models == self.models
            and learner.embed_dim == self.embed_dim
            and learner.dim == self.cfg.dim
        )

    def embedding(self, text: str) -> np.ndarray:
        if self._embed is None:
            return np.zeros(1)
        return self._embed([text])[0]  # float32: the context's product with the projection is float64

    def embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(B, embed_dim) prompt embeddings from the router's cache (the estimate just made them)."""
        if self._embed is None:
            return np.zeros((len(texts), 1))
        if self._batch_embeddings is not None:  # the router's last micro-batch, kept whole
            return self._batch_embeddings(texts)
        return np.concatenate([self._embed([t]) for t in texts])

    def fills(self, d: RouteDecision) -> tuple[list[float], list[float]]:
        """The decision's expected quality and cost per model as the learner fills them
        (`OnlineLearner._fill_list`: NaN or missing = no estimate); the usual case (every model
        estimated, finite) without the fill's checks."""
        eq, ec = d.expected_quality, d.expected_cost
        try:
            q = [float(eq[m]) for m in self.models]
            c = [float(ec[m]) for m in self.models]
        except KeyError:
            q = [float(eq.get(m, math.nan)) for m in self.models]
            c = [float(ec.get(m, math.nan)) for m in self.models]
        if math.isfinite(sum(q)) and math.isfinite(sum(c)):
            return q, c
        return self.learner._fill_list(q, c)

    def mask(self, ranked: Sequence[str]) -> list[bool] | None:
        """The models of `ranked` (the decision's admissible candidates) as the learner's
        allowed mask; None when every model is admissible."""
        if len(ranked) >= len(self.models) and all(m in ranked for m in self.models):
            return None
        return [m in ranked for m in self.models]

    @property
    def learner(self) -> OnlineLearner:
        """The alias's learner, with every outcome given to `learn` in it."""
        if self._unlearned:
            self.catch_up()
        return self._learner

    @learner.setter
    def learner(self, learner: OnlineLearner) -> None:
        self._learner = learner
        self._unlearned: list[tuple[Outcome, float]] = []

    def learn(self, o: Outcome, weight: float = 1.0) -> None:
        """Learn this worker's own outcome now (weight -1: undo it), before it has a seq: the
        update a pulled `Delta` of it would make. Every read of `learner` (a decision, stats, a
        snapshot) sees it; the updates given since the last read are made then, one rank-k
        update per model (one cold rank-1 update per outcome cost ~30 us in the gateway, ~7 us
        in a loop)."""
        if weight < 0:  # the undo of an outcome not made yet: drop it
            for i in range(len(self._unlearned) - 1, -1, -1):
                if self._unlearned[i][0] is o and self._unlearned[i][1] > 0:
                    del self._unlearned[i]
                    return
        self._unlearned.append((o, weight))

    def catch_up(self) -> None:
        """Make the updates `learn` was given (in order per model)."""
        todo, self._unlearned = self._unlearned, []
        per_model: dict[int, list[tuple[Outcome, float]]] = {}
        for o, w in todo:
            per_model.setdefault(self.index[o.model], []).append((o, w))
        for j, rows in per_model.items():
            self._observe(
                j,
                [o.x for o, _ in rows],
                [o.residual for o, _ in rows],
                [o.cost_residual for o, _ in rows],
                [w for _, w in rows],
            )

    def _observe(
        self,
        j: int,
        xs: Sequence[np.ndarray],
        residuals: Sequence[float],
        costs: Sequence[float | None],
        weights: Sequence[float],
    ) -> None:
        """Model `j`'s terms: `observe` each below 3 (what `observe_many` runs, without
        stacking them first), else one rank-k update (`observe_many`)."""
        lr = self._learner
        if len(xs) < 3:
            for x, r, c, w in zip(xs, residuals, costs, weights, strict=True):
                lr.observe(x, j, float(r), c, float(w))
            return
        lr.observe_many(np.array(xs), j, np.array(residuals), list(costs), np.array(weights))

    def apply(self, deltas: Sequence[Delta]) -> None:
        """Learn the deltas after `seq` (one rank-k update per model, `observe_many`)."""
        lr = self.learner
        per_model: dict[int, list[Delta]] = {}
        for d in deltas:
            if d.seq <= self.seq:
                continue
            j = self.index.get(d.model)
            if j is not None and not d.learned and d.x.shape[0] == lr.dim + 2:
                per_model.setdefault(j, []).append(d)
            self.seq = d.seq  # a `learned` term (this worker's own, learned when it came): passed
        for j, ds in per_model.items():
            self._observe(
                j,
                [d.x for d in ds],
                [d.residual for d in ds],
                [d.cost_residual for d in ds],
                [d.weight for d in ds],
            )


def _explore_ok(ctx: RequestContext, d: RouteDecision) -> bool:
    """Whether a decision may explore: a plain trade-off choice (see the module docstring)."""
    pol = d.policy
    if ctx.endpoint == "route" or pol.get("rule") != "tradeoff" or pol.get("set_by"):
        return False
    if pol.get("max_cost") is not None or pol.get("min_quality") is not None or "strong_share" in pol:
        return False
    sticky = d.extra.get("sticky") if d.extra else None
    if sticky is not None and sticky.get("state") == "held":
        return False
    lam = pol.get("tradeoff")
    return isinstance(lam, int | float) and math.isfinite(lam)


class DecideMixin:
    """`Learning.decide`, `decide_batch` and `_decide_alias`; the attributes below are the
    `Learning`'s (`Learning.__init__`)."""

    aliases: dict[str, _AliasLearner]
    metrics: Any

    def decide(self, ctx: RequestContext, d: RouteDecision) -> None:
        """Let the alias's learner make (or only record) the decision `d` (edited in place); a
        decision already made with its micro-batch (`decide_batch`) is left as it is."""
        if d.learning is None:
            self.decide_batch([(ctx, d)])

    def decide_batch(self, pairs: Sequence[tuple[RequestContext, RouteDecision]]) -> None:
        """`decide` for the requests of one micro-batch (the routing engine's batch listener),
        per alias in one vectorised step: the contexts by one product with the projection, the
        posterior's part by one product with the factors kept per update
        (`OnlineLearner.prepare`), the pick probabilities and the draws over the whole batch
        (`OnlineLearner.pick_many`: one uniform per request whose choice is random)."""
        by_alias: dict[str, list[tuple[RequestContext, RouteDecision]]] = {}
        for ctx, d in pairs:
            al = self.aliases.get(d.alias or "")
            if al is not None and d.learning is None and d.model in al.index and d.policy:
                by_alias.setdefault(al.alias, []).append((ctx, d))
        for name, items in by_alias.items():
            self._decide_alias(self.aliases[name], items)

    def _decide_alias(self, al: _AliasLearner, items: list[tuple[RequestContext, RouteDecision]]) -> None:
        lr, models = al.learner, al.models
        E = al.embeddings([ctx.text for ctx, _ in items])
        fills = [al.fills(d) for _, d in items]
        lams = [float(d.policy.get("tradeoff") or 0.0) for _, d in items]
        rows = [i for i, (ctx, d) in enumerate(items) if _explore_ok(ctx, d)]
        picked: dict[int, tuple[int, int, float]] = {}
        if len(rows) < _VECTOR_MIN:  # a few requests: three products, then plain floats
            X32, TX, XAX, AXK = lr.prepare_embeddings(E)
        else:
            X = lr.context_batch(E)
            X32 = X.astype(np.float32)  # what the trace stores
        if rows:
            masks = [al.mask(items[i][1].ranked) for i in rows]
            if len(rows) >= _VECTOR_MIN:  # numpy's fixed cost per call pays off
                tx, xax, axk = lr.prepare(X if len(rows) == len(items) else X[rows])
                allowed = (
                    None
                    if all(mk is None for mk in masks)
                    else np.array([[True] * len(models) if mk is None else mk for mk in masks])
                )
                chs, gs, probs = lr.pick_many(
                    np.array([fills[i][0] for i in rows]),
                    np.array([fills[i][1] for i in rows]),
                    np.array([lams[i] for i in rows]),
                    allowed,
                    tx,
                    xax,
                    axk,
                )
                ch, g = chs.tolist(), gs.tolist()
                props = probs[np.arange(len(rows)), chs].tolist()
            else:  # a few requests: the same pick in plain floats, request by request
                ch, g, props = lr.pick_rows(
                    [fills[i][0] for i in rows],
                    [fills[i][1] for i in rows],
                    [lams[i] for i in rows],
                    masks,
                    [TX[i] for i in rows],
                    [XAX[i] for i in rows],
                    [AXK[i] for i in rows],
                )
            picked = dict(zip(rows, zip(ch, g, props, strict=True), strict=True))
        xs = encode_contexts(X32)
        method = lr.method
        n_explored = 0
        for i, (_, d) in enumerate(items):
            p = picked.get(i)
            if p is None:
                model, prop, explored, greedy = d.model, 1.0, False, d.model
            else:
                model, prop, explored, greedy = models[p[0]], p[2], p[0] != p[1], models[p[1]]
                if model != d.model:
                    d.ranked = [model] + [m for m in d.ranked if m != model]
                    d.model = model
            if explored:
                n_explored += 1
                d.reason += f" learner={method} p={prop:.3g} explored(greedy={greedy})"
            else:
                d.reason += f" learner={method} p={prop:.3g}"
            qf, cf = fills[i]
            d.learning = {
                "propensity": prop,
                "explored": explored,
                "features": {
                    "method": method,
                    "lambda": lams[i],
                    "chosen": model,
                    "greedy": greedy,
                    "x": xs[i],
                    "q0": dict(zip(models, qf, strict=True)),
                    "c0": dict(zip(models, cf, strict=True)),
                },
            }
        al.decisions += len(items)
        al.explored += n_explored
        if self.metrics is not None:  # one event per value of `explored`, not one per request
            if n_explored:
                self.metrics.observe_learning(al.alias, True, n_explored)
            if n_explored < len(items):
                self.metrics.observe_learning(al.alias, False, len(items) - n_explored)
