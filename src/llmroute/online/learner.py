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

A model without a profile (a NaN `q_base`) starts from an optimistic but bounded prior: as good
as the best profiled model on that prompt (capped at 1) and as cheap as the cheapest, with the
wider prior `new_model_prior_var`, so the greedy choice tries it and a few outcomes correct it.
With no profiled model at all (a cold start) the base quality is `prior_quality`.

`update` is a rank-1 (Sherman-Morrison) update of one model's posterior: O(dim^2).
State round-trips through `snapshot(path)` / `OnlineLearner.restore(path)` (one small
safetensors file, no pickle).

The learner is split by concern (each part a module of this package): this module holds the
posterior (the arms, the contexts and their products with the posterior, the factors kept per
update, the rank-1 / rank-k updates); `llmroute.online.picking` the pick arithmetic on the
posterior's numbers (greedy choice, exploration bound, conservative exploration, the draw;
the exploration rules are described there); `llmroute.online.win_probs` Thompson's win
probabilities; `llmroute.online.snapshots` the safetensors state. `OnlineLearner` inherits the
picking and snapshot methods, so they are its own methods and the imports from this module
(`OnlineLearner`, `Choice`, `METHODS`, `win_probabilities`) are unchanged.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmroute.online.picking import Factors, PickMixin
from llmroute.online.snapshots import SnapshotMixin
from llmroute.online.win_probs import win_probabilities

__all__ = ["METHODS", "Choice", "OnlineLearner", "win_probabilities"]

METHODS = ("thompson", "linucb", "greedy")


@functools.lru_cache(maxsize=64)
def _fused_cols(m: int, d: int) -> np.ndarray:
    """The columns of `prepare_embeddings`' product W = z Su read per model j: theta_u . z
    (j (d + 3)), A_k,u . z (+ 1 + d) and A_b,u . z (+ 2 + d), in that order, model by model."""
    s = d + 3
    return np.array([j * s + o for j in range(m) for o in (0, 1 + d, 2 + d)], dtype=np.intp)


def _fuse_model(fz: tuple[Any, ...], stack: np.ndarray, j: int, d: int) -> None:
    """Write model `j`'s rows of the factors `stack` into `prepare_embeddings`' copy `fz` (its
    (d, m (d + 3)) Su block and its theta_b, A_kb, A_bb), in place."""
    s, b = d + 3, d + 1
    fz[1][:, j * s : (j + 1) * s] = stack[j, :, :d].T
    fz[2][j], fz[3][j], fz[4][j] = float(stack[j, 0, b]), float(stack[j, 1 + d, b]), float(stack[j, 1 + b, b])


@functools.cache
def _dger() -> Any:
    """BLAS dger (a += alpha x y', in place on a Fortran-ordered float64 array), imported at
    first use: scipy.linalg is not needed to import the learner."""
    from scipy.linalg.blas import dger

    return dger


#: the last two context columns of `prepare_embeddings`' rows: the base-quality column k (0) and the bias
_TAIL = (0.0, 1.0)


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


class OnlineLearner(PickMixin, SnapshotMixin):
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
    explore_decay: n0 > 0: exploration decays as evidence accumulates: once the learner has
    learned n > n0 outcomes (all models, counted from the last `add_model`), `max_explore` and
    `explore_loss` apply times sqrt(n0 / n) (0, the default: no decay; see `_exploration`).
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
        explore_decay: float = 0.0,
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
        if not explore_decay >= 0:
            raise ValueError(f"explore_decay must be >= 0 (0: no decay), got {explore_decay}")
        self.explore_decay = float(explore_decay)
        self.explore_base_ = 0.0  # outcomes learned before the last add_model (the decay counts from there)
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
        self._fact: Factors | None = None
        self._dirty: set[int] = set()  # models updated since their mean / factors were computed
        self._flat: tuple[np.ndarray, np.ndarray] | None = None  # `prepare`'s 2-d view of the stack
        # `prepare_embeddings`'s factors (the stack they were built from first)
        self._fused: (
            tuple[np.ndarray, np.ndarray, list[float], list[float], list[float], np.ndarray] | None
        ) = None
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
        self.explore_base_ = float(self.n_.sum())  # a new arm: `explore_decay` counts again from 0
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
        self.explore_base_ = min(self.explore_base_, float(self.n_.sum()))
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
                _fused_cols(m, d),
            )
        _, Su, th_b, a_kb, a_bb, cols = fz
        Z = E @ self.proj_  # (B, dim), float64
        W = Z @ Su  # (B, m (D + 1)): per model theta_u . z, then A_r,u . z for every row r
        Q = _vecdot(W.reshape(len(Z), m, d + 3)[:, :, 1 : 1 + d], Z[:, None, :]).tolist()  # z' A_uu z
        nz = [math.sqrt(v) or 1.0 for v in _vecdot(Z, Z).tolist()]
        X = np.empty((len(Z), d + 2), dtype=np.float32)
        np.divide(Z, np.array(nz)[:, None], out=X[:, :d])  # float64 quotients, stored as float32
        X[:, d:] = _TAIL  # k = 0, the bias 1: one call (numpy's fixed cost per call is the cost here)
        tx, xax, axk = [], [], []
        js = range(m)
        # of W's row only theta_u . z, A_k,u . z and A_b,u . z per model are read: those 3 m
        # columns (`_fused_cols`), not all m (D + 1), become Python floats
        for w, q, n in zip(W[:, cols].tolist(), Q, nz, strict=True):
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

    def _fill_list(
        self, q_base: Sequence[float] | np.ndarray | None, c_base: Sequence[float] | np.ndarray | None
    ) -> tuple[list[float], list[float]]:
        """The base estimates per model as lists of floats (the per-request path), their gaps
        (NaN) filled: a quality by the best known one (at most 1) or, with none known, the prior
        quality; a cost by the cheapest known one or 0. Raises ValueError unless one value per model."""
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

    def _factors(self) -> Factors:
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
        fz = self._fused if f is not None and self._fused is not None and self._fused[0] is f[0] else None
        for j in self._dirty:
            A = self.A_inv_[j]
            t = theta[j] = A @ self.b_[j]
            if f is not None:  # model j's part of the factors (the others are unchanged)
                f[0][j, 0] = t
                f[0][j, 1:] = A
                f[1][j], f[2][j] = float(t[k]), float(A[k, k])
                f[3][j] = float(self.cost_res_[j] / (self.n_[j] + 1.0))
            if fz is not None:  # and of `prepare_embeddings`' copy (rebuilding it all costs m-fold)
                _fuse_model(fz, f[0], j, k)  # type: ignore[index]
        self._dirty.clear()
        if fz is None:
            self._fused = None  # `prepare_embeddings`' copy of the factors: rebuilt when next needed

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
        c = weight / (self.noise_var + weight * float(x @ Ax))
        # A -= c (Ax)(Ax)' by one BLAS call in place (numpy takes three: the outer product, its
        # scale, the subtraction; ~half the CPU when A is cold, the gateway's one outcome between
        # requests). A and the update are symmetric, so A.T (Fortran order, A's memory) is updated.
        at = A.T
        r = _dger()(-c, Ax, Ax, a=at, overwrite_a=1)
        if r is not at:  # BLAS worked on a copy (A not contiguous float64): write it back
            A[...] = r.T
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
