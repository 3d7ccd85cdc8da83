"""Cosine k-nearest-neighbours quality estimator.

Prediction for model j is the similarity-weighted mean quality of the k most similar training
prompts that have a value for j, shrunk toward the model's mean with `prior` pseudo-weight
(so far-away neighbourhoods fall back to the global mean). k is chosen by cross-validation on
the training data: one similarity pass over a held-out subsample gives every k at once.

The fitted state is the training embeddings and their quality rows (a memory), so this
estimator must not be shipped in artifacts that may not contain third-party outcomes.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator, column_means
from llmroute.estimators.linear import check_fit_input, masked_bce, single_threaded_blas

__all__ = ["KNNEstimator"]


def _topk(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, sorted descending."""
    k = min(k, S.shape[1])
    if k < S.shape[1]:
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(S.shape[1]), S.shape).copy()
    vals = np.take_along_axis(S, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


class KNNEstimator(QualityEstimator):
    """Distance-weighted cosine kNN with shrinkage toward per-model means.

    Parameters
    ----------
    k: neighbours (None = choose from `grid` by CV).
    grid: candidate k values.
    power: weights are max(sim, 0) ** power (sharper for larger power).
    prior: pseudo-weight of the per-model mean.
    cv_queries: held-out prompts used to choose k.
    """

    name: ClassVar[str] = "knn"
    uses_extra: ClassVar[bool] = False

    def __init__(
        self,
        k: int | None = None,
        grid: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320),
        power: float = 4.0,
        prior: float = 0.5,
        cv_queries: int = 2000,
        seed: int = 0,
    ) -> None:
        self.k = k
        self.grid = tuple(int(g) for g in grid)
        self.power = power
        self.prior = prior
        self.cv_queries = cv_queries
        self.seed = seed

    # -- core -----------------------------------------------------------------------------
    def _weights(self, sims: np.ndarray) -> np.ndarray:
        return np.maximum(sims, 0.0) ** self.power + 1e-12

    def _predict_from(
        self, idx: np.ndarray, sims: np.ndarray, Qv: np.ndarray, okv: np.ndarray, means: np.ndarray, k: int
    ) -> np.ndarray:
        """Predictions using the first k neighbours in (idx, sims)."""
        w = self._weights(sims[:, :k])  # (n, k)
        nq = Qv[idx[:, :k]]  # (n, k, m) values (0 where missing)
        nok = okv[idx[:, :k]]
        ww = w[:, :, None] * nok
        num = (ww * nq).sum(axis=1) + self.prior * means
        den = ww.sum(axis=1) + self.prior
        return num / den

    @single_threaded_blas
    def fit(self, X: Features, Q: np.ndarray) -> Self:
        """Memorise the training prompts; choose k by leave-subsample-out CV (unless given)."""
        Q = check_fit_input(X, Q)
        E = np.ascontiguousarray(X.emb, dtype=np.float32)
        ok = np.isfinite(Q)
        self.means_ = column_means(Q)
        # rescale weights: prior pseudo-weight is relative to a neighbour with sim = 1
        k = self.k
        self.cv_scores_: dict[str, float] = {}
        n = len(E)
        if k is None:
            if n < 30:
                k = min(10, max(1, n - 1))
            else:
                rng = np.random.default_rng(self.seed)
                nq = min(self.cv_queries, n // 3)
                q_idx = rng.choice(n, nq, replace=False)
                keep = np.ones(n, dtype=bool)
                keep[q_idx] = False
                r_idx = np.flatnonzero(keep)
                Qr = np.where(ok[r_idx], Q[r_idx], 0.0)
                means = column_means(Q[r_idx])
                kmax = min(max(self.grid), len(r_idx))
                S = E[q_idx] @ E[r_idx].T
                idx, sims = _topk(S, kmax)
                best, best_s = None, np.inf
                for g in self.grid:
                    if g > kmax:
                        continue
                    P = self._predict_from(idx, sims, Qr, ok[r_idx], means, g)
                    s = masked_bce(P, Q[q_idx])
                    self.cv_scores_[str(g)] = s
                    if s < best_s:
                        best, best_s = g, s
                k = best if best is not None else kmax
        self.k_ = int(min(k, n))
        self.E_ = E
        self.Qv_ = np.where(ok, Q, 0.0).astype(np.float32)
        self.ok_ = ok
        return self

    def predict(self, X: Features) -> np.ndarray:
        """(n, m) expected quality; processed in chunks to bound memory."""
        E = np.asarray(X.emb, dtype=np.float32)
        out = np.empty((len(E), self.Qv_.shape[1]))
        step = 1024
        for s in range(0, len(E), step):
            S = E[s : s + step] @ self.E_.T
            idx, sims = _topk(S, self.k_)
            out[s : s + step] = self._predict_from(idx, sims, self.Qv_, self.ok_, self.means_, self.k_)
        return out

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays: the memory (embeddings, qualities with NaN); params: hyper-parameters."""
        Qn = np.where(self.ok_, self.Qv_, np.nan).astype(np.float32)
        arrays = {"E": self.E_, "Q": Qn, "means": self.means_}
        params = {
            "k": self.k,
            "grid": list(self.grid),
            "power": self.power,
            "prior": self.prior,
            "cv_queries": self.cv_queries,
            "seed": self.seed,
            "k_": self.k_,
        }
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        """Rebuild from `get_state()` output."""
        p = dict(params)
        k_ = p.pop("k_")
        p["grid"] = tuple(p["grid"])
        est = cls(**p)
        Q = np.asarray(arrays["Q"], dtype=np.float64)
        est.E_ = np.ascontiguousarray(arrays["E"], dtype=np.float32)
        est.ok_ = np.isfinite(Q)
        est.Qv_ = np.where(est.ok_, Q, 0.0).astype(np.float32)
        est.means_ = np.asarray(arrays["means"], dtype=np.float64)
        est.k_ = int(k_)
        est.cv_scores_ = {}
        return est
