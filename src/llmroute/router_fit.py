"""Fitting routers: `Router.fit` on a routing table (estimator, cost model and policy defaults
learned from it) and `Router.fit_regime_head` (the fitting half of `llmroute.router.Router`,
whose fitting methods are `_RouterFit`'s).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from llmroute.data.table import RoutingTable
from llmroute.estimators.base import Features, QualityEstimator
from llmroute.estimators.cost import CostEstimator
from llmroute.policy import choose, score_quantiles
from llmroute.router_io import _jsonable

if TYPE_CHECKING:
    from llmroute.estimators.regime import RegimeHead
    from llmroute.router import Router


def _resolve_encoder(encoder: Any) -> Any:
    if isinstance(encoder, str | dict):
        from llmroute.embed import load_encoder  # type: ignore[attr-defined]

        return load_encoder(encoder)
    if not hasattr(encoder, "encode"):
        raise TypeError(f"encoder must be a spec (str/dict) or an Encoder, got {type(encoder).__name__}")
    return encoder


def _make_estimator(name: str, seed: int, params: dict[str, Any]) -> QualityEstimator:
    from llmroute.estimators import make_estimator

    params = dict(params)
    sig = inspect.signature(_estimator_cls(name).__init__).parameters
    for key in ("seed", "random_state"):
        if key in sig and key not in params:
            params[key] = seed
    return make_estimator(name, **params)


def _estimator_cls(name: str) -> type[QualityEstimator]:
    from llmroute.estimators import estimator_class

    return estimator_class(name)


class _RouterFit:
    """`Router.fit` and what fitting sets (a mixin of `llmroute.router.Router`)."""

    @classmethod
    def fit(
        cls,
        table: RoutingTable,
        estimator: str | QualityEstimator = "default",
        encoder: Any = "static-minilm",
        seed: int = 0,
        *,
        policy: Mapping[str, Any] | None = None,
        cost_features: bool = True,
        **est_params: Any,
    ) -> Router:
        """Fit a router on `table`.

        estimator: a registry name (knn, linear, mlp, mf, default) or an unfitted estimator;
        encoder: an encoder spec for `llmroute.embed.load_encoder` or an `Encoder`;
        seed: passed to the estimator; policy: defaults overriding the fitted ones;
        cost_features: learn token counts from prompt features (see `CostEstimator`);
        est_params: hyper-parameters for the estimator (unset ones are chosen by CV).
        """
        if table.n_prompts == 0:
            raise ValueError("cannot fit a router on an empty table")
        enc = _resolve_encoder(encoder)
        prompts = table.prompts
        if getattr(enc, "fitted", True) is False and callable(getattr(enc, "fit", None)):
            enc.fit(prompts)  # e.g. TF-IDF: learns its vocabulary from the training prompts only
        if isinstance(estimator, str):
            name = estimator
            est = _make_estimator(name, seed, est_params)
        else:
            if est_params:
                raise TypeError("est_params only apply when the estimator is given by name")
            est, name = estimator, getattr(estimator, "name", type(estimator).__name__)
        use_extra = bool(getattr(est, "uses_extra", True))
        proto = cls(
            models=table.models,
            encoder=enc,
            estimator=est,
            cost=CostEstimator(),
            estimator_name=name,
            use_extra=use_extra,
        )
        X = proto.featurize(prompts)
        Q = table.quality_matrix()
        est.fit(X, Q)
        proto.cost = CostEstimator().fit(table, X if cost_features else None)
        fitted = proto._policy_from_table(table, seed, X)
        fitted.update(policy or {})
        proto.policy.update(fitted)
        proto.info = proto._summary(table, est)
        return proto

    def _policy_from_table(self, table: RoutingTable, seed: int, X: Features | None = None) -> dict[str, Any]:
        """`_fit_policy` on (a sample of) the training prompts, estimated as `route` would."""
        prompts = table.prompts
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(prompts), min(len(prompts), 3000), replace=False))
        texts = [prompts[i] for i in sample]
        Xs = self.featurize(texts) if X is None else X.take(sample)
        q = self._quality(Xs)
        c = self.cost.predict(texts, Xs)
        Q = table.quality_matrix()[:, [table.models.index(m) for m in self.models]]
        return self._fit_policy(Q, q, c)

    def fit_regime_head(
        self,
        table: RoutingTable,
        everyday: Sequence[Any] | None = None,
        *,
        seed: int = 0,
        max_known: int = 6000,
        C: float | None = None,
    ) -> RegimeHead:
        """Fit and attach a regime head (`llmroute.estimators.regime`) for this router.

        table: the router's training table (its prompts are the "known" regimes, one per set of
        models observed together); everyday: labelled everyday prompts (objects with `text` and
        `tier`, e.g. `llmroute.data.everyday.load_everyday`; default: the corpus shipped in the
        package); max_known: training prompts sampled per fit (stratified by model set);
        C: the head's L2 setting (None: chosen by cross-validation, which takes a while).
        """
        from llmroute.data.everyday import training_corpus
        from llmroute.estimators.regime import RegimeHead, common_ability, support_sets

        missing = sorted(set(self.models) - set(table.models))
        if missing:
            raise ValueError(f"the table has no outcomes for router model(s) {missing}")
        items = training_corpus() if everyday is None else list(everyday)
        Q = table.quality_matrix()[:, [table.models.index(m) for m in self.models]]
        supports, row_set = support_sets(Q)
        k = len(supports)
        rng = np.random.default_rng(seed)
        picks: list[np.ndarray] = []
        for s in range(k):
            rows = np.flatnonzero(row_set == s)
            n_take = min(len(rows), max(max_known // k, 1))
            picks.append(np.sort(rng.choice(rows, n_take, replace=False)))
        tier_p = {"easy": (1.0, 0.0), "medium": (0.5, 0.5), "hard": (0.0, 1.0)}
        P = np.zeros((len(items) + sum(map(len, picks)), 2 + k))
        P[: len(items), :2] = [tier_p[x.tier] for x in items]
        n_ev = sum(x.tier != "medium" for x in items)
        weights = [1.0] * len(items)
        # C is chosen by holding out one writer's prompts at a time (prompts in other words)
        groups: list[str | None] = [str(getattr(x, "source", "")) for x in items]
        texts = [x.text for x in items]
        prompts = table.prompts
        at = len(items)
        for s, rows in enumerate(picks):
            P[at : at + len(rows), 2 + s] = 1.0
            at += len(rows)
            # the known sets share half the weight of the everyday prompts, equally
            weights += [n_ev / 2 / k / max(len(rows), 1)] * len(rows)
            groups += [None] * len(rows)
            texts += [prompts[i] for i in rows]
        head = RegimeHead(C=C, seed=seed).fit(
            self.featurize(texts), P, common_ability(Q), supports, np.asarray(weights), groups
        )
        self.set_regime_head(head)
        # strong shares (`@0.3` in the gateway) now refer to everyday traffic like the corpus:
        # the score quantiles are taken there, on the estimates `route` now makes. The default
        # trade-off stays the estimator's (its "reach the best model's mean on the training
        # prompts" criterion turns degenerate once one model leads on every prompt)
        pair = self.policy.get("score_pair") or [self.policy.get("strong"), self.policy.get("weak")]
        if pair[0] in self._index and pair[1] in self._index:
            q_ev = self._quality(self.featurize([x.text for x in items]))
            with contextlib.suppress(ValueError):  # no finite score: keep the old quantiles
                scores = q_ev[:, self._index[pair[0]]] - q_ev[:, self._index[pair[1]]]
                self.policy["score_quantiles"] = score_quantiles(scores)
                self.policy["score_pair"] = list(pair)
        self.info["regime_head"] = {
            "everyday_prompts": len(items),
            "known_prompts": int(sum(map(len, picks))),
            "known_sets": [[m for m, seen in zip(self.models, sup, strict=True) if seen] for sup in supports],
            "C": head.C_,
            "cv_scores": head.cv_scores_,
        }
        return head

    def _fit_policy(self, Q: np.ndarray, q: np.ndarray, c: np.ndarray) -> dict[str, Any]:
        """Strong/weak pair and a default trade-off from training data.

        The default trade-off is the largest lambda at which the routed mean *expected* quality
        on training prompts still reaches the best single model's mean expected quality:
        "best-model quality, for less". The strong-minus-weak score quantiles on those prompts
        are kept too (`score_quantiles`, for the pair `score_pair`), so a strong share maps to a
        threshold before any calibration (`threshold_for_share`).
        """
        ok = np.isfinite(Q)
        mean_q = np.where(ok, Q, 0).sum(0) / np.maximum(ok.sum(0), 1)
        mean_c = c.mean(axis=0)
        strong = int(np.argmax(mean_q))
        order = np.argsort(mean_c, kind="stable")
        weak = int(order[0]) if order[0] != strong else (int(order[1]) if len(order) > 1 else strong)
        target = q.mean(axis=0).max()
        scale = float(np.median(c[c > 0])) if (c > 0).any() else 1.0
        tradeoff = 0.0
        rows = np.arange(len(q))
        for lam in np.logspace(-3, 4, 36) / scale:
            pick = choose(q, c, tradeoff=float(lam))
            if q[rows, pick].mean() >= target - 1e-9:
                tradeoff = float(lam)
            else:
                break
        out: dict[str, Any] = {"tradeoff": tradeoff, "strong": self.models[strong], "weak": self.models[weak]}
        with contextlib.suppress(ValueError):  # no finite score: no quantiles
            out["score_quantiles"] = score_quantiles(q[:, strong] - q[:, weak])
            out["score_pair"] = [self.models[strong], self.models[weak]]
        return out

    def _summary(self, table: RoutingTable, est: QualityEstimator) -> dict[str, Any]:
        Q = table.quality_matrix()
        ok = np.isfinite(Q)
        mean_q = np.where(ok, Q, 0).sum(0) / np.maximum(ok.sum(0), 1)
        tasks: dict[str, int] = {}
        for t in table.tasks:
            fam = t.split("/")[0] if t else ""
            tasks[fam] = tasks.get(fam, 0) + 1
        try:
            from llmroute import __version__
        except ImportError:  # pragma: no cover
            __version__ = "unknown"
        return {
            "llmroute_version": __version__,
            "source": str(table.source),
            "n_prompts": int(table.n_prompts),
            "task_families": tasks,
            "mean_quality": {m: float(v) for m, v in zip(self.models, mean_q, strict=True)},
            "cost_modes": self.cost.modes,
            "cv_scores": _jsonable(getattr(est, "cv_scores_", {})),
        }
