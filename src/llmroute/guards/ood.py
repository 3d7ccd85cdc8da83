"""Out-of-domain score: how far a prompt lies from the data a router was trained on.

In the spirit of Guarded Query Routing, with a density-corrected distance: each prompt is
represented by its embedding plus a few cheap text-shape statistics (log length, digit /
non-ASCII / code-punctuation / upper-case / newline fractions), the training prompts are
summarised by k-means centroids and a tied (within-cluster) covariance, and the score is the
relative Mahalanobis distance (Ren et al., 2021): the squared distance to the nearest centroid
minus the squared distance to one global Gaussian. The artifact keeps centroids and covariance
factors, never the prompts.

Scores are calibrated on held-out training prompts: 0 = the median in-domain prompt,
1 = the in-domain 95th percentile; larger = further out (thresholds in rules: ~1.5-3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

N_SHAPE = 7
_CODE_CHARS = frozenset("()[]{}=<>;:_")


def shape_features(texts: Sequence[str]) -> np.ndarray:
    """(n, 7) float32 text-shape statistics (first 1,000 characters for the fractions)."""
    out = np.zeros((len(texts), N_SHAPE), np.float32)
    for i, t in enumerate(texts):
        head = t[:1000]
        n = max(len(head), 1)
        digits = sum(c.isdigit() for c in head)
        nonascii = 0 if head.isascii() else sum(not c.isascii() for c in head)
        code = sum(c in _CODE_CHARS for c in head)
        upper = sum(c.isupper() for c in head)
        out[i] = (
            np.log1p(len(t)), digits / n, nonascii / n, head.count("\n") / n * 10, code / n, upper / n,
            np.log1p(t.count(" ") + 1),
        )  # fmt: skip
    return out


def _inv_sqrt(residuals: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """Inverse square root of the ridge-regularised covariance of (n, d) centred residuals."""
    cov = np.cov(residuals.T)
    cov += np.eye(len(cov)) * ridge * max(float(np.trace(cov)) / len(cov), 1e-12)
    ev, V = np.linalg.eigh(cov)
    return (V * (1.0 / np.sqrt(np.maximum(ev, 1e-12)))) @ V.T


class OODDetector:
    """Relative-Mahalanobis out-of-domain model of a prompt distribution.

    n_clusters: k-means centroids (capped at n_train // 5). use_shape: add text-shape features
    (then `fit`/`score` need the texts too). calib_frac: share of the training prompts held out
    to calibrate the score scale. ridge: covariance regularisation (share of the mean variance
    added to the diagonal); raise it (e.g. 0.1) for small or templated in-domain sets.
    """

    def __init__(self, n_clusters: int = 128, use_shape: bool = True, calib_frac: float = 0.1, seed: int = 0,
                 ridge: float = 1e-4) -> None:  # fmt: skip
        self.n_clusters = n_clusters
        self.ridge = ridge
        self.use_shape = use_shape
        self.calib_frac = calib_frac
        self.seed = seed
        self.centroids_: np.ndarray | None = None  # whitened (k, d)
        self.W_: np.ndarray | None = None  # within-cluster whitening (d, d)
        self.G_: np.ndarray | None = None  # global whitening (d, d)
        self.mu_: np.ndarray | None = None  # global mean, G-whitened (d,)
        self.center_: np.ndarray | None = None  # per-feature mean and std (z-scoring)
        self.std_: np.ndarray | None = None
        self.loc_: float = 0.0
        self.scale_: float = 1.0
        self.train_quantiles_: dict[str, float] = {}

    def _features(self, emb: np.ndarray, texts: Sequence[str] | None) -> np.ndarray:
        emb = np.atleast_2d(np.asarray(emb, np.float32))
        if not self.use_shape:
            return emb
        if texts is None or len(texts) != len(emb):
            raise ValueError("this OODDetector uses text-shape features: pass the texts with the embeddings")
        return np.hstack([emb, shape_features(texts)])

    def fit(self, emb: np.ndarray, texts: Sequence[str] | None = None) -> Self:
        """Learn the in-domain distribution from (n, d) embeddings (and their texts)."""
        from sklearn.cluster import KMeans

        X = self._features(emb, texts).astype(np.float64)
        n = len(X)
        if n < 10:
            raise ValueError("OODDetector.fit needs at least 10 training prompts")
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n)
        n_cal = int(n * self.calib_frac) if n * self.calib_frac >= 20 else 0
        cal, tr = perm[:n_cal], perm[n_cal:]
        self.center_ = np.zeros(X.shape[1])
        self.std_ = np.ones(X.shape[1])
        Xtr = X[tr]
        k = int(max(1, min(self.n_clusters, len(Xtr) // 5)))
        km = KMeans(n_clusters=k, n_init=1, random_state=self.seed, max_iter=100).fit(Xtr)
        C = km.cluster_centers_
        self.W_ = _inv_sqrt(Xtr - C[km.labels_], self.ridge)
        self.centroids_ = C @ self.W_
        mu = Xtr.mean(0)
        self.G_ = _inv_sqrt(Xtr - mu, self.ridge)
        self.mu_ = mu @ self.G_
        self.loc_, self.scale_ = 0.0, 1.0
        raw = self._raw(X[cal] if n_cal else Xtr)
        q50, q95 = float(np.quantile(raw, 0.5)), float(np.quantile(raw, 0.95))
        self.loc_, self.scale_ = q50, max(q95 - q50, 1e-9)
        s = (raw - self.loc_) / self.scale_
        self.train_quantiles_ = {f"q{q}": float(np.quantile(s, q / 100)) for q in (50, 90, 95, 99)}
        return self

    @classmethod
    def from_table(cls, table: Any, encoder: Any, **kwargs: Any) -> OODDetector:
        """Fit on the prompts of a `RoutingTable` (or any object with `.prompts`) with `encoder`."""
        prompts = list(table.prompts)
        return cls(**kwargs).fit(encoder.encode(prompts), prompts)

    def _raw(self, X: np.ndarray) -> np.ndarray:
        """Relative Mahalanobis distance of already z-scored features."""
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted; call fit() or load()")
        Xw = X @ self.W_
        C = self.centroids_
        d2 = (Xw * Xw).sum(1)[:, None] - 2.0 * Xw @ C.T + (C * C).sum(1)[None, :]
        g = X @ self.G_ - self.mu_
        return d2.min(1) - (g * g).sum(1)

    def score(self, emb: np.ndarray, texts: Sequence[str] | str | None = None) -> np.ndarray | float:
        """Out-of-domain score(s): 0 = median in-domain, 1 = in-domain 95th percentile."""
        single = np.ndim(emb) == 1
        if isinstance(texts, str):
            texts = [texts]
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted; call fit() or load()")
        X = (self._features(emb, texts).astype(np.float64) - self.center_) / self.std_
        s = (self._raw(X) - self.loc_) / self.scale_
        return float(s[0]) if single else s

    # ---- persistence (no pickle) ----------------------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params)."""
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted")
        params = {
            "n_clusters": self.n_clusters, "use_shape": self.use_shape, "calib_frac": self.calib_frac,
            "seed": self.seed, "ridge": self.ridge, "loc": self.loc_, "scale": self.scale_, "train_quantiles": self.train_quantiles_,
        }  # fmt: skip
        arrays = {"centroids": self.centroids_, "W": self.W_, "G": self.G_, "mu": self.mu_, "center": self.center_,
                  "std": self.std_}  # fmt: skip
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> OODDetector:
        """Rebuild from `get_state()` output."""
        det = cls(params["n_clusters"], params["use_shape"], params["calib_frac"], params.get("seed", 0),
                  params.get("ridge", 1e-4))
        det.centroids_, det.W_, det.G_, det.mu_, det.center_, det.std_ = (
            np.asarray(arrays[k]) for k in ("centroids", "W", "G", "mu", "center", "std")
        )
        det.loc_, det.scale_ = float(params["loc"]), float(params["scale"])
        det.train_quantiles_ = dict(params.get("train_quantiles", {}))
        return det

    def save(self, path: str | Path) -> None:
        """Write an .npz with the arrays and a JSON params entry."""
        arrays, params = self.get_state()
        with Path(path).open("wb") as f:
            np.savez(f, params=np.array(json.dumps(params)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> OODDetector:
        """Read a file written by `save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            params = json.loads(str(z["params"]))
            return cls.from_state({k: z[k] for k in ("centroids", "W", "G", "mu", "center", "std")}, params)
