"""The default quality estimator: a cross-validated stack of kNN and ridge predictions.

How it works (all numpy, no pickle):

1. Inputs are the prompt embedding plus the standardised hand-made features
   (`llmroute.estimators.features`).
2. Base learners, each predicting every model's quality:
   - cosine kNN at several neighbourhood sizes, similarity-weighted and shrunk toward the
     per-model means by a pseudo-count (so sparse / far neighbourhoods fall back to the mean);
   - ridge regression on [embedding, features] with the penalty picked by generalised
     cross-validation (closed form, one SVD);
   plus "how far are the neighbours" features (mean top-k similarity).
3. A stacker per model: ridge regression from all base predictions (for all models - a
   model's quality is informative about another's) to that model's quality, fitted on
   out-of-fold base predictions from an inner K-fold split of the training data only.
   Its penalty is also chosen by GCV. Predictions are clipped to [0, 1].

Every hyper-parameter that matters is chosen inside `fit` from the training data; the
constructor only sets search grids and the seed.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator, column_means
from llmroute.estimators.linear import check_fit_input, single_threaded_blas

__all__ = ["DefaultEstimator"]

_ALPHAS = np.logspace(-3, 4, 15)


def _ridge_gcv(
    A: np.ndarray, Y: np.ndarray, alphas: np.ndarray = _ALPHAS
) -> tuple[np.ndarray, np.ndarray, float]:
    """Multi-output ridge with intercept; penalty picked by GCV (shared over outputs).

    Returns (W (p, m), b (m,), alpha).
    """
    a_mean = A.mean(axis=0)
    y_mean = Y.mean(axis=0)
    Ac = A - a_mean
    Yc = Y - y_mean
    # eigen-decomposition of the Gram matrix: A = U s V^T with s^2 = eigenvalues
    ev, V = np.linalg.eigh(Ac.T @ Ac)
    keep = ev > max(ev.max(), 1e-12) * 1e-10
    ev, V = ev[keep], V[:, keep]
    s = np.sqrt(ev)
    UtY = (V.T @ (Ac.T @ Yc)) / s[:, None]
    n = len(A)
    resid0 = max(float((Yc**2).sum() - (UtY**2).sum()), 0.0)  # part of Y outside span(A)
    best = (np.inf, alphas[0])
    for alpha in alphas:
        shrink = ev / (ev + alpha)
        rss = resid0 + (((1.0 - shrink)[:, None] * UtY) ** 2).sum()
        dof = shrink.sum()
        gcv = rss / max(n - dof, 1.0) ** 2
        if gcv < best[0]:
            best = (gcv, alpha)
    alpha = float(best[1])
    W = V @ ((s / (ev + alpha))[:, None] * UtY)
    b = y_mean - a_mean @ W
    return W, b, alpha


def _fill(Q: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(Q), Q, mu[None, :])


class _Base:
    """Base learners fitted on one training set; `transform` gives stacker inputs."""

    def __init__(self, ks: tuple[int, ...], prior: float, power: float, logistic_lam: float | None) -> None:
        self.ks = ks
        self.prior = prior
        self.power = power
        self.logistic_lam = logistic_lam
        self.logit: QualityEstimator | None = None

    def fit(self, X: Features, Z: np.ndarray, Q: np.ndarray) -> Self:
        self.mu = column_means(Q)
        self.E = np.ascontiguousarray(X.emb, dtype=np.float32)
        self.ok = np.isfinite(Q).astype(np.float32)
        self.Qf = np.where(np.isfinite(Q), Q, 0.0).astype(np.float32)
        self.W, self.b, self.alpha = _ridge_gcv(Z, _fill(Q, self.mu))
        if self.logistic_lam is not None:
            from llmroute.estimators.linear import LinearEstimator

            self.logit = LinearEstimator(lam=self.logistic_lam).fit(X, Q)
        return self

    def transform(self, X: Features, Z: np.ndarray) -> np.ndarray:
        n_train = len(self.E)
        kmax = min(max(self.ks), n_train)
        S = np.asarray(X.emb, dtype=np.float32) @ self.E.T  # (n, n_train) cosine similarities
        if kmax < n_train:
            idx = np.argpartition(S, n_train - kmax, axis=1)[:, n_train - kmax :]
        else:
            idx = np.broadcast_to(np.arange(n_train), (len(S), n_train)).copy()
        s = np.take_along_axis(S, idx, axis=1)
        order = np.argsort(-s, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        s = np.take_along_axis(s, order, axis=1)
        w = np.maximum(s, 0.0) ** self.power  # sharpen: near neighbours count more
        cols = []
        for k in self.ks:
            kk = min(k, kmax)
            wk = w[:, :kk, None]
            okk = self.ok[idx[:, :kk]]
            num = (wk * self.Qf[idx[:, :kk]]).sum(axis=1) + self.prior * self.mu
            den = (wk * okk).sum(axis=1) + self.prior
            cols.append(num / den)
            cols.append(s[:, :kk].mean(axis=1, keepdims=True))
        cols.append(Z @ self.W + self.b)
        if self.logit is not None:
            cols.append(self.logit.predict(X))
        return np.concatenate(cols, axis=1)


class DefaultEstimator(QualityEstimator):
    """Stacked kNN + ridge quality estimator (see module docstring).

    ks:      neighbourhood sizes of the kNN base learners.
    prior:   pseudo-count (in squared-similarity units) shrinking kNN toward per-model means.
    inner_folds: folds of the inner split that trains the stacker.
    seed:    seed of the inner split (the only randomness).
    """

    name: ClassVar[str] = "default"

    def __init__(
        self,
        ks: tuple[int, ...] = (10, 40, 160),
        prior: float = 1.0,
        power: float = 2.0,
        logistic: bool = False,
        stack: str = "global",
        inner_folds: int = 4,
        seed: int = 0,
    ) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.prior = float(prior)
        self.power = float(power)
        self.logistic = bool(logistic)
        self.stack = stack
        self.inner_folds = int(inner_folds)
        self.seed = int(seed)

    # ---- features ----------------------------------------------------------------------
    def _z(self, X: Features) -> np.ndarray:
        ex = (X.extra - self.x_mean_) / self.x_std_
        return np.concatenate([X.emb.astype(np.float64), ex], axis=1)

    # ---- fit / predict -----------------------------------------------------------------
    @single_threaded_blas
    def fit(self, X: Features, Q: np.ndarray) -> Self:
        """Fit base learners and the stacker on (X, Q); NaN cells of Q are ignored."""
        Q = check_fit_input(X, Q)
        n, m = Q.shape
        self.n_models_ = m
        extra = np.asarray(X.extra, dtype=np.float64)
        self.x_mean_ = extra.mean(axis=0)
        self.x_std_ = extra.std(axis=0) + 1e-6
        Z = self._z(X)
        mu = column_means(Q)
        folds = max(2, min(self.inner_folds, n // 2))
        perm = np.random.default_rng(self.seed).permutation(n)
        lam = None
        if self.logistic:
            from llmroute.estimators.linear import LinearEstimator

            lam = float(LinearEstimator(seed=self.seed).fit(X, Q).lam_)
        B = None
        for part in np.array_split(perm, folds):
            tr = np.setdiff1d(perm, part)
            base = _Base(self.ks, self.prior, self.power, lam).fit(X.take(tr), Z[tr], Q[tr])
            Bp = base.transform(X.take(part), Z[part])
            if B is None:
                B = np.zeros((n, Bp.shape[1]))
            B[part] = Bp
        Qf = _fill(Q, mu)
        if self.stack == "global":
            self.stack_W_, self.stack_b_, self.stack_alpha_ = _ridge_gcv(B, Qf)
        else:  # local: model j's stacker sees only model j's base predictions (+ shared columns)
            cols = self._local_cols(B.shape[1], m)
            W = np.zeros((B.shape[1], m))
            b = np.zeros(m)
            for j in range(m):
                wj, bj, _ = _ridge_gcv(B[:, cols[j]], Qf[:, [j]])
                W[cols[j], j] = wj[:, 0]
                b[j] = bj[0]
            self.stack_W_, self.stack_b_, self.stack_alpha_ = W, b, 0.0
        self.base_ = _Base(self.ks, self.prior, self.power, lam).fit(X, Z, Q)
        return self

    def _local_cols(self, p: int, m: int) -> list[np.ndarray]:
        """Column indices of B that belong to each model (+ the similarity columns)."""
        blocks = []
        pos = 0
        shared = []
        for _ in self.ks:
            blocks.append(pos)
            pos += m
            shared.append(pos)
            pos += 1
        while pos < p:
            blocks.append(pos)
            pos += m
        return [np.array([b0 + j for b0 in blocks] + shared) for j in range(m)]

    def predict(self, X: Features) -> np.ndarray:
        """(n, m) expected quality in [0, 1]."""
        B = self.base_.transform(X, self._z(X))
        return np.clip(B @ self.stack_W_ + self.stack_b_, 0.0, 1.0)

    # ---- state -------------------------------------------------------------------------
    def _params(self) -> dict:
        return {
            "ks": list(self.ks),
            "prior": self.prior,
            "power": self.power,
            "logistic": self.logistic,
            "stack": self.stack,
            "inner_folds": self.inner_folds,
            "seed": self.seed,
        }

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays (training embeddings and outcomes, weights) and JSON params."""
        b = self.base_
        arrays = {
            "x_mean": np.asarray(self.x_mean_, dtype=np.float64),
            "x_std": np.asarray(self.x_std_, dtype=np.float64),
            "train_emb": b.E,
            "train_q": b.Qf,
            "train_ok": b.ok,
            "mu": b.mu,
            "ridge_w": b.W,
            "ridge_b": b.b,
            "stack_w": self.stack_W_,
            "stack_b": self.stack_b_,
        }
        params = self._params() | {
            "ridge_alpha": b.alpha,
            "stack_alpha": self.stack_alpha_,
            "logistic_lam": b.logistic_lam,
        }
        if b.logit is not None:
            la, lp = b.logit.get_state()
            arrays |= {f"logit.{k}": v for k, v in la.items()}
            params["logit"] = lp
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        """Rebuild a fitted estimator from `get_state()` output."""
        est = cls(
            ks=tuple(params["ks"]),
            prior=params["prior"],
            power=params["power"],
            logistic=params["logistic"],
            stack=params["stack"],
            inner_folds=params["inner_folds"],
            seed=params["seed"],
        )
        est.x_mean_ = np.asarray(arrays["x_mean"], dtype=np.float64)
        est.x_std_ = np.asarray(arrays["x_std"], dtype=np.float64)
        base = _Base(est.ks, est.prior, est.power, params.get("logistic_lam"))
        base.E = np.ascontiguousarray(arrays["train_emb"], dtype=np.float32)
        base.Qf = np.asarray(arrays["train_q"], dtype=np.float32)
        base.ok = np.asarray(arrays["train_ok"], dtype=np.float32)
        base.mu = np.asarray(arrays["mu"], dtype=np.float64)
        base.W = np.asarray(arrays["ridge_w"], dtype=np.float64)
        base.b = np.asarray(arrays["ridge_b"], dtype=np.float64)
        base.alpha = float(params["ridge_alpha"])
        if "logit" in params:
            from llmroute.estimators.linear import LinearEstimator

            la = {k[len("logit.") :]: v for k, v in arrays.items() if k.startswith("logit.")}
            base.logit = LinearEstimator.from_state(la, params["logit"])
        est.base_ = base
        est.stack_W_ = np.asarray(arrays["stack_w"], dtype=np.float64)
        est.stack_b_ = np.asarray(arrays["stack_b"], dtype=np.float64)
        est.stack_alpha_ = float(params["stack_alpha"])
        est.n_models_ = base.Qf.shape[1]
        return est
