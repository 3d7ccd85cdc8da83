"""A per-task offset for a model added from its profile (``add_model(..., method="task")``).

docs/onboarding-notes.md, "A per-task offset on the paired column". A model whose advantage is
shaped by *task* (better on multiple choice, far worse on code) is not in the span of the known
models' estimates, so the "paired" column (a combination of them, `llmroute.estimators.profiled`)
cannot follow it. This module adds, on top of the paired column, an offset per task:

    q_new(x) = paired(x) + sum_t p(t | x) delta_t  -  z * sd(x)

- delta_t: the paired profile's held-out residuals (the new model's grade minus the known
  models' luck on the same prompt, minus the fitted combination: the prompt's shared difficulty
  cancels) averaged within task t, shrunk toward 0 by a normal hierarchical prior across tasks
  (`task_offsets`: normal-normal given the between-task sd tau, which is integrated out under a
  uniform prior on [0, 1], weighted by the marginal likelihood; each task's sampling variance
  from its own residuals with one pseudo-row of the pooled variance); a task with no profile
  prompt gets delta = 0 with variance E[tau2].
- p(t | x): a task classifier in the router's embedding space (`TaskModel`: linear discriminant
  analysis with Ledoit-Wolf shrinkage, its scores tempered by a factor chosen by held-out
  log-likelihood), fitted once per router on labelled prompts (the training table passed as
  the reference, and the profile's) and kept in the saved router: the router itself keeps no
  task labels. Prompts are unlabelled at routing time.
- sd(x)^2 = the paired column's posterior variance + the offset's variance under the soft task
  membership (sum_t p_t (var_t + delta_t^2) - (sum_t p_t delta_t)^2): unsure where a prompt
  belongs means unsure of its offset.

Without labelled prompts of at least two tasks there is no task model and the method is
"paired" exactly. Measured (seeds 0-1): it removes most bad small-profile draws of a
task-shaped model (routerdc_7model's MetaMath) but does not detect zephyr's small
multiple-choice edge at k = 100 (within-task paired residual sd ~0.3), and recovers a little
less than "paired" on routerbench_subset: opt-in, not the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TaskModel", "fit_task_model", "task_offsets"]

#: labelled prompts the task classifier is fitted on, at most (a seeded subsample)
MAX_TASK_ROWS = 3000
#: temperatures tried on the classifier's scores (chosen by held-out log-likelihood)
_TAUS = tuple(float(t) for t in np.geomspace(0.02, 2.0, 31))
#: the between-task sd's grid (uniform prior on [0, 1]: quality offsets are at most 1)
_TAU_GRID = np.linspace(0.0, 1.0, 401)


@dataclass
class TaskModel:
    """Soft task membership p(t | x) = softmax(emb @ coef.T + intercept) over `tasks`."""

    tasks: list[str]
    coef: np.ndarray  # (T, d), the temperature folded in
    intercept: np.ndarray  # (T,)

    def proba(self, emb: np.ndarray) -> np.ndarray:
        """(n, T) task probabilities of (n, d) embeddings."""
        s = np.asarray(emb, dtype=np.float64) @ self.coef.T + self.intercept
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        return p / p.sum(axis=1, keepdims=True)

    def membership(self, emb: np.ndarray, labels: list[str] | None = None) -> np.ndarray:
        """(n, T): one-hot where a prompt's label is one of `tasks`, else `proba`."""
        p = self.proba(emb)
        if labels is not None:
            at = {t: i for i, t in enumerate(self.tasks)}
            for i, lab in enumerate(labels):
                if lab in at:
                    p[i] = 0.0
                    p[i, at[lab]] = 1.0
        return p

    def state(self, prefix: str) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params) for a router file, arrays named under `prefix`."""
        arrays = {f"{prefix}coef": self.coef, f"{prefix}intercept": self.intercept}
        return arrays, {"tasks": list(self.tasks)}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], prefix: str, params: dict) -> TaskModel:
        """Rebuild from `state` output."""
        return cls(
            tasks=[str(t) for t in params["tasks"]],
            coef=np.asarray(arrays[f"{prefix}coef"], dtype=np.float64),
            intercept=np.asarray(arrays[f"{prefix}intercept"], dtype=np.float64),
        )


def _lda(E: np.ndarray, y: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant scores (coef (T, d), intercept (T,)) with a shrunk shared covariance."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    m = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(E, y)
    coef, icpt = np.asarray(m.coef_, dtype=np.float64), np.asarray(m.intercept_, dtype=np.float64)
    out_c, out_i = np.zeros((T, E.shape[1])), np.zeros(T)
    cls = [int(c) for c in m.classes_]
    if len(cls) == 2:  # sklearn gives one score for two classes: the second's log-odds
        out_c[cls[1]], out_i[cls[1]] = coef[0], icpt[0]
    else:
        out_c[cls], out_i[cls] = coef, icpt
    return out_c, out_i


def fit_task_model(
    emb: np.ndarray, labels: list[str], *, max_rows: int = MAX_TASK_ROWS, seed: int = 0
) -> TaskModel | None:
    """The task classifier of labelled prompts ((n, d) embeddings, their task labels; '' = none).

    None when fewer than two tasks have two labelled prompts each (then method "task" is
    "paired" exactly). At most `max_rows` prompts are used (drawn with `seed`). The scores'
    temperature is chosen by 2-fold held-out log-likelihood.
    """
    lab = np.asarray([str(t) for t in labels], dtype=object)
    E = np.asarray(emb, dtype=np.float64)
    ok = lab != ""
    names, counts = np.unique(lab[ok].astype(str), return_counts=True)
    tasks = [str(t) for t, c in zip(names, counts, strict=True) if c >= 2]
    if len(tasks) < 2:
        return None
    keep = np.flatnonzero(np.isin(lab, tasks))
    if len(keep) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_rows, replace=False))
    at = {t: i for i, t in enumerate(tasks)}
    y = np.array([at[str(t)] for t in lab[keep]])
    E = E[keep]
    T = len(tasks)
    # held-out scores for the temperature (each half scored by the other half's fit)
    half = np.random.default_rng(seed + 1).permutation(len(y)) % 2 == 0
    S = np.zeros((len(y), T))
    for a in (half, ~half):
        if len(np.unique(y[~a])) < 2 or a.sum() == 0:
            S = None
            break
        c, i = _lda(E[~a], y[~a], T)
        S[a] = E[a] @ c.T + i
    tau = 1.0
    if S is not None:
        best = np.inf
        for t in _TAUS:
            s = S * t
            s = s - s.max(axis=1, keepdims=True)
            ll = float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))
            if ll < best - 1e-12:
                best, tau = ll, t
    coef, icpt = _lda(E, y, T)
    return TaskModel(tasks=tasks, coef=coef * tau, intercept=icpt * tau)


def task_offsets(
    resid: np.ndarray, member: np.ndarray, tau2: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Hierarchical-Bayes per-task offsets of residuals: (delta (T,), posterior variance (T,), tau2).

    resid: (k,) held-out residuals of the profile; member: (k, T) each row's task membership
    (one-hot for a labelled prompt). Per task: the weighted mean rbar_t over n_t = sum_i p_it
    rows, its sampling variance v_t = s2_t / n_t with s2_t = (within-task sum of squares + the
    pooled variance) / n_t; delta_t ~ N(0, tau2). The between-task sd tau has a uniform prior on
    [0, 1] (qualities lie in [0, 1], so no offset is larger), and is integrated out on a grid
    weighted by the marginal likelihood of the rbar_t: with few tasks or few rows per task a
    single estimate of tau2 would be overconfident. Given tau2 the posterior is normal-normal
    (delta_t = B rbar_t, variance B v_t, B = tau2 / (tau2 + v_t)); the result is the mixture's
    mean and variance. A task without rows keeps the prior: mean 0, variance E[tau2 | data]
    (returned as tau2).

    tau2: (T,) a known prior variance per task instead (method "region",
    `llmroute.estimators.profiled_region`: measured on the known models): the normal-normal
    posterior under N(0, tau2_t), nothing integrated; the returned tau2 is their mean.
    """
    r = np.asarray(resid, dtype=np.float64)
    M = np.asarray(member, dtype=np.float64)
    n = M.sum(axis=0)
    seen = n > 1e-9
    rbar = np.where(seen, (M * r[:, None]).sum(axis=0) / np.maximum(n, 1e-12), 0.0)
    ss = (M * (r[:, None] - rbar) ** 2).sum(axis=0)
    pooled = float(ss.sum() / max(n.sum() - seen.sum(), 1.0)) if len(r) > 1 else float(np.mean(r**2))
    pooled = max(pooled, 1e-6)
    s2 = (ss + pooled) / np.maximum(n, 1e-12)
    v = np.where(seen, s2 / np.maximum(n, 1e-12), 1.0)
    if tau2 is not None:
        t2k = np.maximum(np.asarray(tau2, dtype=np.float64), 0.0)
        Bk = np.where(seen, t2k / np.maximum(t2k + v, 1e-300), 0.0)
        return Bk * rbar, np.where(seen, Bk * v, t2k), float(t2k.mean())
    t2 = _TAU_GRID[:, None] ** 2  # (G, 1)
    tot = t2 + v[seen][None, :]
    ll = -0.5 * np.sum(np.log(tot) + rbar[seen][None, :] ** 2 / tot, axis=1)
    wts = np.exp(ll - ll.max())
    wts /= wts.sum()
    B = np.where(seen[None, :], t2 / (t2 + v[None, :]), 0.0)  # (G, T)
    mean_g = B * rbar[None, :]
    var_g = np.where(seen[None, :], B * v[None, :], t2)
    delta = wts @ mean_g
    var = wts @ (var_g + mean_g**2) - delta**2
    tau2 = float(wts @ t2[:, 0])
    return delta, np.maximum(var, 0.0), tau2
