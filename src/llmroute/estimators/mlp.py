"""A small multi-output MLP quality estimator, trained and run in numpy.

One hidden ReLU layer shared by all models, one sigmoid output per model, masked soft-label
binary cross-entropy, L2 weight decay, Adam. Hidden size and weight decay are chosen on a
held-out part of the training data (with early stopping: the best epoch count is reused for the
final fit on all rows).

Also holds `adam_train`, the minibatch Adam loop that the matrix-factorisation estimator shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Self

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator, column_means
from llmroute.estimators.linear import (
    check_fit_input,
    fit_scaler,
    inner_folds,
    logit,
    masked_bce,
    sigmoid,
    single_threaded_blas,
    stack_features,
)

__all__ = ["MLPEstimator", "adam_train"]

Params = dict[str, np.ndarray]
# (params, Z batch, T batch (0 where missing), weight batch) -> (grads, dS unused)
GradFn = Callable[[Params, np.ndarray, np.ndarray, np.ndarray], Params]
PredFn = Callable[[Params, np.ndarray], np.ndarray]


def adam_train(
    params: Params,
    grad_fn: GradFn,
    pred_fn: PredFn,
    Z: np.ndarray,
    Q: np.ndarray,
    *,
    epochs: int,
    batch: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    patience: int = 4,
) -> tuple[Params, int, list[float]]:
    """Minibatch Adam on masked BCE. Returns (params, best epoch count, validation losses).

    With `val`, training stops after `patience` epochs without improvement and the best
    parameters are returned; without it, it runs exactly `epochs` epochs.
    """
    rng = np.random.default_rng(seed)
    ok = np.isfinite(Q)
    T = np.where(ok, Q, 0.0).astype(np.float32)
    okf = ok.astype(np.float32)
    m1 = {k: np.zeros_like(v) for k, v in params.items()}
    m2 = {k: np.zeros_like(v) for k, v in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = len(Z)
    curve: list[float] = []
    best = (np.inf, 0, {k: v.copy() for k, v in params.items()})
    for ep in range(1, epochs + 1):
        perm = rng.permutation(n)
        for s in range(0, n, batch):
            b = perm[s : s + batch]
            wb = okf[b]
            cnt = wb.sum()
            if cnt == 0:
                continue
            grads = grad_fn(params, Z[b], T[b], wb / cnt)
            step += 1
            c1 = 1 - b1**step
            c2 = 1 - b2**step
            for k, g in grads.items():
                m1[k] = b1 * m1[k] + (1 - b1) * g
                m2[k] = b2 * m2[k] + (1 - b2) * (g * g)
                params[k] -= lr * (m1[k] / c1) / (np.sqrt(m2[k] / c2) + eps)
        if val is not None:
            loss = masked_bce(pred_fn(params, val[0]), val[1])
            curve.append(loss)
            if loss < best[0] - 1e-5:
                best = (loss, ep, {k: v.copy() for k, v in params.items()})
            elif ep - best[1] >= patience:
                break
    if val is not None:
        return best[2], max(best[1], 1), curve
    return params, epochs, curve


def _mlp_pred(p: Params, Z: np.ndarray) -> np.ndarray:
    H = np.maximum(Z @ p["W1"] + p["b1"], 0.0)
    return sigmoid(H @ p["W2"] + p["b2"])


def _mlp_grad_fn(alpha: float) -> GradFn:
    def grad(p: Params, Z: np.ndarray, T: np.ndarray, w: np.ndarray) -> Params:
        A = Z @ p["W1"] + p["b1"]
        H = np.maximum(A, 0.0)
        P = sigmoid(H @ p["W2"] + p["b2"])
        dS = ((P - T) * w).astype(np.float32)
        dH = (dS @ p["W2"].T) * (A > 0)
        return {
            "W2": H.T @ dS + alpha * p["W2"],
            "b2": dS.sum(axis=0),
            "W1": Z.T @ dH + alpha * p["W1"],
            "b1": dH.sum(axis=0),
        }

    return grad


class MLPEstimator(QualityEstimator):
    """One-hidden-layer MLP, multi-output, masked BCE, numpy Adam.

    Parameters
    ----------
    hidden, alpha: layer width and L2 weight decay (None = choose from `grid` by holdout).
    grid: candidate (hidden, alpha) pairs.
    max_epochs, batch, lr: optimiser settings.
    cv_max_n: rows used for the holdout search.
    """

    name: ClassVar[str] = "mlp"
    uses_extra: ClassVar[bool] = True
    # predict: a new array of 0.5 * (1 + tanh(.)), in [0, 1] since |tanh| <= 1
    fresh_unit_output: ClassVar[bool] = True

    def __init__(
        self,
        hidden: int | None = None,
        alpha: float | None = None,
        grid: tuple[tuple[int, float], ...] = ((32, 1e-2), (64, 1e-3), (128, 1e-4)),
        max_epochs: int = 30,
        batch: int = 256,
        lr: float = 2e-3,
        use_extra: bool = True,
        cv_max_n: int = 8000,
        epochs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.hidden = hidden
        self.alpha = alpha
        self.grid = tuple((int(h), float(a)) for h, a in grid)
        self.max_epochs = max_epochs
        self.batch = batch
        self.lr = lr
        self.use_extra = use_extra
        self.cv_max_n = cv_max_n
        self.epochs = epochs
        self.seed = seed

    def _init(self, d: int, m: int, hidden: int, means: np.ndarray, seed: int) -> Params:
        rng = np.random.default_rng(seed)
        return {
            "W1": (rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d)).astype(np.float32),
            "b1": np.zeros(hidden, dtype=np.float32),
            "W2": (rng.standard_normal((hidden, m)) * 0.01).astype(np.float32),
            "b2": logit(means).astype(np.float32),
        }

    @single_threaded_blas
    def fit(self, X: Features, Q: np.ndarray) -> Self:
        """Standardise, choose (hidden, alpha, epochs) on a holdout, refit on all rows."""
        Q = check_fit_input(X, Q)
        Zf = stack_features(X, self.use_extra)
        self.mu_, self.sd_ = fit_scaler(Zf, X.emb.shape[1])
        Z = ((Zf - self.mu_) / self.sd_).astype(np.float32)
        n, d = Z.shape
        m = Q.shape[1]
        means = column_means(Q)
        if self.hidden is not None and self.alpha is not None:
            grid = [(self.hidden, self.alpha)]
        else:
            grid = list(self.grid)
        self.cv_scores_: dict[str, float] = {}
        epochs = self.epochs
        choice = grid[0]
        if (len(grid) > 1 or epochs is None) and n >= 50:
            tr, va = inner_folds(n, 5, self.seed, self.cv_max_n)[0]
            best, best_ep = np.inf, min(10, self.max_epochs)
            for h, a in grid:
                p0 = self._init(d, m, h, column_means(Q[tr]), self.seed)
                _, ep, curve = adam_train(
                    p0,
                    _mlp_grad_fn(a),
                    _mlp_pred,
                    Z[tr],
                    Q[tr],
                    epochs=self.max_epochs,
                    batch=self.batch,
                    lr=self.lr,
                    seed=self.seed,
                    val=(Z[va], Q[va]),
                )
                score = min(curve)
                self.cv_scores_[f"{h},{a}"] = score
                if score < best:
                    best, choice = score, (h, a)
                    # more data in the final fit: slightly more epochs
                    best_ep = int(np.ceil(ep * 1.2))
            if epochs is None:
                epochs = best_ep
        if epochs is None:
            epochs = min(10, self.max_epochs)
        self.hidden_, self.alpha_ = int(choice[0]), float(choice[1])
        self.epochs_ = int(epochs)
        p0 = self._init(d, m, self.hidden_, means, self.seed)
        self.params_, _, _ = adam_train(
            p0,
            _mlp_grad_fn(self.alpha_),
            _mlp_pred,
            Z,
            Q,
            epochs=self.epochs_,
            batch=self.batch,
            lr=self.lr,
            seed=self.seed,
        )
        self.n_features_ = d
        return self

    def predict(self, X: Features) -> np.ndarray:
        """(n, m) expected quality."""
        if self.use_extra and X.extra.shape[1]:  # stack_features, in one copy
            Z = np.concatenate((X.emb, X.extra), axis=1, dtype=np.float64)
        else:
            Z = np.array(X.emb, dtype=np.float64)
        if Z.shape[1] != self.n_features_:
            raise ValueError(f"expected {self.n_features_} feature columns, got {Z.shape[1]}")
        np.subtract(Z, self.mu_, out=Z)
        # divided in float64 and rounded to float32 on the way out (= dividing, then astype)
        Z32 = np.divide(Z, self.sd_, out=np.empty(Z.shape, np.float32), casting="same_kind")
        p = self.params_
        A = Z32 @ p["W1"]
        A += p["b1"]
        np.maximum(A, 0.0, out=A)
        S = A @ p["W2"]
        S += p["b2"]
        # sigmoid as in linear.sigmoid: 0.5 * (1 + tanh(0.5 * z)), same float32 operations
        S *= np.float32(0.5)
        np.tanh(S, out=S)
        S += np.float32(1.0)
        S *= np.float32(0.5)
        return S.astype(np.float64)

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays: scaler and layer weights; params: hyper-parameters and the chosen ones."""
        arrays = {"mu": self.mu_, "sd": self.sd_, **self.params_}
        params = {
            "hidden": self.hidden,
            "alpha": self.alpha,
            "grid": [list(g) for g in self.grid],
            "max_epochs": self.max_epochs,
            "batch": self.batch,
            "lr": self.lr,
            "use_extra": self.use_extra,
            "cv_max_n": self.cv_max_n,
            "epochs": self.epochs,
            "seed": self.seed,
            "fitted": {"hidden_": self.hidden_, "alpha_": self.alpha_, "epochs_": self.epochs_},
        }
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        """Rebuild from `get_state()` output."""
        p = dict(params)
        fitted = p.pop("fitted")
        p["grid"] = tuple(tuple(g) for g in p["grid"])
        est = cls(**p)
        est.mu_ = np.asarray(arrays["mu"], dtype=np.float64)
        est.sd_ = np.asarray(arrays["sd"], dtype=np.float64)
        est.params_ = {k: np.asarray(arrays[k], dtype=np.float32) for k in ("W1", "b1", "W2", "b2")}
        est.hidden_, est.alpha_, est.epochs_ = fitted["hidden_"], fitted["alpha_"], fitted["epochs_"]
        est.n_features_ = est.params_["W1"].shape[0]
        est.cv_scores_ = {}
        return est
