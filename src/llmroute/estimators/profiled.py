"""Models known by their profile: add, replace or remove a model without retraining.

A *profile* is a handful of graded prompts for one model (its rows of a long-format routing
table, e.g. written by `llmroute profile`). `ProfiledEstimator` wraps any fitted quality
estimator (the *base*, trained on the known models) and adds one column per profiled model:

    q_new(x) = mu(x) + r(x) - z * sd(x)

- ``mu(x) = sum_j w_j * q_j(x) + b``: a Bayesian linear regression of the profile's qualities
  on the base's estimates q_j for the same prompts. Prior: w ~ N(1/m, tau2 * I) (every known
  model alike: the prompt's difficulty as the known models see it) with tau2 <= 1/m (about
  the spread of the known models' own unit weight vectors: "a model like one of these, or a
  mix"); flat intercept; noise variance sigma2. sigma2 and tau2 maximise the profile's
  marginal likelihood (no CV noise, no constant tuned to a benchmark). Shrinking toward the
  single closest known model instead transplants that model's prompt-by-prompt swings, which
  a small profile cannot confirm, and hurt the router more often; the closest is reported.
- ``sd(x)``: the posterior standard deviation of mu(x) at that prompt (the level's
  sigma2 / k plus the weights' uncertainty along the prompt's estimates), so the estimate is
  the lower edge of a per-prompt interval: it narrows as the profile grows, and is widest
  where the prompt's estimates are unlike the profile's. An uncertain model is picked only
  where it is clearly better. ``z`` (default 1) sets the width.
- ``r(x)``: the leave-one-out residuals of the linear fit, smoothed over the prompt
  embeddings with a cosine kernel exp(beta * (cos - 1)) and `kappa` pseudo-rows of zero
  residual (sum_i K_i e_i / (kappa + sum_i K_i)), so a region with few profile prompts falls
  back to 0. beta and kappa come from leave-one-out on the profile; the residual is used only
  when it beats "no residual" by more than one standard error.

Known models' columns are the base estimator's predictions, untouched: adding a model leaves
every existing estimate bit-identical, and removing the added model restores the router as it
was. A removed *known* model is hidden (its column is still computed, since added models may
combine it). State is arrays + JSON (no pickle); the base estimator's state is nested. See
docs/onboarding-notes.md for what was measured and tried.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator

__all__ = ["ProfileFit", "ProfiledEstimator", "fit_profile"]

#: noise variance candidates (times the profile's variance) and prior weight variances (up to 1/m)
_SIGMA2 = (0.3, 0.5, 0.7, 0.85, 1.0, 1.2)
_N_TAU2 = 12
#: kernel sharpness and pseudo-rows tried for the residual ("off" is always a candidate)
_BETAS = (5.0, 10.0, 20.0, 40.0)
_KAPPAS = (0.1, 0.3, 1.0, 3.0)


@dataclass
class ProfileFit:
    """One profiled model's learned state (see the module docstring).

    w: (m_base,) posterior mean weights on the base estimates; b: intercept; shift: a constant
    subtracted (0 for new fits; routers saved before the per-prompt interval used it);
    center: (m_base,) the profile's mean base estimates and cov: (m_base, m_base) the weights'
    posterior covariance, level_var: the level's variance (sigma2 / k), z: interval width in
    standard deviations (the estimate is mu - z * sd); emb: (k, d) profile embeddings and
    resid: (k,) their residuals (empty when the residual is off); beta, kappa: the residual
    kernel; closest: index of the base model whose estimates are closest to the profile (least
    mean squared difference; reported only); n_rows: graded profile rows; loo_rmse:
    leave-one-out error of the linear fit.
    """

    w: np.ndarray
    b: float
    shift: float
    emb: np.ndarray
    resid: np.ndarray
    beta: float
    kappa: float
    closest: int
    n_rows: int
    loo_rmse: float
    center: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    level_var: float = 0.0
    z: float = 0.0

    def sd(self, base_q: np.ndarray) -> np.ndarray:
        """(n,) posterior standard deviation of the linear estimate at (n, m_base) estimates."""
        if not len(self.center):
            return np.full(len(base_q), np.sqrt(self.level_var))
        D = np.asarray(base_q, dtype=np.float64) - self.center
        return np.sqrt(self.level_var + np.einsum("ij,jk,ik->i", D, self.cov, D))

    def predict(self, base_q: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """(n,) estimates from (n, m_base) clipped base estimates and (n, d) embeddings."""
        q = base_q @ self.w + (self.b - self.shift)
        if self.z:
            q = q - self.z * self.sd(base_q)
        if len(self.resid):
            q = q + _kernel_residual(emb, self.emb, self.resid, self.beta, self.kappa)
        return q


def _kernel_residual(emb: np.ndarray, E: np.ndarray, e: np.ndarray, beta: float, kappa: float) -> np.ndarray:
    K = np.exp(beta * (np.asarray(emb, dtype=np.float64) @ E.T.astype(np.float64) - 1.0))
    return (K @ e) / (kappa + K.sum(axis=1))


def _kernel_loo(E: np.ndarray, e: np.ndarray, beta: float, kappa: float) -> np.ndarray:
    """Leave-one-out kernel residual predictions on the profile itself."""
    K = np.exp(beta * (E @ E.T - 1.0))
    np.fill_diagonal(K, 0.0)
    return (K @ e) / (kappa + K.sum(axis=1))


def _bayes_linear(
    P: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, float, np.ndarray]:
    """Bayesian linear regression of y on P (prior w ~ N(1/m, tau2 I), tau2 <= 1/m, flat
    intercept), sigma2 and tau2 by marginal likelihood on a grid.

    Returns (w, b, center, cov, sigma2, loo residuals): posterior mean weights and intercept,
    the profile's mean estimates, the weights' posterior covariance, the noise variance and
    the exact leave-one-out residuals of the posterior mean (hat-matrix identity)."""
    k, m = P.shape
    w0 = np.full(m, 1.0 / m)
    center, ym = P.mean(axis=0), float(y.mean())
    Pc = P - center
    r = y - ym - Pc @ w0
    # marginal likelihood of r ~ N(0, sigma2 I + tau2 Pc Pc') through the SVD of Pc (O(m) per point)
    U, s, _ = np.linalg.svd(Pc, full_matrices=False)
    s2v, u2, rr = s**2, (U.T @ r) ** 2, float(r @ r)
    v = max(float(np.var(y)), 1e-4)
    best = (-np.inf, v, 1.0 / m)
    for sigma2 in v * np.asarray(_SIGMA2):
        for tau2 in np.logspace(-3, np.log10(1.0 / m), _N_TAU2):
            g = tau2 * s2v / (sigma2 + tau2 * s2v)
            quad = (rr - float(g @ u2)) / sigma2
            logdet = k * np.log(sigma2) + float(np.log1p(tau2 * s2v / sigma2).sum())
            ll = -0.5 * (quad + logdet)
            if ll > best[0]:
                best = (ll, sigma2, tau2)
    _, sigma2, tau2 = best
    cov = np.linalg.inv(Pc.T @ Pc / sigma2 + np.eye(m) / tau2)
    delta = cov @ (Pc.T @ r) / sigma2
    w = w0 + delta
    b = ym - float(center @ w)
    hat = np.einsum("ij,jk,ik->i", Pc, cov, Pc) / sigma2 + 1.0 / k
    loo = (y - (P @ w + b)) / np.clip(1.0 - hat, 1e-6, None)
    return w, b, center, cov, float(sigma2), loo


def fit_profile(base_q: np.ndarray, emb: np.ndarray, y: np.ndarray, z: float = 1.0) -> ProfileFit:
    """Fit one profiled model from its graded profile (see the module docstring).

    base_q: (k, m_base) the base estimator's clipped estimates on the profile prompts;
    emb: (k, d) their L2-normalised embeddings; y: (k,) the model's graded qualities in [0, 1];
    z: the estimate is the lower edge of a +-z standard deviation interval at each prompt.
    """
    P = np.asarray(base_q, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    E = np.asarray(emb, dtype=np.float64)
    k, m = P.shape
    if k == 0 or len(y) != k or len(E) != k:
        raise ValueError(
            f"need matching profile rows, got {k} estimates, {len(y)} grades, {len(E)} embeddings"
        )
    if not np.all(np.isfinite(y)):
        raise ValueError("profile qualities must be finite (drop ungraded rows first)")
    # the closest known model (reported): the least mean squared difference from the profile
    diff = y[:, None] - P
    closest = int(np.argmin((diff**2).mean(axis=0) + 1e-12 * np.arange(m)))
    if k < 3:  # too few rows to fit: the prior plus the mean offset, level sd 0.5 / sqrt(k)
        w0 = np.full(m, 1.0 / m)
        b = float(y.mean() - P.mean(axis=0) @ w0)
        return ProfileFit(
            w0, b, 0.0, E[:0], np.zeros(0), 0.0, 0.0, closest, k, float("nan"), level_var=0.25 / k, z=z
        )
    w, b, center, cov, sigma2, loo = _bayes_linear(P, y)
    err = float(np.mean(loo**2))
    # residual kernel on the leave-one-out residuals: used only when it beats "no residual" by
    # more than one standard error (leave-one-out over the profile)
    beta, kappa = 0.0, 0.0
    best_err = err
    se_r = float(np.std(loo**2) / np.sqrt(k))
    for bt in _BETAS:
        for kp in _KAPPAS:
            e2 = float(np.mean((loo - _kernel_loo(E, loo, bt, kp)) ** 2))
            if e2 < min(best_err, err - se_r):
                beta, kappa, best_err = bt, kp, e2
    if beta > 0:
        # the kernel stores the in-sample residuals of the linear part
        resid, emb_keep = y - (P @ w + b), E.astype(np.float32)
    else:
        resid, emb_keep = np.zeros(0), E[:0].astype(np.float32)
    return ProfileFit(
        w,
        b,
        0.0,
        emb_keep,
        resid,
        beta,
        kappa,
        closest,
        k,
        float(np.sqrt(err)),
        center=center,
        cov=cov,
        level_var=sigma2 / k,
        z=float(z),
    )


class ProfiledEstimator(QualityEstimator):
    """A fitted base estimator plus profiled models; see the module docstring.

    base: the fitted base estimator (its columns are `base_models`). `columns_` lists the
    output columns: a base column index (>= 0) or ``-(p + 1)`` for profiled model p.
    Use `add` / `remove` (or `llmroute.onboard.add_model`, `Router.add_model`); `fit` is not
    supported: a profiled estimator is built on top of a fitted one.
    """

    name: ClassVar[str] = "profiled"

    def __init__(self, base: QualityEstimator, n_base: int) -> None:
        self.base = base
        self.n_base = int(n_base)
        self.columns_: list[int] = list(range(self.n_base))
        self.profiles_: list[ProfileFit] = []

    @property
    def uses_extra(self) -> bool:
        return bool(getattr(self.base, "uses_extra", True))

    def fit(self, X: Features, Q: np.ndarray) -> Self:
        raise TypeError(
            "a ProfiledEstimator wraps a fitted estimator; fit the base and add models by profile"
        )

    # ---- columns -----------------------------------------------------------------------------
    def base_estimates(self, X: Features) -> np.ndarray:
        """(n, m_base) the base estimator's estimates, clipped to [0, 1] (as the router clips)."""
        q = np.array(self.base.predict(X), dtype=np.float64)
        np.minimum(np.maximum(q, 0.0, out=q), 1.0, out=q)
        return q

    def add(self, fit: ProfileFit) -> None:
        """Append a profiled model as the last column."""
        if fit.w.shape != (self.n_base,):
            raise ValueError(f"profile weights have shape {fit.w.shape}, expected ({self.n_base},)")
        self.profiles_.append(fit)
        self.columns_.append(-len(self.profiles_))

    def remove(self, column: int) -> None:
        """Drop output column `column` (a profiled model's state is dropped with it)."""
        ref = self.columns_.pop(column)
        if ref < 0:
            p = -ref - 1
            del self.profiles_[p]
            self.columns_ = [c if c >= 0 or -c - 1 < p else c + 1 for c in self.columns_]

    # ---- prediction --------------------------------------------------------------------------
    def predict(self, X: Features) -> np.ndarray:
        raw = np.asarray(self.base.predict(X))
        if not self.profiles_ and self.columns_ == list(range(self.n_base)):
            return raw
        out = np.empty((raw.shape[0], len(self.columns_)), dtype=np.float64)
        base_q = None
        for j, ref in enumerate(self.columns_):
            if ref >= 0:
                out[:, j] = raw[:, ref]
            else:
                if base_q is None:
                    base_q = np.minimum(np.maximum(np.asarray(raw, dtype=np.float64), 0.0), 1.0)
                out[:, j] = self.profiles_[-ref - 1].predict(base_q, X.emb)
        return out

    # ---- state -------------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays, params = self.base.get_state()
        out = {f"base/{k}": v for k, v in arrays.items()}
        profiles = []
        for p, f in enumerate(self.profiles_):
            out[f"p{p}/w"] = f.w
            out[f"p{p}/emb"] = np.asarray(f.emb, dtype=np.float32)
            out[f"p{p}/resid"] = f.resid
            out[f"p{p}/center"] = f.center
            out[f"p{p}/cov"] = f.cov
            profiles.append(
                {
                    "b": f.b,
                    "shift": f.shift,
                    "level_var": f.level_var,
                    "z": f.z,
                    "beta": f.beta,
                    "kappa": f.kappa,
                    "closest": f.closest,
                    "n_rows": f.n_rows,
                    "loo_rmse": None if not np.isfinite(f.loo_rmse) else f.loo_rmse,
                }
            )
        cls = type(self.base)
        meta = {
            "base_class": f"{cls.__module__}:{cls.__qualname__}",
            "base_params": params,
            "n_base": self.n_base,
            "columns": self.columns_,
            "profiles": profiles,
        }
        return out, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        module, _, name = str(params["base_class"]).partition(":")
        if not module.startswith("llmroute.estimators."):
            raise ValueError(f"refusing to load base estimator class {params['base_class']!r}")
        base_cls = getattr(importlib.import_module(module), name)
        base = base_cls.from_state(
            {k[5:]: v for k, v in arrays.items() if k.startswith("base/")}, params["base_params"]
        )
        est = cls(base, params["n_base"])
        est.columns_ = [int(c) for c in params["columns"]]
        for p, meta in enumerate(params["profiles"]):
            resid = np.asarray(arrays[f"p{p}/resid"], dtype=np.float64)
            est.profiles_.append(
                ProfileFit(
                    w=np.asarray(arrays[f"p{p}/w"], dtype=np.float64),
                    b=float(meta["b"]),
                    shift=float(meta["shift"]),
                    emb=np.asarray(arrays[f"p{p}/emb"], dtype=np.float32),
                    resid=resid,
                    beta=float(meta["beta"]),
                    kappa=float(meta["kappa"]),
                    closest=int(meta["closest"]),
                    n_rows=int(meta["n_rows"]),
                    loo_rmse=float("nan") if meta["loo_rmse"] is None else float(meta["loo_rmse"]),
                    # routers saved before the per-prompt interval: a constant shift only
                    center=np.asarray(arrays.get(f"p{p}/center", np.zeros(0)), dtype=np.float64),
                    cov=np.asarray(arrays.get(f"p{p}/cov", np.zeros((0, 0))), dtype=np.float64),
                    level_var=float(meta.get("level_var", 0.0)),
                    z=float(meta.get("z", 0.0)),
                )
            )
        return est
