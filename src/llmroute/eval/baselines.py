"""Reference points every router is compared with: single models, random, oracle.

All functions work on the dense (n_prompts, n_models) true quality `Q` and cost `C` matrices
(NaN = unknown cell, excluded from means).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmroute.eval.metrics import aiq, oracle_choice, oracle_curve, single_model_points

__all__ = [
    "best_single",
    "oracle_summary",
    "random_estimates",
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


def random_estimates(
    n: int, mean_cost: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Estimates of a router that knows nothing about the prompt.

    Expected quality is i.i.d. uniform noise per (prompt, model) and expected cost is each
    model's mean cost, so sweeping the trade-off mixes models at random in proportions set by
    their prices. On two-model sets its APGR is 0.5 in expectation.
    """
    rng = np.random.default_rng(seed)
    m = len(mean_cost)
    q = rng.random((n, m))
    c = np.broadcast_to(np.asarray(mean_cost, dtype=float), (n, m)).copy()
    return q, c


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
