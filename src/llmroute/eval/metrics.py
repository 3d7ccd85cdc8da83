"""Routing metrics (the report's "Definitions" section states them in words).

All functions are pure numpy. Points are (mean cost, mean quality) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llmroute.policy import choose, tradeoff_grid

__all__ = [
    "aiq",
    "apgr",
    "cost_ratio_at_best_quality",
    "cpt",
    "curve_from_picks",
    "gap_closed",
    "oracle_choice",
    "pgr_curve",
    "pick_shares",
    "router_curve",
    "router_picks",
    "single_model_points",
    "upper_hull",
]


def _nanmean_cols(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        cnt = np.isfinite(x).sum(axis=0)
        s = np.where(np.isfinite(x), x, 0.0).sum(axis=0)
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


def single_model_points(Q: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(m, 2) array of (mean cost, mean quality) per model, NaN cells ignored."""
    return np.stack([_nanmean_cols(C), _nanmean_cols(Q)], axis=1)


def _point(Q: np.ndarray, C: np.ndarray, pick: np.ndarray) -> tuple[float, float]:
    rows = np.arange(len(pick))
    q = Q[rows, pick]
    c = C[rows, pick]
    return float(np.nanmean(c)), float(np.nanmean(q))


def router_picks(q_hat: np.ndarray, c_hat: np.ndarray, lambdas: Sequence[float]) -> np.ndarray:
    """(len(lambdas), n) model index picked per prompt at each trade-off (max q - lambda*c)."""
    n = np.asarray(q_hat).shape[0]
    out = np.empty((len(lambdas), n), dtype=np.intp)
    for k, lam in enumerate(lambdas):
        out[k] = choose(q_hat, c_hat, tradeoff=float(lam))
    return out


def curve_from_picks(Q: np.ndarray, C: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """(len(picks), 2) (mean true cost, mean true quality) of each row of `router_picks`."""
    return np.array([_point(Q, C, p) for p in picks], dtype=float).reshape(len(picks), 2)


def pick_shares(picks: np.ndarray, n_models: int) -> np.ndarray:
    """(len(picks), n_models) share of prompts sent to each model at each trade-off."""
    picks = np.atleast_2d(picks)
    n = max(picks.shape[1], 1)
    return np.stack([np.bincount(p, minlength=n_models) / n for p in picks]).astype(float)


def router_curve(
    Q: np.ndarray,
    C: np.ndarray,
    q_hat: np.ndarray,
    c_hat: np.ndarray,
    lambdas: Sequence[float] | None = None,
) -> np.ndarray:
    """Sweep the trade-off; each point is (mean true cost, mean true quality) of the picks."""
    if lambdas is None:
        lambdas = tradeoff_grid(float(np.nanmedian(np.abs(C))) if np.isfinite(C).any() else 1.0)
    return curve_from_picks(Q, C, router_picks(q_hat, c_hat, lambdas))


def oracle_choice(Q: np.ndarray, C: np.ndarray, tradeoff: float = 0.0) -> np.ndarray:
    """Oracle pick per prompt: best true q - tradeoff*c, cheapest among ties (NaN = worst)."""
    return choose(
        np.where(np.isfinite(Q), Q, -np.inf), np.where(np.isfinite(C), C, np.inf), tradeoff=tradeoff
    )


def oracle_curve(Q: np.ndarray, C: np.ndarray, lambdas: Sequence[float] | None = None) -> np.ndarray:
    """The oracle's curve: the trade-off sweep over the true matrices."""
    return router_curve(Q, C, Q, C, lambdas)


def upper_hull(points: np.ndarray) -> np.ndarray:
    """Non-decreasing upper concave hull of (cost, quality) points, sorted by cost."""
    pts = np.asarray(points, dtype=float)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        return pts.reshape(0, 2)
    order = np.lexsort((-pts[:, 1], pts[:, 0]))
    pts = pts[order]
    hull: list[np.ndarray] = []
    for p in pts:
        if hull and abs(hull[-1][0] - p[0]) < 1e-300:
            continue  # same cost: the first (highest quality) is kept
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    h = np.array(hull)
    # non-decreasing: cut after the highest point (the flat extension covers the rest)
    k = int(np.argmax(h[:, 1]))
    return h[: k + 1]


def aiq(points: np.ndarray, c_min: float, c_max: float) -> float:
    """Average quality under the non-decreasing upper hull over [c_min, c_max].

    The hull is extended flat to the right of its last point and flat to the left of its first
    point, then integrated over [c_min, c_max] and divided by (c_max - c_min). When
    c_max == c_min, returns the hull's value at c_min.
    """
    h = upper_hull(points)
    if len(h) == 0:
        return float("nan")
    xs, ys = h[:, 0], h[:, 1]
    if c_max <= c_min:
        return float(np.interp(c_min, xs, ys))
    grid = np.concatenate([[c_min], xs[(xs > c_min) & (xs < c_max)], [c_max]])
    vals = np.interp(grid, xs, ys)  # np.interp extends flat on both sides
    return float(np.trapezoid(vals, grid) / (c_max - c_min))


def gap_closed(aiq_router: float, aiq_single_hull: float, aiq_oracle: float) -> float:
    """(AIQ_router - AIQ_single_hull) / (AIQ_oracle - AIQ_single_hull)."""
    den = aiq_oracle - aiq_single_hull
    if not math.isfinite(den) or abs(den) < 1e-15:
        return float("nan")
    return float((aiq_router - aiq_single_hull) / den)


def cost_ratio_at_best_quality(curve: np.ndarray, singles: np.ndarray) -> float:
    """Least curve cost reaching the best single model's mean quality / that model's mean cost."""
    ok = np.all(np.isfinite(singles), axis=1)
    s = singles[ok]
    best_q = s[:, 1].max()
    best = s[s[:, 1] >= best_q - 1e-12]
    best_cost = best[:, 0].min()
    reach = curve[np.isfinite(curve).all(axis=1) & (curve[:, 1] >= best_q - 1e-12)]
    if len(reach) == 0 or best_cost <= 0:
        return float("nan")
    return float(reach[:, 0].min() / best_cost)


def pgr_curve(
    score: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, steps: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """PGR(f) for f = 0, 1/steps, ..., 1: the top-f share by `score` goes to the strong model."""
    score = np.asarray(score, dtype=float)
    qs = np.asarray(q_strong, dtype=float)
    qw = np.asarray(q_weak, dtype=float)
    ok = np.isfinite(qs) & np.isfinite(qw)
    score, qs, qw = score[ok], qs[ok], qw[ok]
    n = len(score)
    order = np.argsort(-score, kind="stable")
    gain = (qs - qw)[order]
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    fr = np.linspace(0.0, 1.0, steps + 1)
    k = np.rint(fr * n).astype(int)
    q_f = (qw.sum() + cum[k]) / max(n, 1)
    den = qs.mean() - qw.mean()
    if abs(den) < 1e-15:
        return fr, np.full_like(fr, np.nan)
    return fr, (q_f - qw.mean()) / den


def apgr(score: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray) -> float:
    """Average performance gap recovered: trapezoid area of PGR over f in [0, 1]."""
    fr, pgr = pgr_curve(score, q_strong, q_weak)
    return float(np.trapezoid(pgr, fr))


def cpt(score: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, x: float) -> float:
    """Call-performance threshold: least share f of strong calls with PGR >= x (NaN if never)."""
    fr, pgr = pgr_curve(score, q_strong, q_weak)
    hit = np.nonzero(pgr >= x - 1e-12)[0]
    return float(fr[hit[0]]) if len(hit) else float("nan")
