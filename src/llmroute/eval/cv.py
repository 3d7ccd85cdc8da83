"""Cross-validation over prompt ids: out-of-fold predictions for every prompt."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator


def kfold_indices(n: int, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test-index arrays of `folds` disjoint folds over range(n), shuffled with `seed`."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if n < folds:
        raise ValueError(f"cannot make {folds} folds from {n} prompts")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, folds)]


def oof_predict(
    make: Callable[[], QualityEstimator],
    X: Features,
    Q: np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold (n, m) quality predictions: each row from an estimator that never saw it."""
    out = np.full(Q.shape, np.nan)
    n = len(X)
    for test in kfold_indices(n, folds, seed):
        train = np.setdiff1d(np.arange(n), test, assume_unique=True)
        est = make().fit(X.take(train), Q[train])
        out[test] = est.predict(X.take(test))
    return out
