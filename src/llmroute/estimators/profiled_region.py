"""A per-region offset whose prior comes from the known models (``add_model(..., method="region")``).

docs/onboarding-notes.md, "A per-region offset with the known models' prior". Method "task"
(`llmroute.estimators.profiled_task`) adds to the "paired" column an offset per task, shrunk by a
prior whose scale knows nothing about how far a model's regional quality departs from a
combination of the known models' (tau uniform on [0, 1]). Here that scale is measured on the
known models themselves (empirical Bayes across known models x regions):

- each known model j is re-onboarded as if new from the same profile prompts (`_reonboard` of
  `llmroute.estimators.profiled`: its grades there, paired with the others', Bayesian weights on
  the others' estimates): a column R_j(x) = P_{-j}(x) w_j + b_j;
- on *truth rows* (the router's training table given as the reference, at most `MAX_ROWS` of its
  prompts; else the profile prompts themselves) its residual r_j = grade_j - R_j is averaged per
  region t: d_jt = mean_t(r_j) - mean(r_j), the known model's true regional offset beyond its
  global one, with sampling variance v_jt (within-region variance / rows);
- the prior variance of region t's offset: tau2_t = max(0, mean_j (d_jt^2 - v_jt)), the spread
  of the known models' regional offsets with their sampling noise taken out.

The new model's offset delta_t is then the normal-normal posterior of its held-out paired
residuals' mean in region t under N(0, tau2_t) (`task_offsets(..., tau2=...)`): a region moves only
as far as known models' regional offsets really move, measured on that region's profile rows. A
region without profile rows keeps the prior (0, tau2_t). Everything after is method "task"'s:
q(x) = paired(x) + sum_t p(t | x) delta_t - z sd(x), the offset's mixture variance in sd(x).

Regions: tasks where prompts have task labels (the reference's and the profile's; the task
classifier of `profiled_task` gives p(t | x)), else `N_CLUSTERS` k-means clusters of the router's
embedding (the same classifier fitted to the cluster labels). Since R_j is linear in the
estimates, the truth rows are kept as per-region sufficient statistics (`RegionStats`: rows,
mean and covariance of [grades, estimates]), computed once per router from the reference and
kept in the saved router.

Measured (5 seeds, k = 100): recovered share 0.548 / 0.087 on routerbench_subset /
routerdc_7model against paired's 0.565 / 0.080 (fewer small-profile hurts on routerdc_7model,
more on routerbench_subset, where a region's few lucky rows move its offset up): opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_ROWS", "N_CLUSTERS", "RegionStats", "cluster_labels", "region_stats", "region_tau2"]

#: truth rows (reference prompts) the region statistics are computed from, at most
MAX_ROWS = 3000
#: regions when no prompt has a task label: k-means clusters of the router's embedding
N_CLUSTERS = 8
#: rows a region needs (per known model) to measure that model's regional offset
_MIN_ROWS = 5


@dataclass
class RegionStats:
    """Per-region sufficient statistics of truth rows: n (T,) rows (membership weights), mean
    (T, 2m) and cov (T, 2m, 2m) of [the known models' grades (m), their estimates (m)]."""

    n: np.ndarray
    mean: np.ndarray
    cov: np.ndarray

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays for a router file, named under `prefix`."""
        return {f"{prefix}n": self.n, f"{prefix}mean": self.mean, f"{prefix}cov": self.cov}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], prefix: str) -> RegionStats:
        """Rebuild from `state` output."""
        return cls(*(np.asarray(arrays[f"{prefix}{k}"], dtype=np.float64) for k in ("n", "mean", "cov")))


def region_stats(known: np.ndarray, P: np.ndarray, member: np.ndarray) -> RegionStats | None:
    """The statistics of truth rows: known (n, m) the known models' grades (NaN = not graded; rows
    with any NaN are left out, except in a column with no grade at all, e.g. a removed model's,
    which is never re-onboarded and is kept as 0), P (n, m) their estimates (leave-self-out on
    training prompts), member (n, T) each row's region membership. None when fewer than two
    regions have `_MIN_ROWS` complete rows."""
    G = np.asarray(known, dtype=np.float64)
    G = np.where(np.isfinite(G).any(axis=0), G, 0.0)
    ok = np.isfinite(G).all(axis=1)
    Z = np.column_stack([G[ok], np.asarray(P, dtype=np.float64)[ok]])
    M = np.asarray(member, dtype=np.float64)[ok]
    n = M.sum(axis=0)
    if int((n >= _MIN_ROWS).sum()) < 2:
        return None
    mean = (M.T @ Z) / np.maximum(n, 1e-12)[:, None]
    cov = np.empty((M.shape[1], Z.shape[1], Z.shape[1]))
    for t in range(M.shape[1]):
        D = Z - mean[t]
        cov[t] = (D * M[:, t : t + 1]).T @ D / max(n[t], 1e-12)
    return RegionStats(n=n, mean=mean, cov=cov)


def region_tau2(stats: RegionStats, W: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(T,) the prior variance of a new model's offset per region: over the known models j
    re-onboarded from the profile (W (m, m): column j the weights on the others; B (m,) the
    intercepts, NaN = not re-onboarded), the mean of d_jt^2 - v_jt, floored at 0 (module
    docstring). A region with fewer than `_MIN_ROWS` truth rows gets the mean over the others;
    all zeros when no known model was re-onboarded."""
    m = W.shape[0]
    T = len(stats.n)
    js = np.flatnonzero(np.isfinite(B))
    if len(js) == 0:
        return np.zeros(T)
    A = np.zeros((2 * m, len(js)))  # r_j = A_j' [grades, estimates] - B_j
    A[js, np.arange(len(js))] = 1.0
    A[m:, :] = -W[:, js]
    rbar = stats.mean @ A - B[js]  # (T, J) regional mean residuals
    var = np.einsum("iJ,tij,jJ->tJ", A, stats.cov, A)  # within-region variances
    seen = stats.n >= _MIN_ROWS
    glob = (stats.n[seen] @ rbar[seen]) / stats.n[seen].sum()
    d2 = (rbar - glob) ** 2 - var / np.maximum(stats.n, 1e-12)[:, None]
    tau2 = np.maximum(d2.mean(axis=1), 0.0)
    return np.where(seen, tau2, float(tau2[seen].mean()))


def cluster_labels(emb: np.ndarray, n_clusters: int = N_CLUSTERS, seed: int = 0) -> list[str]:
    """Region labels ("c0", "c1", ...) of unlabelled prompts: k-means of their (n, d) normalised
    embeddings with min(n_clusters, n // _MIN_ROWS) clusters (at least 2)."""
    from sklearn.cluster import KMeans

    E = np.asarray(emb, dtype=np.float64)
    K = max(2, min(n_clusters, len(E) // _MIN_ROWS))
    lab = KMeans(n_clusters=K, n_init=3, random_state=seed).fit(E).labels_
    return [f"c{int(c)}" for c in lab]
