"""Out-of-domain score: how far a prompt's embedding lies from the data a router was trained on.

In the spirit of Guarded Query Routing: fit k-means centroids on the training-prompt embeddings
(the artifact keeps centroids and distance statistics, never the prompts), then score a prompt by
its mean cosine distance to the `k_near` nearest centroids, divided by the 95th percentile of the
same quantity on the training data. A score above ~1 means "further out than 95% of training
prompts"; thresholds in rules are usually 1.1-1.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np


class OODDetector:
    """k-means-centroid distance model of an embedding distribution.

    n_clusters: centroids to keep (capped at n_train // 5). k_near: nearest centroids averaged.
    """

    def __init__(self, n_clusters: int = 128, k_near: int = 3, seed: int = 0) -> None:
        self.n_clusters = n_clusters
        self.k_near = k_near
        self.seed = seed
        self.centroids_: np.ndarray | None = None
        self.scale_: float = 1.0
        self.train_quantiles_: dict[str, float] = {}

    def fit(self, emb: np.ndarray) -> Self:
        """Learn centroids and the training-distance scale from (n, d) L2-normalised embeddings."""
        from sklearn.cluster import KMeans

        emb = np.asarray(emb, np.float32)
        if len(emb) < 2:
            raise ValueError("OODDetector.fit needs at least 2 training embeddings")
        k = int(max(1, min(self.n_clusters, len(emb) // 5)))
        km = KMeans(n_clusters=k, n_init=1, random_state=self.seed, max_iter=100).fit(emb)
        c = km.cluster_centers_.astype(np.float32)
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        self.centroids_ = c
        self.scale_ = 1.0
        d = self._raw(emb)
        self.scale_ = float(max(np.quantile(d, 0.95), 1e-6))
        self.train_quantiles_ = {
            f"q{q}": float(np.quantile(d, q / 100) / self.scale_) for q in (50, 90, 95, 99)
        }
        return self

    @classmethod
    def from_table(cls, table: Any, encoder: Any, **kwargs: Any) -> OODDetector:
        """Fit on the prompts of a `RoutingTable` (or any object with `.prompts`) with `encoder`."""
        return cls(**kwargs).fit(encoder.encode(list(table.prompts)))

    def _raw(self, emb: np.ndarray) -> np.ndarray:
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted; call fit() or load()")
        sims = np.atleast_2d(emb) @ self.centroids_.T
        k = min(self.k_near, sims.shape[1])
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:] if k < sims.shape[1] else sims
        return 1.0 - top.mean(axis=1)

    def score(self, emb: np.ndarray) -> np.ndarray | float:
        """Out-of-domain score(s): 1.0 = the training 95th percentile; larger = further out."""
        s = self._raw(emb) / self.scale_
        return float(s[0]) if np.ndim(emb) == 1 else s

    # ---- persistence (no pickle) ----------------------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params)."""
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted")
        params = {
            "n_clusters": self.n_clusters,
            "k_near": self.k_near,
            "seed": self.seed,
            "scale": self.scale_,
            "train_quantiles": self.train_quantiles_,
        }
        return {"centroids": self.centroids_}, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> OODDetector:
        """Rebuild from `get_state()` output."""
        det = cls(params["n_clusters"], params["k_near"], params.get("seed", 0))
        det.centroids_ = np.asarray(arrays["centroids"], np.float32)
        det.scale_ = float(params["scale"])
        det.train_quantiles_ = dict(params.get("train_quantiles", {}))
        return det

    def save(self, path: str | Path) -> None:
        """Write `<path>` (.npz with the centroids and a JSON params entry)."""
        arrays, params = self.get_state()
        np.savez(Path(path), params=np.array(json.dumps(params)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> OODDetector:
        """Read a file written by `save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            params = json.loads(str(z["params"]))
            return cls.from_state({"centroids": z["centroids"]}, params)
