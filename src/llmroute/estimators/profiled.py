"""Models known by their profile: add, replace or remove a model without retraining.

A *profile* is a handful of graded prompts for one model (its rows of a long-format routing
table, e.g. written by `llmroute profile`). `ProfiledEstimator` wraps any fitted quality
estimator (the *base*, trained on the known models) and adds one column per profiled model:

    q_new(x) = sum_j w_j * q_j(x) + b          (a combination of the known models' estimates)
             + r(x)                            (a residual that varies with the prompt)
             - margin(x)                       (pessimism for an uncertain profile)

Two fits (`fit_profile(method=...)`):

- ``"ridge"`` (the default): non-negative ridge of the profile's qualities on the base's
  estimates, shrunk toward equal weights, penalty by 5-fold CV with the one-standard-error
  rule (with 0/1 grades this nearly always picks "the average known model at the profile's
  level"); margin = the held-out rmse / sqrt(k), the same at every prompt.
- ``"paired"`` (opt-in, docs/onboarding-notes.md "Session 3"): when the known models' own
  grades on the profile prompts are given (the profile table holds their rows, as `llmroute
  profile --models new,known...` writes it, or a reference table such as the training table),
  the new model's grades minus the known models' luck on the same prompts (their grades minus
  their estimates, weighted by a cross-fitted ridge: `_paired`) keep each prompt's expected
  value with much less noise. Weights: Bayesian, summing to 1, w = 1/m + d with d ~ N(0,
  (I - 11'/m) / m), the spread of the known models' own unit weight vectors (`_bayes_weights`);
  margin(x) = z posterior sds of the fitted mean at the prompt (the level's plus the
  weights' along the prompt's estimates), so it is wider where the weights are unsure; plus,
  where each known model re-onboarded from the same profile prompts (`_reonboard`) misses its
  own estimates more than it does on the profile, that excess (docs/onboarding-notes.md
  "Session 8": prompts the profile barely covers, e.g. a task with 3 lucky rows).
- ``"margin"`` (opt-in, docs/onboarding-notes.md "Session 4"): the "paired" fit with the margin
  on the *decision*: at each prompt the new model is lowered by z sds of its estimated
  difference from the best known model there (j = the highest base estimate): the level part
  of that sd is the smaller of the fit's level noise and the paired difference's own (the new
  model's grades minus model j's on the same profile prompts, around the fitted difference),
  plus the weights' uncertainty along the prompt. So it wins a prompt only where it beats the
  best known model by z sds of their difference. z is meant to be calibrated per router by
  re-onboarding its known models from the training table (`calibrate_z`).
- ``"task"`` (opt-in, docs/onboarding-notes.md "A per-task offset"): the "paired" fit plus a
  per-task offset, shrunk by a hierarchical prior across tasks, weighted by the prompt's task
  membership p(t | x) from a task classifier kept in the router
  (`llmroute.estimators.profiled_task`); "paired" exactly when no task labels are known.
- ``"region"`` (opt-in, docs/onboarding-notes.md "A per-region offset with the known models'
  prior"): as "task" (regions: tasks, else embedding clusters), but each region's offset is
  shrunk by a prior whose variance is how far the known models' own regional offsets move when
  they are re-onboarded from the same profile prompts (`llmroute.estimators.profiled_region`).

Both share ``r(x)``: held-out (5-fold) residuals smoothed over the prompt embeddings with a
cosine kernel exp(beta * (cos - 1)) and `kappa` pseudo-rows of zero residual (sum_i K_i e_i /
(kappa + sum_i K_i)), so a region with few profile prompts falls back to 0; beta and kappa by
leave-one-out on the profile; used only when it beats "no residual" by one standard error.

Known models' columns are the base estimator's predictions, untouched: adding a model leaves
every existing estimate bit-identical, and removing the added model restores the router as it
was. A removed *known* model is hidden (its column is still computed, since added models may
combine it). State is arrays + JSON (no pickle); the base estimator's state is nested.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator
from llmroute.estimators.profiled_factor import FactorFit, FactorModel
from llmroute.estimators.profiled_region import RegionStats, region_stats, region_tau2
from llmroute.estimators.profiled_task import TaskModel, task_offsets

__all__ = [
    "METHODS",
    "Z_GRID",
    "ProfileFit",
    "ProfiledEstimator",
    "calibrate_z",
    "fit_profile",
    "smallest_safe_z",
]

#: how a profiled model is fitted (`fit_profile`); the first is the default
METHODS = ("ridge", "paired", "margin", "task", "region")
#: margins tried by `calibrate_z` (sds of the estimated difference), smallest first
Z_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
#: ridge penalties tried (times the number of profile rows); the last is "closest model only"
_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 1e6)
#: kernel sharpness and pseudo-rows tried for the residual ("off" is always a candidate)
_BETAS = (5.0, 10.0, 20.0, 40.0)
_KAPPAS = (0.1, 0.3, 1.0, 3.0)


@dataclass
class ProfileFit:
    """One profiled model's learned state (see the module docstring).

    w: (m_base,) weights on the base estimates; b: intercept; shift: a constant pessimistic
    shift (fits with < 3 rows, and fits saved by earlier versions); emb: (k, d) profile
    embeddings and resid: (k,) their residuals (empty when the residual is off); beta, kappa:
    the residual kernel; closest: index of the base model whose estimates are closest to the
    profile (least mean squared difference; reported only); n_rows: graded profile rows;
    loo_rmse: held-out error of the fit; center (m_base,), wcov (m_base, m_base), level_var:
    the posterior sd at a prompt is sqrt(level_var + d' wcov d), d = its estimates - center;
    z: how many of those sds the estimate is lowered by; diff_var (m_base,): method "margin":
    the level variance of the estimated difference from each known model (used for the best
    known model at each prompt instead of level_var; None = the level sd). Method "task"
    (`llmroute.estimators.profiled_task`): task_model gives p(t | x), task_delta (T,) and
    task_var (T,) the per-task offsets' posterior means and variances, added to the mean and
    the variance (None: no offsets, "paired" exactly). Methods "paired" and "task" with the
    known models' grades (`_reonboard`, docs/onboarding-notes.md "Session 8"): reon_w (m_base, m_base) and
    reon_b (m_base,) re-onboard each known model j from the same profile prompts (column j: its
    weights on the others, 0 at j; NaN in reon_b: not re-onboarded); at a prompt, the mean squared
    miss of those re-onboarded columns against the known models' own estimates, beyond reon_ref
    (its mean over the profile prompts), is added to the variance (None: no such term).
    region: method "region" (`llmroute.estimators.profiled_region`): task_model is the router's
    region model and task_delta / task_var its offsets, shrunk by the known models' prior.
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
    center: np.ndarray | None = None
    wcov: np.ndarray | None = None
    level_var: float = 0.0
    z: float = 0.0
    diff_var: np.ndarray | None = None
    task_model: TaskModel | None = None
    task_delta: np.ndarray | None = None
    task_var: np.ndarray | None = None
    reon_w: np.ndarray | None = None
    reon_b: np.ndarray | None = None
    reon_ref: float = 0.0
    region: bool = False

    @property
    def margin(self) -> float:
        """How far below the fitted quality the estimate is at the profile's centre."""
        return float(self.shift + self.z * np.sqrt(self.level_var))

    def predict(self, base_q: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """(n,) estimates from (n, m_base) clipped base estimates and (n, d) embeddings."""
        q, sd = self.predict_parts(base_q, emb)
        return q if self.z <= 0 else q - self.z * sd

    def predict_parts(self, base_q: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fitted mean (n,), posterior sd (n,)) at each prompt: `predict` is mean - z * sd. The
        constant `shift` is in the mean; the sd is 0 for fits without a posterior."""
        q = base_q @ self.w + (self.b - self.shift)
        if len(self.resid):
            q = q + _kernel_residual(emb, self.emb, self.resid, self.beta, self.kappa)
        if self.wcov is None or self.center is None:
            return q, np.zeros(len(q))
        d = base_q - self.center
        level = np.full(len(q), self.level_var)
        if self.diff_var is not None:
            # the sd of the difference from the best known model at the prompt
            level = self.diff_var[np.argmax(base_q, axis=1)]
        var = level + np.einsum("ij,jk,ik->i", d, self.wcov, d)
        if self.task_model is not None and self.task_delta is not None and self.task_var is not None:
            # the offset of the prompt's task, unknown: its mixture mean and variance
            p = self.task_model.proba(emb)
            off = p @ self.task_delta
            q = q + off
            var = var + np.maximum(p @ (self.task_var + self.task_delta**2) - off**2, 0.0)
        if self.reon_w is not None and self.reon_b is not None:
            # where the known models, re-onboarded from the same prompts, miss more than on the
            # profile itself, the new model's column is as unsure
            var = var + np.maximum(_reonboard_miss(base_q, self.reon_w, self.reon_b) - self.reon_ref, 0.0)
        return q, np.sqrt(var)


def _kernel_residual(emb: np.ndarray, E: np.ndarray, e: np.ndarray, beta: float, kappa: float) -> np.ndarray:
    K = np.exp(beta * (np.asarray(emb, dtype=np.float64) @ E.T.astype(np.float64) - 1.0))
    return (K @ e) / (kappa + K.sum(axis=1))


def _kernel_loo(E: np.ndarray, e: np.ndarray, beta: float, kappa: float) -> np.ndarray:
    """Leave-one-out kernel residual predictions on the profile itself."""
    K = np.exp(beta * (E @ E.T - 1.0))
    np.fill_diagonal(K, 0.0)
    return (K @ e) / (kappa + K.sum(axis=1))


def _loo_ridge(U: np.ndarray, e: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge of e on U with intercept, penalty by exact leave-one-out: (v, intercept)."""
    um, em = U.mean(axis=0), e.mean()
    Uc, ec = U - um, e - em
    best: tuple[float, np.ndarray] | None = None
    for a in alphas:
        Ginv = np.linalg.inv(Uc.T @ Uc + a * np.eye(U.shape[1]))
        v = Ginv @ (Uc.T @ ec)
        H = np.einsum("ij,jk,ik->i", Uc, Ginv, Uc) + 1.0 / len(e)
        err = float(np.mean(((ec - Uc @ v) / np.clip(1.0 - H, 1e-6, None)) ** 2))
        if best is None or err < best[0]:
            best = (err, v)
    assert best is not None
    return best[1], float(em - um @ best[1])


def _reonboard(P: np.ndarray, known: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each known model j onboarded as if new, from the same profile prompts: its grades there
    (rows graded for it, at least 10), paired with the other known models' (`_paired`), fitted by
    `_bayes_weights` on the others' estimates. Returns W (m, m) (column j: the weights on the
    others, 0 at j) and B (m,) (intercepts; NaN where j was not re-onboarded)."""
    m = P.shape[1]
    W, B = np.zeros((m, m)), np.full(m, np.nan)
    for j in range(m):
        ok = np.flatnonzero(np.isfinite(known[:, j]))
        if len(ok) < 10 or m < 2:
            continue
        others = np.array([i for i in range(m) if i != j])
        Po = P[np.ix_(ok, others)]
        yj = _paired(Po, known[ok, j], known[np.ix_(ok, others)], folds[ok])
        w, b, _, _ = _bayes_weights(Po, yj, Po.mean(axis=0))
        W[others, j], B[j] = w, b
    return W, B


def _reonboard_miss(base_q: np.ndarray, W: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(n,) mean over the re-onboarded known models of (own estimate - re-onboarded column)^2."""
    ok = np.isfinite(B)
    if not ok.any():
        return np.zeros(len(base_q))
    miss = base_q[:, ok] - (base_q @ W[:, ok] + B[ok])
    return np.mean(miss**2, axis=1)


def _paired(P: np.ndarray, y: np.ndarray, known: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The profile with the known models' luck on the same prompts taken out (a control variate).

    U = known grades - their estimates on the profile prompts (0 where a known model has no
    grade) averages ~0 at every prompt, so y - U v has the same expected value as y for any v;
    v (ridge of y's deviation from the equal-weight shape on U) makes it much less noisy when
    the new model succeeds and fails on the same prompts as the known ones. v is cross-fitted
    (each fold's rows use a v fitted on the other folds) so the later CV errors stay honest.
    """
    U = np.where(np.isfinite(known), known - P, 0.0)
    e = y - P.mean(axis=1)
    alphas = np.array([0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1e4]) * len(y) / 100
    out = np.empty_like(y)
    for f in np.unique(folds):
        te = folds == f
        v, _ = _loo_ridge(U[~te], e[~te], alphas)
        out[te] = y[te] - U[te] @ v
    return out


def fit_profile(
    base_q: np.ndarray,
    emb: np.ndarray,
    y: np.ndarray,
    z: float = 1.0,
    known: np.ndarray | None = None,
    method: str = "ridge",
    task_model: TaskModel | None = None,
    task_member: np.ndarray | None = None,
    region_prior: RegionStats | None = None,
) -> ProfileFit:
    """Fit one profiled model from its graded profile (see the module docstring).

    base_q: (k, m_base) the base estimator's clipped estimates on the profile prompts;
    emb: (k, d) their L2-normalised embeddings; y: (k,) the model's graded qualities in [0, 1];
    z: how many standard errors the estimate is lowered by; method: "ridge" (the default: the
    non-negative ridge toward equal weights, minus z * rmse / sqrt(k)) or "paired" (the
    Bayesian weights summing to 1 and a per-prompt lower bound, on the paired profile);
    known: (k, m_base) the known models' own grades on the profile prompts (NaN = not graded),
    used by "paired" and "margin" (`_paired`); "ridge" ignores them. "margin": as "paired",
    with the per-prompt sd taken of the difference from the best known model (`ProfileFit`).
    "task": as "paired", plus a per-task offset (`llmroute.estimators.profiled_task`) when
    task_model (p(t | x)) and task_member ((k, T) the profile prompts' task membership, one-hot
    where labelled) are given; without them it is "paired" exactly. "region": as "task" with
    task_model / task_member the regions (tasks or clusters), each offset's prior variance
    measured on the known models re-onboarded from the same prompts (`region_tau2`) on
    region_prior (truth rows' statistics, e.g. the training table's; None: the profile rows'
    own known grades); "paired" exactly without the known grades or regions.
    """
    if method not in METHODS:
        raise ValueError(f"unknown profile method {method!r}; use one of {METHODS}")
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
    # the prior: every known model alike (the prompt's difficulty as the known models see it),
    # plus the profile's mean offset; the data move the weights toward particular models
    w0 = np.full(m, 1.0 / m)
    if k < 3:  # too few rows to fit anything: the average known model at the profile's level
        b = float(y.mean() - P.mean(axis=0) @ w0)
        return ProfileFit(w0, b, z * 0.5 / np.sqrt(k), E[:0], np.zeros(0), 0.0, 0.0, closest, k, float("nan"))
    folds = np.random.default_rng(0).permutation(k) % min(5, k)
    S, s2, pc = None, 0.0, P.mean(axis=0)
    y_raw, paired = y, False
    if method in ("paired", "margin", "task", "region"):
        if known is not None and k >= 10 and np.isfinite(known).any():
            if np.shape(known) != (k, m):
                raise ValueError(f"known grades have shape {np.shape(known)}, expected ({k}, {m})")
            y, paired = _paired(P, y, np.asarray(known, dtype=np.float64), folds), True
        w, b, S, s2 = _bayes_weights(P, y, pc)
        loo = np.empty(k)  # 5-fold held-out residuals
        for f in np.unique(folds):
            te = folds == f
            wf, bf, _, _ = _bayes_weights(P[~te], y[~te], pc)
            loo[te] = y[te] - (P[te] @ wf + bf)
    else:
        # penalty by 5-fold CV with the one-standard-error rule: the strongest shrinkage toward
        # the prior whose held-out error is within one standard error of the best
        cv = [_cv_residuals(P, y, w0, a * k, folds) for a in _ALPHAS]
        errs = np.array([np.mean(r**2) for r in cv])
        i_min = int(np.argmin(errs))
        se = float(np.std(cv[i_min] ** 2) / np.sqrt(k))
        i = max(j for j in range(len(_ALPHAS)) if errs[j] <= errs[i_min] + se)
        w, b = _ridge_nn(P, y, w0, _ALPHAS[i] * k)
        loo = cv[i]
    reon_wb = None
    if method in ("paired", "task", "region") and paired:
        # the known models re-onboarded from the same prompts (the interval's term below; the
        # region prior's known models)
        reon_wb = _reonboard(P, np.asarray(known, dtype=np.float64), folds)
    task: dict = {}
    off = np.zeros(k)
    if method in ("task", "region") and task_model is not None and task_member is not None:
        if np.shape(task_member) != (k, len(task_model.tasks)):
            raise ValueError(
                f"task membership has shape {np.shape(task_member)}, expected ({k}, {len(task_model.tasks)})"
            )
        tau2 = None
        if method == "region":
            stats = region_prior
            if stats is None and paired:
                stats = region_stats(np.asarray(known, dtype=np.float64), P, task_member)
            if reon_wb is not None and stats is not None and len(stats.n) == len(task_model.tasks):
                tau2 = region_tau2(stats, *reon_wb)
        if method == "task" or tau2 is not None:
            # per-task offsets of the held-out residuals, before the kernel (which sees what is left)
            delta, dvar, _ = task_offsets(loo, task_member, tau2=tau2)
            task = {
                "task_model": task_model,
                "task_delta": delta,
                "task_var": dvar,
                "region": tau2 is not None,
            }
            off = np.asarray(task_member, dtype=np.float64) @ delta
            loo = loo - off
    err = float(np.mean(loo**2))
    # residual kernel on the held-out residuals: used only when it beats "no residual" by more
    # than one standard error (leave-one-out over the profile)
    beta, kappa, final_err = 0.0, 0.0, err
    se_r = float(np.std(loo**2) / np.sqrt(k))
    for bt in _BETAS:
        for kp in _KAPPAS:
            e2 = float(np.mean((loo - _kernel_loo(E, loo, bt, kp)) ** 2))
            if e2 < min(final_err, err - se_r):
                beta, kappa, final_err = bt, kp, e2
    if beta > 0:
        # the kernel stores the in-sample residuals of the linear part
        resid, emb_keep = y - (P @ w + b) - off, E.astype(np.float32)
    else:
        resid, emb_keep = np.zeros(0), E[:0].astype(np.float32)
    rmse = float(np.sqrt(final_err))
    if S is None:
        shift = z * rmse / np.sqrt(k)
        return ProfileFit(w, b, shift, emb_keep, resid, beta, kappa, closest, k, rmse)
    if beta > 0:
        # what the kernel explains is no longer noise for the interval (the weights' posterior
        # scales with the noise variance)
        S, s2 = S * (final_err / s2), final_err
    elif task and final_err < s2:
        # what the task offsets explain is no longer noise for the level and the weights
        S, s2 = S * (final_err / s2), final_err
    diff_var = None
    if method == "margin":
        diff_var = np.full(m, s2 / k)
        if paired:
            # the paired difference from each known model j around the fitted difference (held
            # out): (y - G_j) - (f - P_j); where it is less noisy than the level, it sets the sd
            f = y - loo
            r = (y_raw[:, None] - np.asarray(known, dtype=np.float64)) - (f[:, None] - P)
            for j in range(m):
                rj = r[np.isfinite(r[:, j]), j]
                if len(rj) >= 10:
                    diff_var[j] = min(diff_var[j], float(np.mean((rj - rj.mean()) ** 2)) / k)
    reon: dict = {}
    if reon_wb is not None:
        # the known models re-onboarded from the same prompts: where their columns miss their own
        # estimates more than on the profile, the new model's column is as unsure (Session 8)
        W, B = reon_wb
        if np.isfinite(B).any():
            reon = {"reon_w": W, "reon_b": B, "reon_ref": float(np.mean(_reonboard_miss(P, W, B)))}
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
        rmse,
        center=pc,
        wcov=S,
        level_var=s2 / k,
        z=z,
        diff_var=diff_var,
        **task,
        **reon,
    )


def calibrate_z(
    P: np.ndarray,
    Q: np.ndarray,
    q_hat: np.ndarray,
    c_hat: np.ndarray,
    C: np.ndarray,
    emb: np.ndarray,
    k: int,
    *,
    method: str = "margin",
    zs: tuple[float, ...] = Z_GRID,
    bar: float = 0.005,
    draws: int = 3,
    seed: int = 0,
) -> tuple[float, dict[tuple[int, int], list[float]]]:
    """The smallest margin z under which re-onboarding each known model from a k-prompt profile
    hurts no simulated router by more than `bar` (gap closed), on a router's training prompts,
    among the simulated additions that the largest z keeps from hurting (a hurt that no margin
    on the quality removes, e.g. a cheaper model picked on cost, does not set z).

    For each known model j in turn, `draws` times: a profile of k of its graded prompts (with the other
    models' grades on them, a paired profile), fitted by `fit_profile(method=method)` on the
    other models' estimates; the rest of the prompts are routed by the other models alone and
    with j added at each z (j's cost estimate as is); gain = gap closed with j - without, on the
    true grades Q and costs C. An internal criterion: only the router's training table is used.

    P: (n, m) base estimates (clipped) the profile combines; q_hat, c_hat: (n, m) the router's
    quality and cost estimates (its decisions); Q, C: (n, m) true grades (NaN = not graded) and
    costs; emb: (n, d) embeddings. Returns (z, {(j, draw): gains per z}); 1.0 (the
    uncalibrated default) when no known model has k + 50 graded prompts to simulate with.
    """
    from llmroute.eval.metrics import aiq, curve_from_picks, gap_closed, router_picks
    from llmroute.eval.runner import _context

    n, m = P.shape
    rng = np.random.default_rng(seed)
    gains: dict[tuple[int, int], list[float]] = {}
    for j, d in ((j, d) for j in range(m) for d in range(draws)):
        graded = np.flatnonzero(np.isfinite(Q[:, j]))
        if m < 2 or len(graded) < k + 50:
            continue
        prof = rng.choice(graded, k, replace=False)
        ev = np.setdiff1d(np.arange(n), prof)
        others = [i for i in range(m) if i != j]
        fit = fit_profile(
            P[np.ix_(prof, others)],
            emb[prof],
            Q[prof, j],
            z=0.0,
            known=Q[np.ix_(prof, others)],
            method=method,
        )
        mean, sd = fit.predict_parts(P[np.ix_(ev, others)], emb[ev])
        Qe, Ce = Q[ev], C[ev]
        ctx = _context(Qe, Ce)

        def gap(q: np.ndarray, c: np.ndarray, cols: list[int], Qe=Qe, Ce=Ce, ctx=ctx) -> float:
            picks = np.asarray(cols)[router_picks(q, c, ctx["lambdas"])]
            a = aiq(curve_from_picks(Qe, Ce, picks), ctx["c_min"], ctx["c_max"])
            return gap_closed(a, ctx["single_hull_aiq"], ctx["oracle_aiq"])

        qo, co = q_hat[np.ix_(ev, others)], c_hat[np.ix_(ev, others)]
        g0 = gap(qo, co, others)
        c1 = np.column_stack([co, c_hat[ev, j]])
        gains[j, d] = [
            gap(np.column_stack([qo, np.clip(mean - z * sd, 0.0, 1.0)]), c1, [*others, j]) - g0 for z in zs
        ]
    return (smallest_safe_z(list(gains.values()), zs, bar) if gains else 1.0), gains


def smallest_safe_z(gains: list[list[float]], zs: tuple[float, ...] = Z_GRID, bar: float = 0.005) -> float:
    """The first of `zs` at which no simulated addition's gain (gains[i][t]: addition i at zs[t])
    is below -bar, counting only the additions that the last z keeps above -bar (a hurt that
    no margin removes does not set z)."""
    fixable = [g for g in gains if g[-1] >= -bar]
    for t, z in enumerate(zs):
        if all(g[t] >= -bar for g in fixable):
            return float(z)
    return float(zs[-1])  # unreachable: the last z keeps every fixable addition safe


def _ridge_nn(P: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Non-negative ridge of y on P with intercept, weights shrunk toward w0: (w, b)."""
    from scipy.optimize import nnls

    m = P.shape[1]
    pm, ym = P.mean(axis=0), y.mean()
    A = np.vstack([P - pm, np.sqrt(alpha) * np.eye(m)])
    t = np.concatenate([y - ym, np.sqrt(alpha) * w0])
    w, _ = nnls(A, t)
    return w, float(ym - pm @ w)


def _cv_residuals(
    P: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float, folds: np.ndarray
) -> np.ndarray:
    """Held-out residuals of `_ridge_nn` over the folds (fold label per row)."""
    out = np.empty(len(y))
    for f in np.unique(folds):
        te = folds == f
        w, b = _ridge_nn(P[~te], y[~te], w0, alpha)
        out[te] = y[te] - (P[te] @ w + b)
    return out


def _bayes_weights(
    P: np.ndarray, y: np.ndarray, pc: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, float]:
    """Posterior of y = b + (P - pc) w + noise with w = 1/m + d, d summing to 0 and
    d ~ N(0, (I - 11'/m) / m), the spread of the known models' own weight vectors e_j around
    the average model, and a flat b; the noise variance by a few fixed-point steps on the
    posterior's residuals. Returns (w, b, posterior covariance of w (m, m), noise variance)."""
    k, m = P.shape
    w0 = np.full(m, 1.0 / m)
    # an orthonormal basis of the weight changes that keep the sum at 1
    B = np.linalg.svd(np.eye(m) - 1.0 / m)[0][:, : m - 1]
    F = (P - pc) @ B
    fbar = F.mean(axis=0)
    F = F - fbar
    e = y - (P - pc) @ w0
    b0 = float(e.mean())
    e = e - b0
    s2 = max(float(np.mean(e**2)), 1e-4)
    FtF, Fte = F.T @ F, F.T @ e
    for _ in range(4):
        S = np.linalg.inv(FtF / s2 + m * np.eye(m - 1))
        th = S @ Fte / s2
        s2 = max(float(np.sum((e - F @ th) ** 2)) / max(k - 1, 1), 1e-4)
    S = np.linalg.inv(FtF / s2 + m * np.eye(m - 1))
    th = S @ Fte / s2
    w = w0 + B @ th
    # q(x) = b0 + (P(x) - pc) @ w0 + ((P(x) - pc) @ B - fbar) @ th  =  P(x) @ w + b
    b = b0 - float(fbar @ th) - float(pc @ w)
    return w, b, B @ S @ B.T, s2


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
        self.profiles_: list[ProfileFit | FactorFit] = []
        #: the known models' factor model (method "factor", `llmroute.estimators.profiled_factor`),
        #: fitted on the training table at the first factor add and kept for later adds
        self.factor_: FactorModel | None = None
        #: the task classifier p(t | x) of method "task" (`llmroute.estimators.profiled_task`),
        #: fitted on labelled prompts at the first task add and kept for later adds
        self.tasks_: TaskModel | None = None
        #: the regions of method "region" (`llmroute.estimators.profiled_region`): p(region | x)
        #: (tasks, else embedding clusters) and the truth rows' statistics of the known models'
        #: regional offsets (from the reference, the training table), fitted at the first region add
        self.regions_: TaskModel | None = None
        self.region_stats_: RegionStats | None = None

    @property
    def uses_extra(self) -> bool:
        return bool(getattr(self.base, "uses_extra", True))

    def fit(self, X: Features, Q: np.ndarray) -> Self:
        raise TypeError(
            "a ProfiledEstimator wraps a fitted estimator; fit the base and add models by profile"
        )

    # ---- columns -----------------------------------------------------------------------------
    def base_estimates(self, X: Features, exclude_self: bool = False) -> np.ndarray:
        """(n, m_base) the base estimator's estimates, clipped to [0, 1] (as the router clips).

        exclude_self: leave-self-out estimates for prompts in the base's training memory (a
        base with `supports_exclude_self`, e.g. the default estimator: its training prompts
        then get estimates as honest as a new prompt's; other prompts are unchanged). What an
        onboarding fit reads on profile prompts drawn from the training table."""
        if exclude_self and getattr(self.base, "supports_exclude_self", False):
            q = np.array(self.base.predict(X, exclude_self=True), dtype=np.float64)  # type: ignore[call-arg]
        else:
            q = np.array(self.base.predict(X), dtype=np.float64)
        np.minimum(np.maximum(q, 0.0, out=q), 1.0, out=q)
        return q

    def add(self, fit: ProfileFit | FactorFit) -> None:
        """Append a profiled model as the last column."""
        if isinstance(fit, FactorFit):
            if fit.model.A.shape[0] != self.n_base:
                raise ValueError(f"factor model covers {fit.model.A.shape[0]} models, expected {self.n_base}")
        elif fit.w.shape != (self.n_base,):
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
            if isinstance(f, FactorFit):  # its own state; the factor model is saved once
                fa, fmeta = f.state(f"p{p}/")
                out.update(fa)
                profiles.append(fmeta)
                continue
            out[f"p{p}/w"] = f.w
            out[f"p{p}/emb"] = np.asarray(f.emb, dtype=np.float32)
            out[f"p{p}/resid"] = f.resid
            if f.wcov is not None and f.center is not None:
                out[f"p{p}/center"] = f.center
                out[f"p{p}/wcov"] = f.wcov
            if f.diff_var is not None:
                out[f"p{p}/diff_var"] = f.diff_var
            if f.task_delta is not None and f.task_var is not None:
                out[f"p{p}/task_delta"] = f.task_delta
                out[f"p{p}/task_var"] = f.task_var
            if f.reon_w is not None and f.reon_b is not None:
                out[f"p{p}/reon_w"] = f.reon_w
                out[f"p{p}/reon_b"] = f.reon_b
            profiles.append(
                {
                    "b": f.b,
                    "shift": f.shift,
                    "beta": f.beta,
                    "kappa": f.kappa,
                    "closest": f.closest,
                    "n_rows": f.n_rows,
                    "loo_rmse": None if not np.isfinite(f.loo_rmse) else f.loo_rmse,
                    "level_var": f.level_var,
                    "z": f.z,
                    "reon_ref": f.reon_ref,
                    "region": f.region,
                }
            )
        factor = None
        if self.factor_ is not None:
            fa, factor = self.factor_.state("factor/")
            out.update(fa)
        tasks = None
        if self.tasks_ is not None:
            ta, tasks = self.tasks_.state("tasks/")
            out.update(ta)
        regions = None
        if self.regions_ is not None:
            ra, regions = self.regions_.state("regions/")
            out.update(ra)
            if self.region_stats_ is not None:
                out.update(self.region_stats_.state("region_stats/"))
        cls = type(self.base)
        meta = {
            "base_class": f"{cls.__module__}:{cls.__qualname__}",
            "base_params": params,
            "n_base": self.n_base,
            "columns": self.columns_,
            "profiles": profiles,
            "factor": factor,
            "tasks": tasks,
            "regions": regions,
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
        if params.get("factor") is not None:
            est.factor_ = FactorModel.from_state(arrays, "factor/", params["factor"])
        if params.get("tasks") is not None:
            est.tasks_ = TaskModel.from_state(arrays, "tasks/", params["tasks"])
        if params.get("regions") is not None:
            est.regions_ = TaskModel.from_state(arrays, "regions/", params["regions"])
            if "region_stats/n" in arrays:
                est.region_stats_ = RegionStats.from_state(arrays, "region_stats/")
        for p, meta in enumerate(params["profiles"]):
            if meta.get("kind") == "factor":
                if est.factor_ is None:
                    raise ValueError("router file has a factor-added model but no factor model")
                est.profiles_.append(FactorFit.from_state(est.factor_, arrays, f"p{p}/", meta))
                continue
            resid = np.asarray(arrays[f"p{p}/resid"], dtype=np.float64)
            region = bool(meta.get("region", False))
            tmodel = (est.regions_ if region else est.tasks_) if f"p{p}/task_delta" in arrays else None
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
                    center=_opt(arrays.get(f"p{p}/center")),
                    wcov=_opt(arrays.get(f"p{p}/wcov")),
                    level_var=float(meta.get("level_var", 0.0)),
                    z=float(meta.get("z", 0.0)),
                    diff_var=_opt(arrays.get(f"p{p}/diff_var")),
                    task_model=tmodel,
                    task_delta=_opt(arrays.get(f"p{p}/task_delta")),
                    task_var=_opt(arrays.get(f"p{p}/task_var")),
                    reon_w=_opt(arrays.get(f"p{p}/reon_w")),
                    reon_b=_opt(arrays.get(f"p{p}/reon_b")),
                    reon_ref=float(meta.get("reon_ref", 0.0)),
                    region=region,
                )
            )
        return est


def _opt(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)
