"""Periodic refit of an offline quality estimator on the learner's logged bandit outcomes.

The online learner's residual posterior (`OnlineLearner`) is a small linear correction per model;
it learns slowly and only what a linear function of a 32-column projection can express. A
`Refitter` keeps the logged rows (prompt embedding, the chosen model, its observed quality and
cost, the propensity of the choice, and the offline router's per-model estimates when there was
one) and, every so often (amortised: once the logged rows grew `growth`-fold since the last
fit), fits an estimator of the project (the `default` one, on the embedding alone) on them.
Each row reveals one model's outcome; its other cells are imputed from the offline router's
estimates for that prompt (`impute="base"`, the default: the refit distils the router and
corrects it where outcomes were observed) or left missing when there is no router (a cold
start: the estimator fills them from each model's observed mean); `impute="fit"` imputes them
from the latest fit instead (measured worse on a cold start, see BENCHMARKS.md).

The first fit replaces estimates from outside (an offline router) only when, on a random share
of the logged rows held out of it, the decisions it would make (argmax of quality - lambda *
cost) are estimated to earn more reward than the router's, by more than `confidence` standard
errors: an inverse-propensity (IPS) estimate of the paired difference from the logged choices,
outcomes and propensities (unbiased whatever the logging policy; a refit that only recalibrates
the chosen model's level, or one fitted on a few rows, does not replace a better offline router
on noise). Later fits (of the same estimator on more rows) replace the previous fit; with no
estimates at all (a cold start) the first fit is taken as it is.

When the offline router was trained on a table (every model's outcome per prompt), `set_table`
gives the refitter those rows: every fit then includes them with their full outcomes (never held
out, never dropped), so that a refit is the router's estimator retrained with more data (the
table plus the logged rows) rather than a distillation of the router from bandit rows only; it
never knows less than the router it may replace.

The caller then gives the refit's predictions to `OnlineLearner.choose` as the base estimates
and calls `OnlineLearner.rebase` so that the residual posterior restarts on top of the new base
(the outcomes it learned from are in the refit). `Refitter.fit` builds a new `RefitModel`
without touching the refitter's rows, so a gateway can run it off the request path (a thread)
and swap the result in; `benchmarks/online.py` runs it inline between requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RefitModel", "Refitter"]


@dataclass(frozen=True)
class RefitModel:
    """One fit: `predict(embeddings)` gives (n, m) expected quality per model in [0, 1].

    rows: the logged rows it was fitted on; gain / gain_se: the IPS estimate (and its standard
    error) of the reward per request its decisions would add over the current estimates' on
    the held-out rows (None: nothing to compare with); confidence: see `better`."""

    estimator: object
    rows: int
    gain: float | None = None
    gain_se: float | None = None
    confidence: float = 1.0

    @property
    def better(self) -> bool:
        """Whether its estimated gain exceeds `confidence` standard errors (True when there was
        nothing to compare with: no current estimates)."""
        if self.gain is None or self.gain_se is None:
            return True
        return self.gain > self.confidence * self.gain_se

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, m) expected quality for (n, d) prompt embeddings (one row: pass (1, d))."""
        from llmroute.estimators.base import Features

        E = np.asarray(embeddings, dtype=np.float32)
        if E.ndim == 1:
            E = E[None, :]
        return np.asarray(self.estimator.predict(Features(E, None)), dtype=np.float64)  # type: ignore[attr-defined]


class Refitter:
    """Logged bandit rows and the schedule of refits (see the module docstring).

    n_models: the learner's models (columns, in its order); tradeoff: the lambda of the
    decisions compared by the check (reward = quality - lambda * cost); estimator: the estimator
    refitted (any name `llmroute.estimators.make_estimator` knows; `default` by default); first:
    logged rows before the first fit; growth: the next fit once the logged rows are `growth`
    times those of the last fit (amortised: the total fitting work is a constant factor of one
    fit on all rows); max_rows: at most this many most recent rows are kept (older ones are
    dropped first; bounds memory and fit time); validate: the share of the rows held out of a
    fit to check it (0: no check, every fit is taken); confidence: standard errors of the
    check's margin; impute: where a row's unobserved cells come from ("base": the offline
    router's estimates of the decision, else missing; "fit": the latest fit); seed: the estimator's and the held-out draw's seed.
    """

    def __init__(
        self,
        n_models: int,
        *,
        tradeoff: float = 0.0,
        estimator: str = "default",
        first: int = 100,
        growth: float = 1.5,
        max_rows: int = 20_000,
        validate: float = 0.2,
        confidence: float = 2.0,
        impute: str = "base",
        seed: int = 0,
    ) -> None:
        if n_models < 1:
            raise ValueError("n_models must be >= 1")
        if growth <= 1.0:
            raise ValueError(f"growth must be > 1 (the next fit after growth x the rows), got {growth}")
        if first < 2 or max_rows < first:
            raise ValueError(f"need 2 <= first <= max_rows, got first={first}, max_rows={max_rows}")
        if not 0.0 <= validate < 1.0:
            raise ValueError(f"validate must be in [0, 1), got {validate}")
        self.n_models = int(n_models)
        self.tradeoff = float(tradeoff)
        self.estimator = estimator
        self.first = int(first)
        self.growth = float(growth)
        self.max_rows = int(max_rows)
        self.validate = float(validate)
        self.confidence = float(confidence)
        if impute not in ("fit", "base"):
            raise ValueError(f"impute must be 'fit' or 'base', got {impute!r}")
        self.impute = impute
        self.seed = int(seed)
        self._fits = 0
        self._emb: list[np.ndarray] = []
        self._model: list[int] = []
        self._reward: list[tuple[float, float, float]] = []  # quality, cost, propensity
        self._base: list[np.ndarray | None] = []
        self._cost: list[np.ndarray] = []
        self._logged = 0  # rows logged in all (also those dropped by max_rows)
        self._next = self.first
        self.current: RefitModel | None = None
        self._table: tuple[np.ndarray, np.ndarray] | None = None  # see set_table

    def set_table(self, embeddings: np.ndarray, quality: np.ndarray) -> None:
        """The offline router's training rows: (k, d) prompt embeddings and their (k, n_models)
        observed qualities in [0, 1] (NaN: a cell not observed), in the learner's column order.
        Every later fit is trained on them plus the logged rows (they are never held out by the
        check, which compares decisions on logged rows only, nor dropped by `max_rows`)."""
        E = np.asarray(embeddings, dtype=np.float32)
        Q = np.asarray(quality, dtype=np.float64)
        if E.ndim != 2 or Q.ndim != 2 or len(E) != len(Q):
            raise ValueError(f"need (k, d) embeddings and (k, m) qualities, got {E.shape} and {Q.shape}")
        if Q.shape[1] != self.n_models:
            raise ValueError(f"the table has {Q.shape[1]} model columns, the refitter {self.n_models}")
        if self._emb and E.shape[1] != self._emb[0].shape[0]:
            raise ValueError(
                f"table embeddings have {E.shape[1]} columns, the logged rows {self._emb[0].shape[0]}"
            )
        self._table = (E, Q)

    def __len__(self) -> int:
        return len(self._model)

    def add_model(self) -> None:
        """A new column (a model added to the learner): missing in every row logged so far."""
        self.n_models += 1
        self._base = [None if b is None else np.append(b, np.nan) for b in self._base]
        self._cost = [np.append(c, np.inf) for c in self._cost]  # never a held-out row's pick
        if self._table is not None:  # the router's table never saw the new model
            E, Q = self._table
            self._table = (E, np.column_stack([Q, np.full(len(Q), np.nan)]))
        self.current = None  # its predictions lack the new column: the next fit starts afresh
        self._next = min(self._next, self._logged + 1)

    def log(
        self,
        embedding: np.ndarray,
        model: int,
        quality: float,
        *,
        cost: float = 0.0,
        propensity: float = 1.0,
        base: Sequence[float] | np.ndarray | None = None,
        cost_estimates: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """One outcome: the prompt's embedding, the chosen model's column, its observed quality
        in [0, 1] and cost, the probability with which it was chosen, the offline router's
        per-model quality estimates for the prompt (not a refit's; None: no router, a cold
        start; NaN: a model it does not know) and the per-model cost estimates of the decision
        (None: 0)."""
        if not 0 <= model < self.n_models:
            raise ValueError(f"model column {model} out of range (0..{self.n_models - 1})")
        if not 0.0 < propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], got {propensity}")
        self._emb.append(np.asarray(embedding, dtype=np.float32).reshape(-1))
        self._model.append(int(model))
        self._reward.append((float(quality), float(cost), float(propensity)))
        self._base.append(None if base is None else np.array(base, dtype=np.float64).reshape(-1))
        self._cost.append(
            np.zeros(self.n_models)
            if cost_estimates is None
            else np.array(cost_estimates, dtype=np.float64).reshape(-1)
        )
        self._logged += 1
        if len(self._model) > self.max_rows:
            drop = len(self._model) - self.max_rows
            del (
                self._emb[:drop],
                self._model[:drop],
                self._reward[:drop],
                self._base[:drop],
                self._cost[:drop],
            )

    def due(self) -> bool:
        """Whether enough rows were logged since the last fit (see `growth`)."""
        return self._logged >= self._next

    def _current(self, E: np.ndarray) -> np.ndarray:
        """(rows, m) the estimates the refit imputes from and is checked against: the latest
        fit's predictions (`impute="fit"` after a fit), else the offline router's estimates of
        each decision (NaN where there were none)."""
        if self.current is not None and self.impute == "fit":
            return self.current.predict(E)
        Y = np.full((len(self._model), self.n_models), np.nan)
        for i, b in enumerate(self._base):
            if b is not None:
                Y[i] = b
        return Y

    def fit(self) -> RefitModel:
        """Fit the estimator on the logged rows but the held-out share (`validate`), each row's
        observed cell with the other cells imputed from the current estimates (NaN where there
        are none: the estimator fills them), and return it with its checked gain (does not
        change the refitter: call `accept` with it)."""
        from llmroute.estimators import make_estimator
        from llmroute.estimators.base import Features

        n = len(self._model)
        if n < 2:
            raise ValueError("a refit needs at least 2 logged outcomes")
        E = np.stack(self._emb)
        cur = self._current(E)
        picks = np.asarray(self._model)
        qual, cost, prop = (np.asarray(v) for v in zip(*self._reward, strict=True))
        Y = cur.copy()
        Y[np.arange(n), picks] = qual
        # checked only against estimates from outside (an offline router): a refit of the same
        # estimator on more rows replaces the previous refit, and with no estimates at all (a
        # cold start's prior) there is nothing to compare with
        known = np.isfinite(cur).any(axis=1)  # rows decided with an offline router
        held = np.zeros(n, dtype=bool)
        n_val = int(self.validate * n)
        if self.current is None and known.any() and n_val >= 1 and n - n_val >= 2:
            rng = np.random.default_rng([self.seed, self._fits])
            held[rng.choice(n, n_val, replace=False)] = True
        self._fits += 1
        E_fit, Y_fit = E[~held], Y[~held]
        if self._table is not None:  # the router's own training rows, with every outcome
            E_fit = np.concatenate([self._table[0], E_fit.astype(np.float32, copy=False)])
            Y_fit = np.concatenate([self._table[1], Y_fit])
        est = make_estimator(self.estimator, seed=self.seed).fit(Features(E_fit, None), Y_fit)
        rows = np.flatnonzero(held & known)
        if not len(rows):
            return RefitModel(est, n - int(held.sum()), confidence=self.confidence)
        lam = self.tradeoff
        C = np.stack([self._cost[i] for i in rows])
        new = np.argmax(np.asarray(est.predict(Features(E[rows], None))) - lam * C, axis=1)  # type: ignore[attr-defined]
        old = np.argmax(np.where(np.isfinite(cur[rows]), cur[rows] - lam * C, -np.inf), axis=1)
        a = picks[rows]
        w = (qual[rows] - lam * cost[rows]) / prop[rows]
        d = w * ((new == a).astype(float) - (old == a).astype(float))
        # the standard error from the uncentred second moment: never below the centred one, and
        # not ~0 when the two disagree on one or two rows only (a gain on those is no evidence)
        se = float(np.sqrt(np.mean(d * d) / len(d)))
        return RefitModel(est, n - len(rows), float(d.mean()), se, self.confidence)

    def accept(self, model: RefitModel | None) -> None:
        """Make `model` the current fit (None: keep the current one) and schedule the next fit."""
        if model is not None:
            self.current = model
        self._next = max(self._logged + 1, int(np.ceil(self._logged * self.growth)))

    def refit(self) -> RefitModel | None:
        """`fit`, then `accept` it when it is `better` (inline); returns it then, else None."""
        model = self.fit()
        ok = model.better
        self.accept(model if ok else None)
        return model if ok else None
