"""Online learner: a per-model posterior on an offline estimator's residuals (bandit feedback).

For each request the offline router gives, per model, an expected quality `q_base` and cost
`c_base`. The learner adds a per-model Bayesian linear correction of the quality,
`q = q_base + x . theta_m`, over a small context vector `x` (the prompt embedding reduced by a
fixed random projection to `dim` columns, unit norm, the model's own base quality, centred,
and a bias column), with the prior
`theta_m ~ N(0, prior_var I)` (mean 0 residual: warm-started from the offline router) and
Gaussian outcome noise `noise_var` (0.25: the largest variance of an outcome in [0, 1]). Costs
get a per-model running mean of (observed - estimated) cost. The reward of a choice is
`q - tradeoff * c` at the caller's trade-off, so one learner serves callers with different
trade-offs: it learns quality and cost, not a reward at one fixed trade-off.

Choosing: the greedy choice is the offline router's choice unless the posterior says with
confidence (`confidence` sd of the difference) that another model's reward is higher; without
profiled models it maximises the posterior-mean reward. `thompson` picks each model with the
probability `p_ts` that its reward, drawn from its posterior (an exact univariate normal per
model given `x`), is the highest: `win_probabilities` computes it (closed form for two models,
a one-dimensional integral for more) instead of sampling; `linucb` takes the argmax of
mean + `ucb_alpha` * sd. Exploration is bounded: the probability of deviating from the greedy
choice is scaled down to at most `max_explore`, and the choice is drawn from the resulting
distribution with one uniform draw, so the returned propensity is the exact probability with
which it was made (and equals Thompson's pick probability up to the integral's error, < 4e-3).
Exploration is also conservative when there is an offline router to protect (Wu et al. 2016's
conservative bandits, per request): the models the posterior rates below the greedy choice are
explored less, by one common factor, so that the expected reward given up (their probabilities
times their posterior-mean reward gap) is at most `explore_loss` per request; models rated at
least as good and models without a profile keep their share. A cold start has nothing to protect:
the budget does not apply there.

A model without a profile (a NaN `q_base`) starts from an optimistic but bounded prior: as good
as the best profiled model on that prompt (capped at 1) and as cheap as the cheapest, with the
wider prior `new_model_prior_var`, so the greedy choice tries it and a few outcomes correct it.
With no profiled model at all (a cold start) the base quality is `prior_quality`.

`update` is a rank-1 (Sherman-Morrison) update of one model's posterior: O(dim^2).
State round-trips through `snapshot(path)` / `OnlineLearner.restore(path)` (one small
safetensors file, no pickle).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METHODS", "Choice", "OnlineLearner", "win_probabilities"]

METHODS = ("thompson", "linucb", "greedy")
_FORMAT = "llmroute-online-learner/1"

#: a model whose mean + _TAIL sd is below another's mean - _TAIL sd wins with probability
#: < 2 Phi(-_TAIL) ~ 2e-9: it is left out of the integral (and given 0)
_TAIL = 6.0
#: the integration grid's largest number of steps (see `win_probabilities`)
_MAX_STEPS = 256
_STEPS = np.arange(_MAX_STEPS + 1, dtype=np.float64)
_SQRT2 = math.sqrt(2.0)


def win_probabilities(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """P(model i's draw is the highest) for independent draws N(mean_i, sd_i^2): Thompson
    sampling's pick probabilities, computed instead of sampled. A -inf mean never wins.

    Two contenders (after leaving out those more than 2 x 6 sd behind): the closed form
    Phi((mean_j - mean_i) / sqrt(sd_i^2 + sd_j^2)). More: one-dimensional integration over the
    value t of the maximum. With L_j = log Phi((t - mean_j) / sd_j) and G = exp(sum_j L_j) the
    distribution function of the maximum, P_i = integral of G dL_i; on a uniform grid of t over
    the range where the maximum lies (half the smallest contender's sd apart, 16 to 256 steps)
    each step's increase of G is split among the models in proportion to their increase of L.
    That split is exact where the L_j increase in fixed ratios across a step, so the
    probabilities sum to 1 and the error shrinks with the step: over 300 random cases of 3-11
    models (means in [0.2, 0.9], sd 0.02-0.8 log-uniform) the largest absolute error against a
    40,001-point quadrature of the definition was 3.2e-3 (99th percentile 1.9e-3, median 5e-4;
    the 256-step cap binds only where the sds differ ~20-fold; tests/test_online_fast_choice.py).
    Cost: (contenders) x (steps + 1) evaluations of log Phi."""
    return np.array(_win_probs(np.asarray(mean, np.float64).tolist(), np.asarray(sd, np.float64).tolist()))


def _win_probs(mean: list[float], sd: list[float]) -> list[float]:
    """`win_probabilities` on lists of floats (the per-request path: no numpy below three
    contenders)."""
    if len(mean) == 2:  # the usual gateway alias (a strong and a weak model): no lists, no loops
        return _win_probs_two(mean[0], mean[1], max(sd[0], 1e-12), max(sd[1], 1e-12))
    sd = [max(v, 1e-12) for v in sd]
    lo = -math.inf  # the maximum is above the highest floor (mean - 6 sd)
    for mu, s in zip(mean, sd, strict=True):
        if math.isfinite(mu) and mu - _TAIL * s > lo:
            lo = mu - _TAIL * s
    if lo == -math.inf:
        raise ValueError("win_probabilities needs at least one finite mean")
    live = [
        i for i, (mu, s) in enumerate(zip(mean, sd, strict=True)) if math.isfinite(mu) and mu + _TAIL * s > lo
    ]
    out = [0.0] * len(mean)
    if len(live) == 1:
        out[live[0]] = 1.0
        return out
    if len(live) == 2:
        i, j = live
        z = (mean[j] - mean[i]) / math.sqrt(sd[i] * sd[i] + sd[j] * sd[j])
        pj = 0.5 * math.erfc(-z / math.sqrt(2.0))
        out[i], out[j] = 1.0 - pj, pj
        return out
    from scipy.special import log_ndtr

    mu_a, s_a = np.array([mean[i] for i in live]), np.array([sd[i] for i in live])
    hi = float(np.max(mu_a + _TAIL * s_a))  # and below the highest ceiling
    # a uniform grid over [lo, hi], half the smallest sd apart (at least 16, at most 256 steps)
    # (rounded first, so that inputs a few ulps apart get the same grid)
    n = min(_MAX_STEPS, max(16, math.ceil(round((hi - lo) / (0.5 * float(s_a.min())), 6))))
    t = _STEPS[: n + 1] * ((hi - lo) / n) + lo
    L = log_ndtr((t[None, :] - mu_a[:, None]) / s_a[:, None])  # (contenders, nodes)
    S = L.sum(axis=0)
    G = np.exp(S)
    tot = S[1:] - S[:-1]  # the increase of log G = sum of the contenders' increases
    dG = G[1:] - G[:-1]
    p = (L[:, 1:] - L[:, :-1]) @ np.divide(dG, tot, out=np.zeros_like(dG), where=tot > 0)
    p /= p.sum()
    for i, v in zip(live, p.tolist(), strict=True):
        out[i] = v
    return out


def _win_probs_two(m0: float, m1: float, s0: float, s1: float) -> list[float]:
    """`_win_probs` of two models (sds already floored at 1e-12), the same arithmetic: the
    6-sd cut-off, then Phi((m1 - m0) / sqrt(s0^2 + s1^2)) by math.erfc."""
    f0, f1 = math.isfinite(m0), math.isfinite(m1)
    if not (f0 or f1):
        raise ValueError("win_probabilities needs at least one finite mean")
    lo = max(m0 - _TAIL * s0 if f0 else -math.inf, m1 - _TAIL * s1 if f1 else -math.inf)
    live0, live1 = f0 and m0 + _TAIL * s0 > lo, f1 and m1 + _TAIL * s1 > lo
    if live0 and live1:
        z = (m1 - m0) / math.sqrt(s0 * s0 + s1 * s1)
        p1 = 0.5 * math.erfc(-z / math.sqrt(2.0))
        return [1.0 - p1, p1]
    return [1.0 if live0 else 0.0, 1.0 if live1 else 0.0]


@functools.lru_cache(maxsize=64)
def _fused_cols(m: int, d: int) -> np.ndarray:
    """The columns of `prepare_embeddings`' product W = z Su read per model j: theta_u . z
    (j (d + 3)), A_k,u . z (+ 1 + d) and A_b,u . z (+ 2 + d), in that order, model by model."""
    s = d + 3
    return np.array([j * s + o for j in range(m) for o in (0, 1 + d, 2 + d)], dtype=np.intp)


def _einsum_vecdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...d,...d->...", *np.broadcast_arrays(a, b))


#: the dot product over the last axis, broadcast (numpy >= 2: one ufunc call)
_vecdot = getattr(np, "vecdot", _einsum_vecdot)


@dataclass(frozen=True)
class Choice:
    """One decision of the learner.

    model / index: the chosen model; propensity: the probability with which it was chosen;
    propensities: that probability for every model (sums to 1); greedy: the posterior-mean
    choice; explored: whether the choice deviates from it; decision_id: pass it to `update`;
    q / c: the learner's expected quality and cost per model (posterior mean).
    """

    model: str
    index: int
    propensity: float
    propensities: np.ndarray
    greedy: str
    explored: bool
    decision_id: int
    q: np.ndarray = field(repr=False)
    c: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for traces)."""
        return {
            "model": self.model,
            "propensity": float(self.propensity),
            "greedy": self.greedy,
            "explored": self.explored,
            "decision_id": self.decision_id,
        }


class OnlineLearner:
    """Bandit correction of an offline router's estimates (see the module docstring).

    models: the arms, in the column order of the `q_base` / `c_base` arrays given to `choose`;
    embed_dim: length of the embeddings given to `choose`; method: thompson | linucb | greedy;
    tradeoff: default lambda of reward = quality - lambda * cost; max_explore: the largest
    probability of deviating from the greedy choice (per request, so also the largest expected
    share of traffic); dim: context columns after the random projection (plus a bias column);
    prior_var: prior variance of each residual weight of a profiled model (0.01: the score's
    prior sd is ~0.14 on the unit-norm context plus bias, a few tenths of quality at most, so
    the offline router's order is trusted until outcomes contradict it); new_model_prior_var:
    the same for a model without a profile (0.25: sd ~0.7, quality anywhere in [0, 1]);
    profiled: False when the initial models have no offline estimates either (a cold start);
    n_samples: no longer used (Thompson's pick probabilities are computed, not sampled; kept so
    that settings and snapshots written before still load);
    confidence: the greedy choice leaves the offline router's choice only for a model whose
    posterior-mean reward is ahead by more than `confidence` standard deviations (0: plain
    posterior-mean argmax), so a few noisy outcomes do not undo a good router.
    explore_loss: the largest expected reward per request given up by exploring models the
    posterior rates below the greedy choice (0: no such budget; with profiled models only; 0.002:
    a fifth of the 0.01 per-window tolerance against the offline router, so exploration stays
    within it on average).
    """

    def __init__(
        self,
        models: Sequence[str],
        embed_dim: int,
        *,
        method: str = "thompson",
        tradeoff: float = 0.0,
        max_explore: float = 0.2,
        dim: int = 32,
        prior_var: float = 0.01,
        new_model_prior_var: float = 0.25,
        noise_var: float = 0.25,
        prior_quality: float = 0.5,
        ucb_alpha: float = 1.0,
        confidence: float = 1.0,
        explore_loss: float = 0.002,
        n_samples: int = 256,
        max_pending: int = 100_000,
        seed: int = 0,
        profiled: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown learner method {method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 <= max_explore <= 1.0:
            raise ValueError(f"max_explore must be in [0, 1], got {max_explore}")
        if prior_var <= 0 or new_model_prior_var <= 0 or noise_var <= 0:
            raise ValueError("prior_var, new_model_prior_var and noise_var must be > 0")
        if len(set(models)) != len(models) or not models:
            raise ValueError("models must be a non-empty list of distinct names")
        self.method = method
        self.tradeoff = float(tradeoff)
        self.max_explore = float(max_explore)
        self.dim = int(dim)
        self.embed_dim = int(embed_dim)
        self.prior_var = float(prior_var)
        self.new_model_prior_var = float(new_model_prior_var)
        self.noise_var = float(noise_var)
        self.prior_quality = float(prior_quality)
        self.ucb_alpha = float(ucb_alpha)
        self.confidence = float(confidence)
        if explore_loss < 0:
            raise ValueError(f"explore_loss must be >= 0, got {explore_loss}")
        self.explore_loss = float(explore_loss)
        self.n_samples = int(n_samples)
        self.max_pending = int(max_pending)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        # fixed random projection of the embedding (Johnson-Lindenstrauss), stored in snapshots
        self.proj_ = np.random.default_rng(seed + 7919).standard_normal(
            (self.embed_dim, self.dim)
        ) / math.sqrt(self.dim)
        self.models: list[str] = []
        D = self.dim + 2
        self.A_inv_ = np.zeros((0, D, D))  # posterior covariance per model
        self.b_ = np.zeros((0, D))  # precision-weighted mean per model (mean = A_inv @ b)
        self.n_ = np.zeros(0)  # outcomes seen per model
        self.cost_res_ = np.zeros(0)  # sum of (observed - estimated) cost per model
        self.profiled_ = np.zeros(0, dtype=bool)  # False: added without a profile (optimistic prior)
        self._pending: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._ids = itertools.count(1)
        self._theta: np.ndarray | None = None  # posterior means A_inv b per model (see `_means`)
        self._fact: tuple[np.ndarray, list[float], list[float], list[float], bool] | None = None
        self._dirty: set[int] = set()  # models updated since their mean / factors were computed
        self._flat: tuple[np.ndarray, np.ndarray] | None = None  # `prepare`'s 2-d view of the stack
        # `prepare_embeddings`'s factors (the stack they were built from first)
        self._fused: tuple[np.ndarray, np.ndarray, list[float], list[float], list[float]] | None = None
        for m in models:
            self.add_model(m, profiled=profiled)

    # ---- arms --------------------------------------------------------------------------------
    def add_model(self, name: str, *, profiled: bool = False) -> None:
        """Add an arm. `profiled=False` (a model with no outcomes yet): its prior is the wider
        `new_model_prior_var`; give NaN as its `q_base` / `c_base` to `choose` to use the
        optimistic fill (as good as the best profiled model, as cheap as the cheapest)."""
        if name in self.models:
            raise ValueError(f"model {name!r} is already known to the learner")
        D = self.dim + 2
        var = self.prior_var if profiled else self.new_model_prior_var
        self.models.append(name)
        self.A_inv_ = np.concatenate([self.A_inv_, (np.eye(D) * var)[None]])
        self.b_ = np.concatenate([self.b_, np.zeros((1, D))])
        self.n_ = np.append(self.n_, 0.0)
        self.cost_res_ = np.append(self.cost_res_, 0.0)
        self.profiled_ = np.append(self.profiled_, profiled)
        self._theta = self._fact = None

    def rebase(self, profiled: bool = True) -> None:
        """The base estimates given to `choose` changed (a refit on the logged outcomes, see
        `llmroute.online.refit`): every model's quality residual restarts from its prior, since
        the outcomes it learned from are now in the base. `profiled`: the new base is a router
        to trust and protect (the profiled prior `prior_var`, the greedy choice follows the
        base, conservative exploration applies), also after a cold start. Cost corrections and
        pending decisions are kept (their residuals were taken against the base they were made
        with)."""
        D = self.dim + 2
        m = len(self.models)
        var = np.where(np.full(m, profiled) | self.profiled_, self.prior_var, self.new_model_prior_var)
        self.A_inv_ = np.eye(D)[None] * var[:, None, None]
        self.b_ = np.zeros((m, D))
        self.profiled_ = self.profiled_ | bool(profiled)
        self._theta = self._fact = None
        self._dirty.clear()

    def remove_model(self, name: str) -> None:
        """Drop an arm and its posterior (pending decisions are dropped too)."""
        j = self.models.index(name)
        keep = np.arange(len(self.models)) != j
        self.models.pop(j)
        self.A_inv_, self.b_ = self.A_inv_[keep], self.b_[keep]
        self.n_, self.cost_res_, self.profiled_ = self.n_[keep], self.cost_res_[keep], self.profiled_[keep]
        self._theta = self._fact = None
        self._pending.clear()

    # ---- deciding ----------------------------------------------------------------------------
    def context(self, embedding: np.ndarray) -> np.ndarray:
        """The shared part of a prompt's context: projected embedding (unit norm), a 0 where each
        model's own base quality goes (see `contexts`), and a bias 1."""
        z = np.asarray(embedding, dtype=np.float64).reshape(-1) @ self.proj_
        nz = math.sqrt(float(z @ z))
        out = np.empty(self.dim + 2)
        if nz > 0:
            np.divide(z, nz, out=out[: self.dim])
        else:
            out[: self.dim] = z
        out[self.dim] = 0.0
        out[self.dim + 1] = 1.0
        return out

    def contexts(self, x: np.ndarray, q_fill: np.ndarray) -> np.ndarray:
        """(m, D) per-model contexts: `x` with each model's base quality (centred at 0.5), so the
        residual model can also recalibrate the offline estimate (a slope per model)."""
        X = np.repeat(x[None, :], len(q_fill), axis=0)
        X[:, -2] = q_fill - 0.5
        return X

    def _fill(self, q_base: np.ndarray | None, c_base: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        m = len(self.models)
        q = np.full(m, np.nan) if q_base is None else np.array(q_base, dtype=np.float64).reshape(-1)
        c = np.full(m, np.nan) if c_base is None else np.array(c_base, dtype=np.float64).reshape(-1)
        if q.shape[0] != m or c.shape[0] != m:
            raise ValueError(f"q_base and c_base need one value per model ({m}: {', '.join(self.models)})")
        if not math.isfinite(float(q.sum())):  # the usual case (all finite) costs one sum
            known = np.isfinite(q)
            q[~known] = min(1.0, float(q[known].max())) if known.any() else self.prior_quality
        if not math.isfinite(float(c.sum())):
            cknown = np.isfinite(c)
            c[~cknown] = float(c[cknown].min()) if cknown.any() else 0.0
        return q, c

    def estimate(
        self, X: np.ndarray, q_fill: np.ndarray, c_fill: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(quality mean, quality sd, cost mean) per model for per-model contexts `X` and filled
        bases."""
        AX = np.einsum("mde,me->md", self.A_inv_, X)
        mean_res = np.einsum("md,md->m", self.b_, AX)  # b' A^-1 x (A^-1 is symmetric)
        sd = np.sqrt(np.maximum(np.einsum("md,md->m", AX, X), 0.0))
        cost = c_fill + self.cost_res_ / (self.n_ + 1.0)  # prior: one pseudo-outcome at 0 residual
        return q_fill + mean_res, sd, cost

    def choose(
        self,
        embedding: np.ndarray,
        q_base: np.ndarray | Sequence[float] | None = None,
        c_base: np.ndarray | Sequence[float] | None = None,
        *,
        tradeoff: float | None = None,
        candidates: np.ndarray | Sequence[bool] | None = None,
        context: np.ndarray | None = None,
    ) -> Choice:
        """Choose a model for one prompt (its embedding and the offline estimates per model;
        NaN = no profile). `candidates`: a boolean mask of allowed models (default all);
        `context`: `self.context(embedding)` when the caller has it already.

        Cost per call: one (m, D, D) @ (D,) product and a few length-m vector operations. The
        posterior means are kept per model (updated with each outcome, not per request), and the
        per-model context differs from the shared one only in its base-quality column k, so
        x_m' A x_m and theta_m . x_m follow from A x, theta . x, the column k and A[k, k].
        Thompson's win probabilities are computed (`win_probabilities`), not sampled, and the
        choice is then drawn from the explore-bounded distribution with one uniform: the
        propensity returned is the exact probability of that draw."""
        lam = self.tradeoff if tradeoff is None else float(tradeoff)
        qf, cf = self._fill_list(q_base, c_base)
        x = self.context(embedding) if context is None else np.asarray(context, dtype=np.float64)
        y = self._factors()[0] @ x  # (m, D + 1): theta . x, then A x
        ax = y[:, 1:]
        allowed = None if candidates is None else np.asarray(candidates, bool).tolist()
        ch, g, probs, q, c = self.pick(
            float(x[self.dim]),
            qf,
            cf,
            lam,
            allowed,
            y[:, 0].tolist(),
            (ax @ x).tolist(),
            ax[:, self.dim].tolist(),
        )
        did = next(self._ids)
        self._pending[did] = (x, qf, cf)
        if len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
        return Choice(
            model=self.models[ch],
            index=ch,
            propensity=probs[ch],
            propensities=np.array(probs),
            greedy=self.models[g],
            explored=ch != g,
            decision_id=did,
            q=np.array(q),
            c=np.array(c),
        )

    def prepare(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The posterior's part of `choose` for a batch of shared contexts (the rows of
        `contexts`, see `context_batch`) in one product: per row and model theta . x, x' A x and
        (A x)[k] (k: the base-quality column), (B, m) each, for `pick_many`. With the posterior
        factors kept per update (`_factors`), a batch of B requests costs one (B, D) @ (D,
        m (D + 1)) product instead of B (m, D, D) @ (D,) ones."""
        X = np.asarray(contexts, dtype=np.float64)
        stack = self._factors()[0]  # (m, D + 1, D)
        flat = self._flat
        if flat is None or flat[0] is not stack:  # a view: `_refresh`'s in-place updates show
            m, D = stack.shape[0], stack.shape[2]
            view = stack.reshape(m * (D + 1), D).T
            flat = (stack, view)
            if np.shares_memory(view, stack):  # always (the stack is contiguous): else not kept
                self._flat = flat
        m, D = stack.shape[0], X.shape[1]
        Y = (X @ flat[1]).reshape(len(X), m, D + 1)
        AX = Y[:, :, 1:]
        xax = (AX * X[:, None, :]).sum(axis=2)  # per row: the same sum whatever the batch size
        return Y[:, :, 0], xax, AX[:, :, self.dim]

    def prepare_embeddings(
        self, embeddings: np.ndarray
    ) -> tuple[np.ndarray, list[list[float]], list[list[float]], list[list[float]]]:
        """`context_batch` and `prepare` of a few prompts in plain floats after three products
        (the per-request path: numpy's cost per call, not the arithmetic, is what a small batch
        pays): the (B, D) float32 contexts (what the trace stores) and, per row, lists of
        theta . x, x' A x and (A x)[k] per model, for `pick`.

        With z = e P (the projected embedding), u = z / |z| and x = [u, 0, 1] (k, the base-quality
        column, is 0; b = D - 1 the bias): theta . x = (theta_u . z) / |z| + theta_b,
        (A x)[k] = (A_k,u . z) / |z| + A_kb and x' A x = z' A_uu z / |z|^2 + 2 (A_b,u . z) / |z|
        + A_bb (A symmetric): one product of z with the stacked u-columns of every model's theta
        and A (kept per update, `_fused`), one more for z' A_uu z. Equal to `prepare` of
        `context_batch` up to rounding (the order of the sums), ~1e-16 relative."""
        E = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings, np.float64)
        if E.ndim != 2:
            E = E.reshape(-1, self.embed_dim)
        stack = self._factors()[0]  # (m, D + 1, D)
        fz = self._fused
        m, d = stack.shape[0], self.dim
        if fz is None or fz[0] is not stack:
            b = d + 1
            Su = np.ascontiguousarray(stack[:, :, :d].reshape(m * (d + 3), d).T)  # (dim, m (D + 1))
            fz = self._fused = (
                stack,
                Su,
                stack[:, 0, b].tolist(),  # theta_b
                stack[:, 1 + d, b].tolist(),  # A_kb
                stack[:, 1 + b, b].tolist(),  # A_bb
            )
        _, Su, th_b, a_kb, a_bb = fz
        Z = E @ self.proj_  # (B, dim), float64
        W = Z @ Su  # (B, m (D + 1)): per model theta_u . z, then A_r,u . z for every row r
        Q = _vecdot(W.reshape(len(Z), m, d + 3)[:, :, 1 : 1 + d], Z[:, None, :]).tolist()  # z' A_uu z
        nz = [math.sqrt(v) or 1.0 for v in _vecdot(Z, Z).tolist()]
        X = np.empty((len(Z), d + 2), dtype=np.float32)
        np.divide(Z, np.array(nz)[:, None], out=X[:, :d])  # float64 quotients, stored as float32
        X[:, d] = 0.0
        X[:, d + 1] = 1.0
        tx, xax, axk = [], [], []
        js = range(m)
        # of W's row only theta_u . z, A_k,u . z and A_b,u . z per model are read: those 3 m
        # columns (`_fused_cols`), not all m (D + 1), become Python floats
        for w, q, n in zip(W[:, _fused_cols(m, d)].tolist(), Q, nz, strict=True):
            tx.append([w[3 * j] / n + th_b[j] for j in js])
            axk.append([w[3 * j + 1] / n + a_kb[j] for j in js])
            xax.append([q[j] / (n * n) + 2.0 * w[3 * j + 2] / n + a_bb[j] for j in js])
        return X, tx, xax, axk

    def context_batch(self, embeddings: np.ndarray) -> np.ndarray:
        """`context` of each row of `embeddings` ((B, embed_dim)), in one product: (B, D)."""
        E = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings, np.float64)
        if E.ndim != 2:
            E = E.reshape(-1, self.embed_dim)
        Z = E @ self.proj_  # float32 rows are promoted to float64 (the same as converting first)
        # the norms in plain floats (math.sqrt and np.sqrt are both correctly rounded); a zero
        # row is divided by 1 and stays 0. Few numpy calls: this runs per routing micro-batch.
        nz = [math.sqrt(v) or 1.0 for v in np.einsum("ij,ij->i", Z, Z).tolist()]
        out = np.empty((len(Z), self.dim + 2))
        np.divide(Z, np.array(nz)[:, None], out=out[:, : self.dim])
        out[:, self.dim] = 0.0
        out[:, self.dim + 1] = 1.0
        return out

    def pick(
        self,
        xk: float,
        qf: list[float],
        cf: list[float],
        lam: float,
        allowed: list[bool] | None,
        tx: list[float],
        xax: list[float],
        axk: list[float],
    ) -> tuple[int, int, list[float], list[float], list[float]]:
        """The choice of `choose` given one context's posterior part (theta . x, x' A x and
        (A x)[k] per model) and its base-quality column `xk`: filled estimates `qf` / `cf`,
        the trade-off, the allowed mask (None: all). Returns (chosen index, greedy index, the
        probability of every model, posterior-mean quality and cost per model); draws one
        uniform from `rng` when the choice is random. Plain floats: m is small."""
        fac = self._factors()
        if allowed is not None and not any(allowed):
            raise ValueError("no candidate model is allowed")
        probs_of = self._probs_two if len(self.models) == 2 else self._probs
        g, probs, q, c, dev = probs_of(fac, xk, qf, cf, lam, allowed, tx, xax, axk)
        ch = self._draw(probs, self.rng.random()) if dev > 0 else g
        return ch, g, probs, q, c

    def pick_rows(
        self,
        qf: Sequence[list[float]],
        cf: Sequence[list[float]],
        lam: Sequence[float],
        allowed: Sequence[list[bool] | None],
        tx: Sequence[list[float]],
        xax: Sequence[list[float]],
        axk: Sequence[list[float]],
    ) -> tuple[list[int], list[int], list[float]]:
        """`pick` of several requests in order (contexts whose base-quality column is 0, as
        `prepare_embeddings` gives them; one list per request in each argument): (chosen,
        greedy, the chosen model's probability) per request. The same choices and probabilities
        as `pick` one request at a time: the uniforms are drawn together after the
        probabilities, one per request whose choice is random, in request order (the same
        stream as one draw each). The per-request path of a routing micro-batch."""
        fac = self._factors()
        probs_of = self._probs_two if len(self.models) == 2 else self._probs
        greedy: list[int] = []
        rows: list[list[float]] = []
        live: list[int] = []
        for r, ok in enumerate(allowed):
            if ok is not None and not any(ok):
                raise ValueError("no candidate model is allowed")
            g, probs, _, _, dev = probs_of(fac, 0.0, qf[r], cf[r], lam[r], ok, tx[r], xax[r], axk[r])
            greedy.append(g)
            rows.append(probs)
            if dev > 0:
                live.append(r)
        chosen = list(greedy)
        if live:
            draw = self._draw
            for r, u in zip(live, self.rng.random(len(live)).tolist(), strict=True):
                chosen[r] = draw(rows[r], u)
        return chosen, greedy, [p[c] for p, c in zip(rows, chosen, strict=True)]

    def _draw(self, probs: list[float], u: float) -> int:
        """The model the uniform `u` picks from `probs` (Generator.choice(m, p=probs /
        probs.sum()) without its checks: the cdf, normalised)."""
        if len(probs) == 2:  # the same arithmetic without the lists (fsum of two = their sum;
            total = probs[0] + probs[1]  # the normalised cdf's last value is 1 > u)
            c0 = probs[0] / total
            return 0 if u < c0 / (c0 + probs[1] / total) else 1
        total = math.fsum(probs)
        cdf = list(itertools.accumulate(v / total for v in probs))
        top = cdf[-1]
        return min(bisect.bisect_right([v / top for v in cdf], u), len(probs) - 1)

    def _probs(
        self,
        fac: tuple[np.ndarray, list[float], list[float], list[float], bool],
        xk: float,
        qf: list[float],
        cf: list[float],
        lam: float,
        allowed: list[bool] | None,
        tx: list[float],
        xax: list[float],
        axk: list[float],
    ) -> tuple[int, list[float], list[float], list[float], float]:
        """`pick` up to the draw (`fac`: `_factors()`): (greedy index, the probability of every
        model, posterior-mean quality and cost per model, the probability of deviating from the
        greedy choice before the exploration bound: the choice is random when it is > 0)."""
        m = len(self.models)
        _, theta_k, a_kk, cost_res, profiled = fac
        q, c, mean, sd, base = [0.0] * m, [0.0] * m, [0.0] * m, [0.0] * m, [0.0] * m
        for i in range(m):  # plain floats: m is small, numpy's per-call cost is not
            si = qf[i] - 0.5 - xk  # the model's own column value minus the shared one
            q[i] = qi = qf[i] + tx[i] + si * theta_k[i]
            c[i] = ci = cf[i] + cost_res[i]
            sd[i] = math.sqrt(max(xax[i] + si * (2.0 * axk[i] + si * a_kk[i]), 0.0))
            if allowed is None or allowed[i]:
                mean[i], base[i] = qi - lam * ci, qf[i] - lam * cf[i]
            else:
                mean[i] = base[i] = -math.inf
        g = self._greedy_list(mean, sd, base, profiled)
        if self.method == "thompson" and self.max_explore > 0:
            target = _win_probs(mean, sd)  # a disallowed model's mean is -inf: never wins
        else:
            target = [0.0] * m
            if self.method == "linucb" and self.max_explore > 0:
                ucb = [mi + self.ucb_alpha * si for mi, si in zip(mean, sd, strict=True)]
                target[ucb.index(max(ucb))] = 1.0
            else:
                target[g] = 1.0
        dev = 1.0 - target[g]
        scale = min(1.0, self.max_explore / dev) if dev > 0 else 0.0
        probs = [t * scale for t in target]
        probs[g] = 1.0 - scale * dev
        if dev > 0 and self.explore_loss > 0 and profiled:
            # conservative exploration (with an offline router to protect): models the posterior
            # rates below the greedy choice are explored less, so that their expected loss (the
            # posterior-mean reward gap) is at most explore_loss per request; those rated at
            # least as good, and models without a profile (no offline rating), keep their share
            mg, prof = mean[g], self.profiled_
            low = [i for i in range(m) if i != g and probs[i] > 0 and mean[i] < mg and prof[i]]
            loss = math.fsum(probs[i] * (mg - mean[i]) for i in low)
            if loss > self.explore_loss:
                cut = self.explore_loss / loss
                for i in low:
                    probs[i] *= cut
                probs[g] = 0.0
                probs[g] = 1.0 - math.fsum(probs)
        return g, probs, q, c, dev

    def _probs_two(
        self,
        fac: tuple[np.ndarray, list[float], list[float], list[float], bool],
        xk: float,
        qf: list[float],
        cf: list[float],
        lam: float,
        allowed: list[bool] | None,
        tx: list[float],
        xax: list[float],
        axk: list[float],
    ) -> tuple[int, list[float], list[float], list[float], float]:
        """`_probs` of two models (the usual gateway alias: a strong and a weak model): the same
        arithmetic in the same order, unrolled (no per-model lists or loops); equal to `_probs`
        bit for bit (tests/test_online_batch_choice.py)."""
        _, theta_k, a_kk, cost_res, profiled = fac
        qf0, qf1 = qf
        cf0, cf1 = cf
        s0, s1 = qf0 - 0.5 - xk, qf1 - 0.5 - xk
        q0, q1 = qf0 + tx[0] + s0 * theta_k[0], qf1 + tx[1] + s1 * theta_k[1]
        c0, c1 = cf0 + cost_res[0], cf1 + cost_res[1]
        sd0 = math.sqrt(max(xax[0] + s0 * (2.0 * axk[0] + s0 * a_kk[0]), 0.0))
        sd1 = math.sqrt(max(xax[1] + s1 * (2.0 * axk[1] + s1 * a_kk[1]), 0.0))
        if allowed is None or allowed[0]:
            m0, b0 = q0 - lam * c0, qf0 - lam * cf0
        else:
            m0 = b0 = -math.inf
        if allowed is None or allowed[1]:
            m1, b1 = q1 - lam * c1, qf1 - lam * cf1
        else:
            m1 = b1 = -math.inf
        conf = self.confidence
        if conf <= 0 or not profiled:  # `_greedy_list`: the first of equal maxima
            g = 1 if m1 > m0 else 0
        else:  # the router's choice b unless the other is `conf` sd of the difference ahead
            b = 1 if b1 > b0 else 0
            mb, sb, mo, so = (m1, sd1, m0, sd0) if b else (m0, sd0, m1, sd1)
            g = 1 - b if mo - mb > conf * math.sqrt(so * so + sb**2) else b
        method, max_explore = self.method, self.max_explore
        if method == "thompson" and max_explore > 0:
            t0, t1 = _win_probs_two(m0, m1, max(sd0, 1e-12), max(sd1, 1e-12))
        elif method == "linucb" and max_explore > 0:
            alpha = self.ucb_alpha
            t1 = 1.0 if m1 + alpha * sd1 > m0 + alpha * sd0 else 0.0
            t0 = 1.0 - t1
        else:
            t0, t1 = (0.0, 1.0) if g else (1.0, 0.0)
        dev = 1.0 - (t1 if g else t0)
        scale = min(1.0, max_explore / dev) if dev > 0 else 0.0
        probs = [t0 * scale, t1 * scale]
        probs[g] = 1.0 - scale * dev
        if dev > 0 and self.explore_loss > 0 and profiled:  # conservative exploration (`_probs`)
            o = 1 - g
            mg, mo = (m1, m0) if g else (m0, m1)
            if probs[o] > 0 and mo < mg and self.profiled_[o]:
                loss = probs[o] * (mg - mo)
                if loss > self.explore_loss:
                    probs[o] *= self.explore_loss / loss
                    probs[g] = 1.0 - probs[o]
        return g, probs, [q0, q1], [c0, c1], dev

    def pick_many(
        self,
        qf: np.ndarray,
        cf: np.ndarray,
        lam: np.ndarray,
        allowed: np.ndarray | None,
        tx: np.ndarray,
        xax: np.ndarray,
        axk: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`pick` for a batch of B requests at once, vectorised over the batch: (B, m) filled
        estimates, (B,) trade-offs, (B, m) allowed mask (None: all), `prepare`'s (B, m) parts of
        contexts whose base-quality column is 0 (`context`). Returns (chosen, greedy) indices
        (B,) and (B, m) probabilities: the same choices as `pick` one request at a time, in
        order, with the same uniforms (one per request whose choice is random, drawn in batch
        order), and the same probabilities up to rounding."""
        qf, cf = np.asarray(qf, np.float64), np.asarray(cf, np.float64)
        B, m = qf.shape
        _, theta_k, a_kk, cost_res, profiled = self._factors()
        tk, akk = np.asarray(theta_k), np.asarray(a_kk)
        si = qf - 0.5
        q = qf + np.asarray(tx) + si * tk
        c = cf + np.asarray(cost_res)
        sd = np.sqrt(np.maximum(np.asarray(xax) + si * (2.0 * np.asarray(axk) + si * akk), 0.0))
        lam_c = np.asarray(lam, np.float64)[:, None]
        mean, base = q - lam_c * c, qf - lam_c * cf
        if allowed is not None:
            ok = np.asarray(allowed, bool)
            if not ok.any(axis=1).all():
                raise ValueError("no candidate model is allowed")
            mean, base = np.where(ok, mean, -np.inf), np.where(ok, base, -np.inf)
        rows = np.arange(B)
        if self.confidence <= 0 or not profiled:
            g = np.argmax(mean, axis=1)
        else:  # `_greedy_list`: the router's choice unless another is `confidence` sd ahead
            b = np.argmax(base, axis=1)
            mb, sb = mean[rows, b][:, None], sd[rows, b][:, None]
            ahead = mean - mb > self.confidence * np.sqrt(sd * sd + sb * sb)
            g = np.where(ahead.any(axis=1), np.argmax(np.where(ahead, mean, -np.inf), axis=1), b)
        if self.method == "thompson" and self.max_explore > 0:
            target = self._win_probs_many(mean, sd)
        else:
            target = np.zeros((B, m))
            if self.method == "linucb" and self.max_explore > 0:
                target[rows, np.argmax(mean + self.ucb_alpha * sd, axis=1)] = 1.0
            else:
                target[rows, g] = 1.0
        dev = 1.0 - target[rows, g]
        live = dev > 0
        scale = np.where(live, np.minimum(1.0, self.max_explore / np.where(live, dev, 1.0)), 0.0)
        probs = target * scale[:, None]
        probs[rows, g] = 1.0 - scale * dev
        if self.explore_loss > 0 and profiled and live.any():
            # conservative exploration (see `pick`): the models rated below the greedy choice
            mg = mean[rows, g][:, None]
            low = (probs > 0) & (mean < mg) & self.profiled_[None, :]
            low[rows, g] = False
            gap = np.where(low, mg - np.where(low, mean, 0.0), 0.0)
            loss = (probs * gap).sum(axis=1)
            cut_rows = live & (loss > self.explore_loss)
            if cut_rows.any():
                cut = np.where(cut_rows, self.explore_loss / np.where(cut_rows, loss, 1.0), 1.0)
                probs = np.where(low & cut_rows[:, None], probs * cut[:, None], probs)
                others = probs.copy()
                others[rows, g] = 0.0
                probs[rows, g] = np.where(cut_rows, 1.0 - others.sum(axis=1), probs[rows, g])
        ch = g.copy()
        if live.any():  # one uniform per random choice, in batch order (as `pick` draws them)
            r = np.flatnonzero(live)
            cdf = np.cumsum(probs[r] / probs[r].sum(axis=1, keepdims=True), axis=1)
            cdf /= cdf[:, -1:]
            u = self.rng.random(len(r))
            ch[r] = np.minimum((cdf <= u[:, None]).sum(axis=1), m - 1)
        return ch, g, probs

    @staticmethod
    def _win_probs_many(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """`_win_probs` of each row: two models in closed form over the whole batch (with the
        same 6-sd cut-off), more models one row at a time."""
        if mean.shape[1] != 2:
            return np.array([_win_probs(mu, s) for mu, s in zip(mean.tolist(), sd.tolist(), strict=True)])
        sd = np.maximum(sd, 1e-12)
        fin = np.isfinite(mean)
        floor = np.where(fin, mean - _TAIL * sd, -np.inf)
        lo = floor.max(axis=1, keepdims=True)
        live = fin & (mean + _TAIL * sd > lo)
        both = live.all(axis=1)
        out = np.where(live, 1.0, 0.0)  # one contender: it wins
        if both.any():
            z = (mean[both, 1] - mean[both, 0]) / np.sqrt(sd[both, 0] ** 2 + sd[both, 1] ** 2)
            # Phi(z) as `_win_probs` computes it (math.erfc: no scipy import on the request path)
            p1 = np.array([0.5 * math.erfc(-v / _SQRT2) for v in z.tolist()])
            out[both, 0], out[both, 1] = 1.0 - p1, p1
        return out

    def _fill_list(
        self, q_base: Sequence[float] | np.ndarray | None, c_base: Sequence[float] | np.ndarray | None
    ) -> tuple[list[float], list[float]]:
        """`_fill` as lists of floats (the per-request path)."""
        m = len(self.models)

        def floats(v: Sequence[float] | np.ndarray | None) -> list[float]:
            if v is None:
                return [math.nan] * m
            if isinstance(v, list):
                return [float(e) for e in v]
            return np.asarray(v, dtype=np.float64).reshape(-1).tolist()

        q, c = floats(q_base), floats(c_base)
        if len(q) != m or len(c) != m:
            raise ValueError(f"q_base and c_base need one value per model ({m}: {', '.join(self.models)})")
        if not math.isfinite(sum(q)):
            known = [v for v in q if math.isfinite(v)]
            fill = min(1.0, max(known)) if known else self.prior_quality
            q = [v if math.isfinite(v) else fill for v in q]
        if not math.isfinite(sum(c)):
            known = [v for v in c if math.isfinite(v)]
            fill = min(known) if known else 0.0
            c = [v if math.isfinite(v) else fill for v in c]
        return q, c

    def _factors(self) -> tuple[np.ndarray, list[float], list[float], list[float], bool]:
        """What `choose` needs of the posteriors, computed once per change of the state (an
        outcome updates its model's part in place, see `observe`), never per request: the
        (m, D + 1, D) stack of each model's posterior mean and covariance (one product with the
        context gives theta . x and A x), theta[:, k], A[:, k, k], the cost correction and
        whether any model is profiled."""
        self._refresh()
        f = self._fact
        if f is None:
            theta = self._means()
            stack = np.concatenate([theta[:, None, :], self.A_inv_], axis=1)
            k = self.dim
            f = self._fact = (
                stack,
                theta[:, k].tolist(),
                self.A_inv_[:, k, k].tolist(),
                (self.cost_res_ / (self.n_ + 1.0)).tolist(),
                bool(self.profiled_.any()),
            )
        return f

    def _means(self) -> np.ndarray:
        """(m, D) posterior mean of every model's residual weights, A^-1 b (kept up to date per
        model updated by `observe`, recomputed after any other change of the state)."""
        self._refresh()
        assert self._theta is not None
        return self._theta

    def _refresh(self) -> None:
        """Bring the posterior means and `choose`'s factors up to date: all of them after a
        change of the models (or a restore), else only the models `observe` updated since."""
        theta = self._theta
        if theta is None or theta.shape != self.b_.shape:
            self._theta = np.einsum("mde,me->md", self.A_inv_, self.b_)
            self._fact = None
            self._dirty.clear()
            return
        if not self._dirty:
            return
        f = self._fact
        if f is not None and f[0].shape[0] != theta.shape[0]:
            f = self._fact = None
        k = self.dim
        for j in self._dirty:
            A = self.A_inv_[j]
            t = theta[j] = A @ self.b_[j]
            if f is not None:  # model j's part of the factors (the others are unchanged)
                f[0][j, 0] = t
                f[0][j, 1:] = A
                f[1][j], f[2][j] = float(t[k]), float(A[k, k])
                f[3][j] = float(self.cost_res_[j] / (self.n_[j] + 1.0))
        self._dirty.clear()
        self._fused = None  # `prepare_embeddings`'s copy of the factors: rebuilt when next needed

    def _greedy_list(self, mean: list[float], sd: list[float], base: list[float], profiled: bool) -> int:
        """`_greedy` on lists of floats (the first of equal maxima, like np.argmax); `profiled`:
        whether any model is."""
        if self.confidence <= 0 or not profiled:
            return mean.index(max(mean))
        b = base.index(max(base))
        mb, sb2, conf = mean[b], sd[b] ** 2, self.confidence
        best, bi = -math.inf, -1
        for i, (mi, si) in enumerate(zip(mean, sd, strict=True)):
            if mi - mb > conf * math.sqrt(si * si + sb2) and (bi < 0 or mi > best):
                best, bi = mi, i
        return b if bi < 0 else bi

    def _greedy(self, mean: np.ndarray, sd: np.ndarray, base: np.ndarray) -> int:
        """The greedy choice: the offline router's choice (argmax of the base reward) unless a
        model's posterior-mean reward beats it by more than `confidence` standard deviations of
        the difference; then the best such model. Without profiled models (a cold start) there
        is no router to trust: the posterior-mean argmax."""
        if self.confidence <= 0 or not self.profiled_.any():
            return int(np.argmax(mean))
        b = int(np.argmax(base))
        mb, sb2, conf = float(mean[b]), float(sd[b]) ** 2, self.confidence
        best, bi = -math.inf, -1
        for i, (mi, si) in enumerate(zip(mean.tolist(), sd.tolist(), strict=True)):
            if mi - mb > conf * math.sqrt(si * si + sb2) and (bi < 0 or mi > best):
                best, bi = mi, i
        return b if bi < 0 else bi

    # ---- learning ----------------------------------------------------------------------------
    def update(
        self,
        decision: int | Choice,
        model: str | int,
        quality: float,
        cost: float | None = None,
    ) -> None:
        """Learn one outcome: `quality` in [0, 1] (and the observed `cost`, USD) of `model` on
        the decision `decision` (a `Choice` or its decision_id). Rank-1 update: O(dim^2)."""
        did = decision.decision_id if isinstance(decision, Choice) else int(decision)
        ctx = self._pending.pop(did, None)
        if ctx is None:
            raise KeyError(
                f"unknown decision id {did}: too old (only the last {self.max_pending} are kept) or already updated"
            )
        x, qf, cf = ctx
        j = model if isinstance(model, int) else self.models.index(model)
        xj = x.copy()
        xj[self.dim] = qf[j] - 0.5  # the model's own context row (see `contexts`)
        self.observe(xj, j, float(quality) - qf[j], None if cost is None else float(cost) - cf[j])

    def observe(
        self,
        x: np.ndarray,
        j: int,
        residual: float,
        cost_residual: float | None = None,
        weight: float = 1.0,
    ) -> None:
        """Rank-1 posterior update of model `j` with a quality residual at context `x`.
        `weight` -1 undoes an earlier `observe` of the same arguments (a downdate: the outcome
        is replaced); the posterior is a sum over outcomes, so the order of updates is free."""
        A = self.A_inv_[j]
        Ax = A @ x
        A -= Ax[:, None] * (Ax * (weight / (self.noise_var + weight * float(x @ Ax))))
        self.b_[j] += x * (weight * residual / self.noise_var)
        self.n_[j] += weight
        if cost_residual is not None:
            self.cost_res_[j] += weight * cost_residual
        self._dirty.add(j)  # its mean and `choose`'s factors: refreshed once, when next needed

    def observe_many(
        self,
        X: np.ndarray,
        j: int,
        residuals: np.ndarray,
        cost_residuals: Sequence[float | None] | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        """`observe` of several outcomes of model `j` at once (rows of `X`), with the same
        posterior up to rounding: one rank-k (Woodbury) update, A' = A - A X' (noise W^-1 +
        X A X')^-1 X A, instead of k rank-1 updates (a batch of k outcomes costs about as much
        as 2-3 single ones). Below 3 rows it runs `observe` per row."""
        X = np.asarray(X, dtype=np.float64)
        r = np.asarray(residuals, dtype=np.float64)
        w = np.ones(len(r)) if weights is None else np.asarray(weights, dtype=np.float64)
        costs = [None] * len(r) if cost_residuals is None else list(cost_residuals)
        if len(r) < 3:
            for i in range(len(r)):
                self.observe(X[i], j, float(r[i]), costs[i], float(w[i]))
            return
        A = self.A_inv_[j]
        for i in range(0, len(r), 32):  # k x k solves: chunks of 32 keep them cheap
            Xc, wc = X[i : i + 32], w[i : i + 32]
            AXt = A @ Xc.T  # (D, k)
            S = Xc @ AXt
            S[np.diag_indices_from(S)] += self.noise_var / wc
            A -= AXt @ np.linalg.solve(S, AXt.T)
        self.b_[j] += X.T @ (w * r) / self.noise_var
        self.n_[j] += float(w.sum())
        for wi, ci in zip(w.tolist(), costs, strict=True):
            if ci is not None:
                self.cost_res_[j] += wi * ci
        self._dirty.add(j)

    def posterior(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of one model's residual weights (bias last)."""
        j = self.models.index(model)
        return self.A_inv_[j] @ self.b_[j], self.A_inv_[j].copy()

    # ---- state -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The learner's state (posteriors, projection, settings) as safetensors bytes."""
        from safetensors.numpy import save

        meta = {"format": _FORMAT, "models": self.models, "settings": self._settings()}
        return save(self._tensors(), metadata={"llmroute": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> OnlineLearner:
        """A learner from `to_bytes` output (ValueError when it is not one)."""
        from safetensors.numpy import load

        try:
            arrays = load(data)
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + n])
            meta = json.loads((header.get("__metadata__") or {}).get("llmroute", "{}"))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"not a learner snapshot ({exc})") from exc
        return cls._from_parts(meta, arrays, "<bytes>")

    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            "A_inv": np.ascontiguousarray(self.A_inv_),
            "b": np.ascontiguousarray(self.b_),
            "n": self.n_,
            "cost_res": self.cost_res_,
            "profiled": self.profiled_.astype(np.uint8),
            "proj": np.ascontiguousarray(self.proj_),
        }

    def snapshot(self, path: str | Path) -> Path:
        """Write the learner's state (posteriors, projection, settings) to one safetensors file."""
        from safetensors.numpy import save_file

        path = Path(path)
        meta = {"format": _FORMAT, "models": self.models, "settings": self._settings()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(self._tensors(), str(tmp), metadata={"llmroute": json.dumps(meta)})
        tmp.replace(path)
        return path

    def _settings(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "method",
                "tradeoff",
                "max_explore",
                "dim",
                "embed_dim",
                "prior_var",
                "new_model_prior_var",
                "noise_var",
                "prior_quality",
                "ucb_alpha",
                "confidence",
                "explore_loss",
                "n_samples",
                "max_pending",
                "seed",
            )
        }

    @classmethod
    def restore(cls, path: str | Path) -> OnlineLearner:
        """Load a learner written by `snapshot` (pending decisions are not part of the state)."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = json.loads((fh.metadata() or {}).get("llmroute", "{}"))
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"{path}: not a learner snapshot ({exc}); write one with OnlineLearner.snapshot"
            ) from exc
        return cls._from_parts(meta, arrays, str(path))

    @classmethod
    def _from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> OnlineLearner:
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{where}: not a learner snapshot (format {meta.get('format')!r}, expected {_FORMAT})"
            )
        s = dict(meta["settings"])
        embed_dim = s.pop("embed_dim")
        learner = cls(meta["models"], embed_dim, **s)
        learner.A_inv_ = arrays["A_inv"].astype(np.float64)
        learner.b_ = arrays["b"].astype(np.float64)
        learner.n_ = arrays["n"].astype(np.float64)
        learner.cost_res_ = arrays["cost_res"].astype(np.float64)
        learner.profiled_ = arrays["profiled"].astype(bool)
        learner.proj_ = arrays["proj"].astype(np.float64)
        learner._theta = learner._fact = None
        return learner
