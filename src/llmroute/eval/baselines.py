"""Reference points every router is compared with: single models, random, oracle.

All functions work on the dense (n_prompts, n_models) true quality `Q` and cost `C` matrices
(NaN = unknown cell, excluded from means).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from llmroute.eval.metrics import aiq, oracle_choice, oracle_curve, single_model_points, upper_hull

__all__ = [
    "best_single",
    "oracle_summary",
    "random_baseline",
    "single_summaries",
    "strong_weak",
]


def _f(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def single_summaries(Q: np.ndarray, C: np.ndarray, models: Sequence[str]) -> list[dict]:
    """One `{"model", "quality", "cost"}` dict per model (means over known cells)."""
    pts = single_model_points(Q, C)
    return [{"model": m, "quality": _f(q), "cost": _f(c)} for m, (c, q) in zip(models, pts, strict=True)]


def best_single(Q: np.ndarray, C: np.ndarray, models: Sequence[str]) -> dict:
    """The single model with the highest mean quality (cheapest among ties)."""
    pts = single_model_points(Q, C)
    q = np.where(np.isfinite(pts[:, 1]), pts[:, 1], -np.inf)
    c = np.where(np.isfinite(pts[:, 0]), pts[:, 0], np.inf)
    top = q >= q.max() - 1e-12
    j = int(np.argmin(np.where(top, c, np.inf)))
    return {"model": models[j], "quality": _f(pts[j, 1]), "cost": _f(pts[j, 0])}


def strong_weak(Q: np.ndarray) -> tuple[int, int]:
    """(strong, weak) column indices of a two-model table: strong = higher mean quality."""
    if Q.shape[1] != 2:
        raise ValueError(f"strong/weak needs exactly two models, got {Q.shape[1]}")
    means = single_model_points(Q, np.zeros_like(Q))[:, 1]
    strong = int(np.nanargmax(means))
    return strong, 1 - strong


def random_baseline(
    Q: np.ndarray, C: np.ndarray, seed: int = 0, steps: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """The random router: (curve, score).

    Sends a random share of prompts to the dearer of two neighbouring models on the
    single-model hull (from the cheapest model up to the best one), for shares 0, 1/steps,
    ..., 1: in expectation its curve is the single-model hull, so its gap closed is about 0.
    `score` is i.i.d. uniform noise per prompt (its APGR on two-model sets is 0.5 in
    expectation).
    """
    n = Q.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    score = rng.random(n)
    singles = single_model_points(Q, C)
    ok = np.all(np.isfinite(singles), axis=1)
    hull = upper_hull(singles[ok])
    idx = np.flatnonzero(ok)
    chain = [int(idx[np.flatnonzero(np.all(singles[ok] == p, axis=1))[0]]) for p in hull]
    rows = np.arange(n)
    pts: list[tuple[float, float]] = []
    if len(chain) == 1:
        pick = np.full(n, chain[0])
        pts.append((float(np.nanmean(C[rows, pick])), float(np.nanmean(Q[rows, pick]))))
    for a, b in itertools.pairwise(chain):
        for f in np.linspace(0.0, 1.0, steps + 1):
            pick = np.full(n, a)
            pick[perm[: round(f * n)]] = b
            pts.append((float(np.nanmean(C[rows, pick])), float(np.nanmean(Q[rows, pick]))))
    return np.array(pts, dtype=float), score


def oracle_summary(
    Q: np.ndarray, C: np.ndarray, c_min: float, c_max: float, lambdas: Sequence[float] | None = None
) -> dict:
    """The oracle: best true model per prompt (cheapest among ties) and its trade-off curve."""
    pick = oracle_choice(Q, C)
    rows = np.arange(len(pick))
    curve = oracle_curve(Q, C, lambdas)
    return {
        "quality": _f(np.nanmean(Q[rows, pick])),
        "cost": _f(np.nanmean(C[rows, pick])),
        "aiq": _f(aiq(curve, c_min, c_max)),
        "curve": curve,
    }
