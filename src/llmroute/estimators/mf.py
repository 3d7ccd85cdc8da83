"""Matrix factorisation quality estimator (RouteLLM / EmbedLLM style).

score(p, m) = sigmoid(v_m . (W emb_p + b) + c_m): the prompt embedding is projected to a small
latent space shared with learned per-model vectors v_m. Trained with numpy Adam on masked
soft-label BCE with L2 on W and v. Latent size and regularisation are chosen on a held-out part
of the training data (early stopping picks the epoch count).
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator, column_means
from llmroute.estimators.linear import (
    check_fit_input,
    fit_scaler,
    inner_folds,
    logit,
    sigmoid,
    single_threaded_blas,
)
from llmroute.estimators.mlp import GradFn, Params, adam_train

__all__ = ["MFEstimator"]


def _mf_pred(p: Params, Z: np.ndarray) -> np.ndarray:
    U = Z @ p["W"] + p["b"]
    return sigmoid(U @ p["V"].T + p["c"])


def _mf_grad_fn(reg: float) -> GradFn:
    def grad(p: Params, Z: np.ndarray, T: np.ndarray, w: np.ndarray) -> Params:
        U = Z @ p["W"] + p["b"]
        P = sigmoid(U @ p["V"].T + p["c"])
        dS = ((P - T) * w).astype(np.float32)
        dU = dS @ p["V"]
        return {
            "V": dS.T @ U + reg * p["V"],
            "c": dS.sum(axis=0),
            "W": Z.T @ dU + reg * p["W"],
            "b": dU.sum(axis=0),
        }

    return grad


class MFEstimator(QualityEstimator):
    """Prompt-projection x model-embedding factorisation.

    Parameters
    ----------
    dim, reg: latent size and L2 strength (None = choose from `grid` by holdout).
    grid: candidate (dim, reg) pairs.
    """

    name: ClassVar[str] = "mf"
    uses_extra: ClassVar[bool] = False

    def __init__(
        self,
        dim: int | None = None,
        reg: float | None = None,
        grid: tuple[tuple[int, float], ...] = ((16, 1e-3), (64, 1e-4)),
        max_epochs: int = 30,
        batch: int = 256,
        lr: float = 2e-3,
        cv_max_n: int = 8000,
        epochs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.dim = dim
        self.reg = reg
        self.grid = tuple((int(h), float(a)) for h, a in grid)
        self.max_epochs = max_epochs
        self.batch = batch
        self.lr = lr
        self.cv_max_n = cv_max_n
        self.epochs = epochs
        self.seed = seed

    def _init(self, d: int, m: int, k: int, means: np.ndarray) -> Params:
        rng = np.random.default_rng(self.seed)
        return {
            "W": (rng.standard_normal((d, k)) / np.sqrt(d)).astype(np.float32),
            "b": np.zeros(k, dtype=np.float32),
            "V": (rng.standard_normal((m, k)) * 0.01).astype(np.float32),
            "c": logit(means).astype(np.float32),
        }

    @single_threaded_blas
    def fit(self, X: Features, Q: np.ndarray) -> Self:
        """Standardise embeddings, choose (dim, reg, epochs) on a holdout, refit on all rows."""
        Q = check_fit_input(X, Q)
        E = np.asarray(X.emb, dtype=np.float64)
        self.mu_, self.sd_ = fit_scaler(E)
        Z = ((E - self.mu_) / self.sd_).astype(np.float32)
        n, d = Z.shape
        m = Q.shape[1]
        grid = [(self.dim, self.reg)] if self.dim is not None and self.reg is not None else list(self.grid)
        self.cv_scores_: dict[str, float] = {}
        epochs = self.epochs
        choice = grid[0]
        if (len(grid) > 1 or epochs is None) and n >= 50:
            tr, va = inner_folds(n, 5, self.seed, self.cv_max_n)[0]
            best, best_ep = np.inf, min(10, self.max_epochs)
            for k, r in grid:
                p0 = self._init(d, m, k, column_means(Q[tr]))
                _, ep, curve = adam_train(
                    p0,
                    _mf_grad_fn(r),
                    _mf_pred,
                    Z[tr],
                    Q[tr],
                    epochs=self.max_epochs,
                    batch=self.batch,
                    lr=self.lr,
                    seed=self.seed,
                    val=(Z[va], Q[va]),
                )
                score = min(curve)
                self.cv_scores_[f"{k},{r}"] = score
                if score < best:
                    best, choice, best_ep = score, (k, r), int(np.ceil(ep * 1.2))
            if epochs is None:
                epochs = best_ep
        if epochs is None:
            epochs = min(10, self.max_epochs)
        self.dim_, self.reg_, self.epochs_ = int(choice[0]), float(choice[1]), int(epochs)
        p0 = self._init(d, m, self.dim_, column_means(Q))
        self.params_, _, _ = adam_train(
            p0,
            _mf_grad_fn(self.reg_),
            _mf_pred,
            Z,
            Q,
            epochs=self.epochs_,
            batch=self.batch,
            lr=self.lr,
            seed=self.seed,
        )
        return self

    @property
    def model_vectors(self) -> np.ndarray:
        """(m, dim) learned model embeddings."""
        return self.params_["V"]

    def predict(self, X: Features) -> np.ndarray:
        """(n, m) expected quality."""
        E = np.asarray(X.emb, dtype=np.float64)
        if E.shape[1] != len(self.mu_):
            raise ValueError(f"expected embeddings of dim {len(self.mu_)}, got {E.shape[1]}")
        Z = ((E - self.mu_) / self.sd_).astype(np.float32)
        return _mf_pred(self.params_, Z).astype(np.float64)

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays: scaler, projection and model vectors; params: hyper-parameters."""
        arrays = {"mu": self.mu_, "sd": self.sd_, **self.params_}
        params = {
            "dim": self.dim,
            "reg": self.reg,
            "grid": [list(g) for g in self.grid],
            "max_epochs": self.max_epochs,
            "batch": self.batch,
            "lr": self.lr,
            "cv_max_n": self.cv_max_n,
            "epochs": self.epochs,
            "seed": self.seed,
            "fitted": {"dim_": self.dim_, "reg_": self.reg_, "epochs_": self.epochs_},
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
        est.params_ = {k: np.asarray(arrays[k], dtype=np.float32) for k in ("W", "b", "V", "c")}
        est.dim_, est.reg_, est.epochs_ = fitted["dim_"], fitted["reg_"], fitted["epochs_"]
        est.cv_scores_ = {}
        return est
