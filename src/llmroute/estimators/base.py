"""The estimator contract: prompt features -> expected quality per model.

scikit-learn style: hyper-parameters in `__init__`, `fit` returns self, learned state in
trailing-underscore attributes, `predict` is pure. Estimators work on `Features` (embeddings
plus a few hand-made columns) so that cross-validation embeds each prompt once; the
`llmroute.router.Router` pipeline turns raw prompts / routing tables into features.

State is saved without pickle: `get_state()` returns (arrays, JSON-able params) and
`from_state()` rebuilds an identical estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np


@dataclass
class Features:
    """Per-prompt inputs to estimators.

    emb:   (n, d) float32, L2-normalised prompt embeddings.
    extra: (n, k) float32 hand-made features (see `llmroute.estimators.features`); k may be 0.
    """

    emb: np.ndarray
    extra: np.ndarray

    def __post_init__(self) -> None:
        if self.extra is None:
            self.extra = np.zeros((len(self.emb), 0), dtype=np.float32)
        if len(self.emb) != len(self.extra):
            raise ValueError(f"emb has {len(self.emb)} rows but extra has {len(self.extra)}")

    def __len__(self) -> int:
        return len(self.emb)

    def take(self, idx: np.ndarray) -> Features:
        """Rows `idx` (indices or boolean mask)."""
        return Features(self.emb[idx], self.extra[idx])


class QualityEstimator:
    """Base class. Subclasses set `name` and implement `fit`, `predict` and the state pair."""

    name: ClassVar[str] = "base"
    #: True when `predict` returns a new float64 array whose values already lie in [0, 1] (or are
    #: NaN): the router then uses it as it is instead of copying and clipping it (a logistic output)
    fresh_unit_output: ClassVar[bool] = False

    def fit(self, X: Features, Q: np.ndarray) -> Self:
        """Learn from features `X` and the (n, m) quality matrix `Q` (NaN = unknown cell)."""
        raise NotImplementedError

    def predict(self, X: Features) -> np.ndarray:
        """(n, m) expected quality in [0, 1] per model."""
        raise NotImplementedError

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params) that `from_state` turns back into this estimator."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        """Rebuild a fitted estimator from `get_state()` output."""
        raise NotImplementedError


def column_means(Q: np.ndarray, prior: float = 0.5, strength: float = 1.0) -> np.ndarray:
    """Per-model mean quality ignoring NaN, shrunk toward `prior` with `strength` pseudo-counts."""
    ok = np.isfinite(Q)
    s = np.where(ok, Q, 0.0).sum(axis=0)
    n = ok.sum(axis=0)
    return (s + prior * strength) / (n + strength)
