"""The default estimator's numerical building blocks (`llmroute.estimators.default`): ridge
regression with the penalty picked by GCV, spherical k-means and cluster assignment, the
decision-relevant loss used to select the final predictor (`_centred_sq`, `_select_candidate`),
kernel widths from the training embeddings and the PCA projection. All numpy, no state.
"""

from __future__ import annotations

import numpy as np

_ALPHAS = np.logspace(-3, 4, 15)


def _ridge_gcv(
    A: np.ndarray, Y: np.ndarray, alphas: np.ndarray = _ALPHAS, per_output: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """Multi-output ridge with intercept; penalty picked by GCV (shared over outputs, or one
    per output column with `per_output`).

    Returns (W (p, m), b (m,), alpha) - alpha is the median chosen penalty when per output.
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
    resid0 = np.maximum((Yc**2).sum(axis=0) - (UtY**2).sum(axis=0), 0.0)  # outside span(A)
    gcv = np.empty((len(alphas), Y.shape[1]))
    for i, alpha in enumerate(alphas):
        shrink = ev / (ev + alpha)
        rss = resid0 + (((1.0 - shrink)[:, None] * UtY) ** 2).sum(axis=0)
        gcv[i] = rss / max(n - shrink.sum(), 1.0) ** 2
    if per_output:
        chosen = np.asarray(alphas)[np.argmin(gcv, axis=0)]
    else:
        chosen = np.full(Y.shape[1], alphas[int(np.argmin(gcv.sum(axis=1)))])
    W = V @ ((s[:, None] / (ev[:, None] + chosen[None, :])) * UtY)
    b = y_mean - a_mean @ W
    return W, b, float(np.median(chosen))


def _hat_diag(A: np.ndarray, alpha: float) -> np.ndarray:
    """(n,) diagonal of the hat matrix of `_ridge_gcv`'s fit with penalty `alpha` (intercept
    unpenalised): h_i = 1/n + a_i' (Ac'Ac + alpha I)^-1 a_i on the centred rows. The exact
    leave-one-out prediction of row i is then f_i - h_i / (1 - h_i) * (y_i - f_i)."""
    Ac = A - A.mean(axis=0)
    G = Ac.T @ Ac
    G[np.diag_indices_from(G)] += alpha
    return 1.0 / len(A) + np.einsum("ij,ij->i", np.linalg.solve(G, Ac.T).T, Ac)


def _centred_sq(Q: np.ndarray, P: np.ndarray) -> np.ndarray:
    """(n,) per-prompt squared error of P against Q after removing each row's mean residual.

    A decision argmax_j (q_j - lambda * c_j) does not change when a constant is added to a
    row of q, so only the within-row (between-model) part of the error matters. This loss is
    the sum over model pairs of the squared error of the predicted difference q_i - q_j (up to
    a factor m), which is the regret of "pick i over j when the predicted difference exceeds
    t" integrated over all thresholds t. NaN cells of Q are left out.
    """
    ok = np.isfinite(Q)
    R = np.where(ok, Q - P, 0.0)
    rm = R.sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
    return (np.where(ok, R - rm[:, None], 0.0) ** 2).sum(axis=1)


def _select_candidate(
    cands: dict[str, np.ndarray], Q: np.ndarray, order: list[str], z: float
) -> tuple[str, dict[str, float]]:
    """Pick a final predictor from out-of-fold candidate predictions (the one-standard-error rule).

    Each candidate's loss is the mean `_centred_sq` of its (clipped) out-of-fold predictions.
    Walking `order` from the simplest candidate to the most flexible, the first one whose
    paired loss difference to the best candidate is within `z` standard errors is chosen;
    z = 0 picks the best. Candidates not in `order` (the per-model mean) win only when every
    ordered one is worse by more than that. Returns (name, mean loss per candidate).
    """
    L = {k: _centred_sq(Q, np.clip(v, 0.0, 1.0)) for k, v in cands.items()}
    scores = {k: float(v.mean()) for k, v in L.items()}
    best = min(scores, key=scores.__getitem__)
    for k in order:
        if k not in L:
            continue
        d = L[k] - L[best]
        if d.mean() <= z * d.std() / np.sqrt(max(len(d), 1)):
            return k, scores
    return best, scores


def _kmeans(E: np.ndarray, k: int, seed: int, iters: int = 15) -> np.ndarray:
    """Spherical k-means centres (k, d) with k-means++ seeding; E rows are unit vectors."""
    rng = np.random.default_rng(seed)
    n = len(E)
    k = max(1, min(k, n))
    centres = [E[rng.integers(n)]]
    d2 = np.full(n, np.inf)
    for _ in range(1, k):
        d2 = np.minimum(d2, np.maximum(2.0 - 2.0 * (E @ centres[-1]), 0.0))
        tot = d2.sum()
        centres.append(E[rng.choice(n, p=d2 / tot)] if tot > 0 else E[rng.integers(n)])
    C = np.array(centres, dtype=np.float64)
    for _ in range(iters):
        lab = np.argmax(E @ C.T, axis=1)
        sums = np.zeros_like(C)
        np.add.at(sums, lab, E)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        C = np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), C)  # empty clusters keep their centre
    return C


def _fill(Q: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(Q), Q, mu[None, :])


def _assign(E: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre (label) and its cosine similarity for each row of E."""
    S = np.asarray(E, dtype=np.float32) @ C.T
    lab = np.argmax(S, axis=1)
    return lab, S[np.arange(len(S)), lab]


def _per_cluster_product(Z: np.ndarray, W: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """(n, m) rows Z[i] @ W[lab[i]]: one product per cluster present (the same numbers as
    einsum("np,npm->nm", Z, W[lab]) to float64 rounding, without the (n, p, m) gather)."""
    if len(lab) == 1:
        return Z @ W[lab[0]]
    out = np.empty((len(Z), W.shape[2]))
    if len(lab) == 0:
        return out
    order = np.argsort(lab, kind="stable")
    labs = lab[order]
    cuts = np.flatnonzero(np.diff(labs)) + 1
    for rows in np.split(order, cuts):
        out[rows] = Z[rows] @ W[lab[rows[0]]]
    return out


def _betas_for(E: np.ndarray, neighbours: tuple[int, ...], seed: int, sample: int = 300) -> tuple[float, ...]:
    """Kernel sharpness per target neighbourhood size, chosen from the training embeddings.

    For each target k, the beta whose kernel weights exp(beta * (sim - 1)) sum to about k (the
    median over a sample of training prompts, excluding themselves) - the smooth analogue of
    k nearest neighbours, adapted to how spread out this encoder's similarities are.
    """
    n = len(E)
    if n < 3 or not neighbours:
        return ()
    rng = np.random.default_rng(seed + 7)
    q = rng.choice(n, min(sample, n), replace=False)
    S = (E[q] @ E.T).astype(np.float64) - 1.0
    S[np.arange(len(q)), q] = -np.inf  # leave each sampled prompt out
    out = []
    for k in neighbours:
        k = min(k, n - 1)
        lo, hi = 0.0, 1.0
        while hi < 1e4 and np.median(np.exp(hi * S).sum(axis=1)) > k:
            hi *= 2.0
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if np.median(np.exp(mid * S).sum(axis=1)) > k:
                lo = mid
            else:
                hi = mid
        out.append(round(0.5 * (lo + hi), 4))
    return tuple(out)


def _projection(E: np.ndarray, dim: int) -> np.ndarray:
    """(d, r) float32 basis of the top-`dim` principal directions of E (uncentred; identity if
    dim >= d). Kernel similarities are computed in this smaller space for speed."""
    d = E.shape[1]
    if dim <= 0 or dim >= d:
        return np.eye(d, dtype=np.float32)
    _, V = np.linalg.eigh(E.T @ E)
    return np.ascontiguousarray(V[:, ::-1][:, :dim], dtype=np.float32)


def _n_clusters(n: int, mean_size: int) -> int:
    return int(np.clip(round(n / mean_size), 1, 1024))
