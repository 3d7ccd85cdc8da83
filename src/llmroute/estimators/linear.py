"""Regularised logistic regression per model on the prompt embedding (+ hand-made features).

One logistic model per column of the quality matrix, fitted jointly with L-BFGS (the objective
is separable, so this equals fitting each model on its own). Quality may be graded in [0, 1]:
the loss is binary cross-entropy with soft labels. NaN cells are masked out. The L2 strength is
chosen by K-fold cross-validation on the training data (warm-started along the path).

Also holds the small helpers the other estimators share (masked loss, standardisation, inner
CV splits).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from llmroute.estimators.base import Features, QualityEstimator, column_means

__all__ = ["LinearEstimator"]

_EPS = 1e-6


# ---- shared helpers ---------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., Any])


def single_threaded_blas(fn: F) -> F:
    """Run `fn` with BLAS limited to one thread.

    Training here multiplies tall, skinny matrices (n x d times d x m, m small) in a loop;
    multi-threaded OpenBLAS is 10-20x slower on those when the cores are shared.
    """

    @wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return inner  # type: ignore[return-value]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logit(p: np.ndarray) -> np.ndarray:
    """Inverse of `sigmoid`, clipped away from 0 and 1."""
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def masked_bce(P: np.ndarray, Q: np.ndarray) -> float:
    """Mean binary cross-entropy of predictions `P` against soft labels `Q` over finite cells."""
    ok = np.isfinite(Q)
    if not ok.any():
        return 0.0
    p = np.clip(P[ok], _EPS, 1 - _EPS)
    q = Q[ok]
    return float(-(q * np.log(p) + (1 - q) * np.log(1 - p)).mean())


def stack_features(X: Features, use_extra: bool) -> np.ndarray:
    """Embedding (and extra columns when `use_extra`) as one float64 design matrix."""
    if use_extra and X.extra.shape[1]:
        return np.hstack([X.emb, X.extra]).astype(np.float64)
    return np.asarray(X.emb, dtype=np.float64)


def fit_scaler(Z: np.ndarray, n_emb: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and scale.

    The first `n_emb` columns (the embedding) share one scale, the root mean variance, so
    that near-constant embedding directions (e.g. trailing SVD components of a TF-IDF encoder
    fitted on few prompts) are not blown up to unit variance; every other column gets its own
    std (1 where constant). `n_emb=None` treats all columns as one embedding.
    """
    mu = Z.mean(axis=0)
    sd = Z.std(axis=0)
    k = Z.shape[1] if n_emb is None else n_emb
    if k:
        sd[:k] = max(float(np.sqrt(np.mean(sd[:k] ** 2))), 1e-8)
    sd[sd < 1e-8] = 1.0
    return mu, sd


def inner_folds(
    n: int, folds: int, seed: int, max_n: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs for hyper-parameter search, on at most `max_n` rows."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    if max_n is not None and n > max_n:
        idx = idx[:max_n]
    parts = np.array_split(idx, folds)
    out = []
    for k in range(folds):
        val = parts[k]
        tr = np.concatenate([parts[j] for j in range(folds) if j != k])
        out.append((tr, val))
    return out


def check_fit_input(X: Features, Q: np.ndarray) -> np.ndarray:
    """Validate shapes and values of a fit call; returns Q as float64."""
    Q = np.asarray(Q, dtype=np.float64)
    if Q.ndim != 2:
        raise ValueError(f"quality matrix must be 2-D (prompts x models), got shape {Q.shape}")
    if len(X) != Q.shape[0]:
        raise ValueError(f"{len(X)} feature rows but {Q.shape[0]} quality rows")
    if len(X) == 0:
        raise ValueError("cannot fit an estimator on zero prompts")
    fin = Q[np.isfinite(Q)]
    if fin.size and (fin.min() < 0 or fin.max() > 1):
        raise ValueError("quality values must lie in [0, 1]")
    return Q


# ---- the estimator ----------------------------------------------------------------------
def _fit_logistic(
    Z: np.ndarray, Q: np.ndarray, lam: float, W0: np.ndarray | None, maxiter: int = 200
) -> np.ndarray:
    """(d+1, m) weights (last row = intercept) minimising masked soft-label BCE + lam/2 |W|^2."""
    n, d = Z.shape
    m = Q.shape[1]
    ok = np.isfinite(Q)
    T = np.where(ok, Q, 0.0)
    w_col = ok / np.maximum(ok.sum(axis=0, keepdims=True), 1)  # per-model mean over observed
    Zb = np.hstack([Z, np.ones((n, 1))]).astype(np.float32)

    def fg(flat: np.ndarray) -> tuple[float, np.ndarray]:
        W = flat.reshape(d + 1, m)
        S = (Zb @ W.astype(np.float32)).astype(np.float64)
        # log(1+exp(s)) - t*s, stable
        loss_cells = np.logaddexp(0.0, S) - T * S
        loss = float((loss_cells * w_col).sum())
        G = (Zb.T @ ((sigmoid(S) - T) * w_col).astype(np.float32)).astype(np.float64)
        reg = W[:-1]
        loss += 0.5 * lam * float((reg * reg).sum())
        G[:-1] += lam * reg
        return loss, G.ravel()

    if W0 is None:
        W0 = np.zeros((d + 1, m))
        W0[-1] = logit(column_means(np.where(ok, Q, np.nan)))
    res = minimize(fg, W0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    return res.x.reshape(d + 1, m)


class LinearEstimator(QualityEstimator):
    """Per-model L2-regularised logistic regression; `lam` chosen by inner CV when None.

    Parameters
    ----------
    lam: L2 strength on standardised features (None = choose from `grid` by CV).
    grid: candidate strengths, tried from strongest to weakest with warm starts.
    use_extra: also use the hand-made feature columns of `Features.extra`.
    cv_folds, cv_max_n, seed: inner cross-validation settings.
    """

    name: ClassVar[str] = "linear"
    uses_extra: ClassVar[bool] = True

    def __init__(
        self,
        lam: float | None = None,
        grid: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.001),
        use_extra: bool = True,
        cv_folds: int = 3,
        cv_max_n: int = 6000,
        seed: int = 0,
    ) -> None:
        self.lam = lam
        self.grid = tuple(grid)
        self.use_extra = use_extra
        self.cv_folds = cv_folds
        self.cv_max_n = cv_max_n
        self.seed = seed

    @single_threaded_blas
    def fit(self, X: Features, Q: np.ndarray) -> Self:
        """Standardise features, pick `lam` by inner CV (unless given), fit on all rows."""
        Q = check_fit_input(X, Q)
        Z = stack_features(X, self.use_extra)
        self.mu_, self.sd_ = fit_scaler(Z, X.emb.shape[1])
        Z = (Z - self.mu_) / self.sd_
        lam = self.lam
        self.cv_scores_: dict[str, float] = {}
        if lam is None:
            n = len(Z)
            folds = inner_folds(n, self.cv_folds, self.seed, self.cv_max_n) if n >= 20 else []
            if not folds:
                lam = self.grid[len(self.grid) // 2]
            else:
                scores = np.zeros(len(self.grid))
                for tr, va in folds:
                    W = None
                    for g, lam_g in enumerate(sorted(self.grid, reverse=True)):
                        W = _fit_logistic(Z[tr], Q[tr], lam_g, W, maxiter=60)
                        P = sigmoid(np.hstack([Z[va], np.ones((len(va), 1))]) @ W)
                        scores[g] += masked_bce(P, Q[va])
                ordered = sorted(self.grid, reverse=True)
                self.cv_scores_ = {
                    str(g): float(s / len(folds)) for g, s in zip(ordered, scores, strict=True)
                }
                lam = ordered[int(np.argmin(scores))]
        self.lam_ = float(lam)
        self.W_ = _fit_logistic(Z, Q, self.lam_, None)
        self.n_features_ = Z.shape[1]
        return self

    def predict(self, X: Features) -> np.ndarray:
        """(n, m) probabilities of success per model."""
        Z = stack_features(X, self.use_extra)
        if Z.shape[1] != self.n_features_:
            raise ValueError(f"expected {self.n_features_} feature columns, got {Z.shape[1]}")
        Z = (Z - self.mu_) / self.sd_
        return sigmoid(Z @ self.W_[:-1] + self.W_[-1])

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays: scaler and weights; params: hyper-parameters and chosen `lam`."""
        arrays = {"mu": self.mu_, "sd": self.sd_, "W": self.W_}
        params = {
            "lam": self.lam,
            "grid": list(self.grid),
            "use_extra": self.use_extra,
            "cv_folds": self.cv_folds,
            "cv_max_n": self.cv_max_n,
            "seed": self.seed,
            "lam_": self.lam_,
        }
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        """Rebuild from `get_state()` output."""
        p = dict(params)
        lam_ = p.pop("lam_")
        p["grid"] = tuple(p["grid"])
        est = cls(**p)
        est.mu_, est.sd_, est.W_ = (np.asarray(arrays[k], dtype=np.float64) for k in ("mu", "sd", "W"))
        est.lam_ = float(lam_)
        est.n_features_ = est.W_.shape[0] - 1
        est.cv_scores_ = {}
        return est
