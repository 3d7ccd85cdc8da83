"""Decide: policies over the (prompts x models) estimate matrices.

Every policy takes expected quality `q` and expected cost `c`, both shaped (n, m), and returns
the chosen model index per row. Estimators never decide; policies never estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "calibrate_threshold",
    "candidate_mask",
    "choose",
    "choose_row",
    "score_quantiles",
    "threshold_for_share",
    "tradeoff_grid",
    "unmet_constraints",
]

#: Number of evenly spaced levels (0, 0.01, ..., 1) at which `score_quantiles` summarises scores.
QUANTILE_LEVELS = 101


def candidate_mask(
    models: Sequence[str],
    *,
    allowed: Sequence[str] | None = None,
    context_windows: dict[str, int] | None = None,
    input_tokens: np.ndarray | float | None = None,
    n: int = 1,
) -> np.ndarray:
    """(n, m) boolean mask of admissible models.

    `allowed` keeps only the named models; `context_windows` (model -> max tokens) drops a
    model for rows whose `input_tokens` exceed its window. Raises ValueError on unknown names.
    """
    m = len(models)
    mask = np.ones((n, m), dtype=bool)
    if allowed is not None:
        unknown = sorted(set(allowed) - set(models))
        if unknown:
            raise ValueError(f"unknown model(s) in allowed list: {unknown}; known: {list(models)}")
        keep = np.array([name in set(allowed) for name in models])
        mask &= keep[None, :]
    if context_windows and input_tokens is not None:
        tok = np.broadcast_to(np.asarray(input_tokens, dtype=float).reshape(-1, 1), (n, 1))
        for j, name in enumerate(models):
            window = context_windows.get(name)
            if window is not None:
                mask[:, j] &= tok[:, 0] <= window
    return mask


def choose(
    q: np.ndarray,
    c: np.ndarray,
    *,
    tradeoff: float = 0.0,
    max_cost: float | None = None,
    min_quality: float | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Chosen model index per row.

    - default: maximise `q - tradeoff * c` (tradeoff = inf means cheapest);
    - `min_quality`: cheapest model whose expected quality reaches it (else the best one);
    - `max_cost`: models whose expected cost exceeds it are dropped (if none is left, the
      cheapest admissible model is chosen).
    Ties go to the cheaper model. Rows where the mask admits nothing fall back to all models.
    """
    q = np.asarray(q, dtype=float)
    c = np.asarray(c, dtype=float)
    n, m = q.shape
    ok = np.ones((n, m), dtype=bool) if mask is None else np.array(mask, dtype=bool, copy=True)
    ok[~ok.any(axis=1)] = True
    if max_cost is not None:
        within = ok & (c <= max_cost)
        none = ~within.any(axis=1)
        within[none] = ok[none] & (c[none] == np.where(ok[none], c[none], np.inf).min(axis=1, keepdims=True))
        ok = within
    qn = np.where(np.isfinite(q), q, -np.inf)
    cn = np.where(np.isfinite(c), c, np.inf)
    if min_quality is not None:
        reach = ok & (qn >= min_quality)
        none = ~reach.any(axis=1)
        score = np.where(reach, -cn, -np.inf)
        best = np.where(ok, qn, -np.inf).argmax(axis=1)
        pick = score.argmax(axis=1)
        return np.where(none, best, pick)
    if np.isinf(tradeoff):
        score = -cn
        tie = qn
    else:
        score = qn - tradeoff * np.where(np.isfinite(cn), cn, 0.0)
        tie = -cn
    score = np.where(ok, score, -np.inf)
    # lexicographic: best score, then tie-breaker (cheaper or better)
    top = score.max(axis=1, keepdims=True)
    cand = ok & (score >= top - 1e-12)
    return np.where(cand, tie, -np.inf).argmax(axis=1)


def _argmax(values: list[float]) -> int:
    """Index of the first largest value (numpy's argmax on NaN-free input)."""
    best, best_v = 0, values[0]
    for j in range(1, len(values)):
        if values[j] > best_v:
            best, best_v = j, values[j]
    return best


def choose_row(
    q: Sequence[float],
    c: Sequence[float],
    *,
    tradeoff: float = 0.0,
    max_cost: float | None = None,
    min_quality: float | None = None,
    mask: Sequence[bool] | None = None,
) -> int:
    """`choose` for one prompt, in plain Python: same index as `choose` on the (1, m) arrays.

    A single decision costs a few microseconds here instead of ~40 us of small-array numpy.
    Rows with NaN costs take `choose` itself (numpy's NaN propagation is not mirrored here).
    """
    m = len(q)
    inf = math.inf
    isfinite = math.isfinite
    if (
        max_cost is None
        and min_quality is None
        and isfinite(tradeoff)
        and (mask is None or all(mask))
        and all(map(isfinite, q))
        and all(map(isfinite, c))
    ):
        # the usual row (finite estimates, no limits): best q - tradeoff * c, ties to the cheaper
        # model, then to the first; the same pick as the general code below, in one pass
        scores = [q[j] - tradeoff * c[j] for j in range(m)]
        top = max(scores) - 1e-12
        best, best_c = -1, inf
        for j in range(m):
            if scores[j] >= top and (best < 0 or c[j] < best_c):
                best, best_c = j, c[j]
        return best
    if any(map(math.isnan, c)):
        return int(
            choose(
                np.asarray([q], dtype=float),
                np.asarray([c], dtype=float),
                tradeoff=tradeoff,
                max_cost=max_cost,
                min_quality=min_quality,
                mask=None if mask is None else np.asarray([mask], dtype=bool),
            )[0]
        )
    ok = [True] * m if mask is None else [bool(x) for x in mask]
    if not any(ok):
        ok = [True] * m
    if max_cost is not None:
        within = [ok[j] and c[j] <= max_cost for j in range(m)]
        if not any(within):
            low = min(c[j] if ok[j] else inf for j in range(m))
            within = [ok[j] and c[j] == low for j in range(m)]
        ok = within
    qn = [x if math.isfinite(x) else -inf for x in q]
    cn = [x if math.isfinite(x) else inf for x in c]
    if min_quality is not None:
        reach = [ok[j] and qn[j] >= min_quality for j in range(m)]
        if not any(reach):
            return _argmax([qn[j] if ok[j] else -inf for j in range(m)])
        return _argmax([-cn[j] if reach[j] else -inf for j in range(m)])
    if math.isinf(tradeoff):
        score = [-x for x in cn]
        tie = qn
    else:
        score = [qn[j] - tradeoff * (cn[j] if math.isfinite(cn[j]) else 0.0) for j in range(m)]
        tie = [-x for x in cn]
    score = [score[j] if ok[j] else -inf for j in range(m)]
    top = max(score)
    return _argmax([tie[j] if ok[j] and score[j] >= top - 1e-12 else -inf for j in range(m)])


def tradeoff_grid(c_scale: float, n: int = 60) -> np.ndarray:
    """Trade-off values for a curve: 0, `n` log-spaced values around 1/c_scale, and inf."""
    c_scale = max(float(c_scale), 1e-12)
    mid = np.logspace(-4, 4, n) / c_scale
    return np.concatenate([[0.0], mid, [np.inf]])


def calibrate_threshold(scores: np.ndarray, strong_share: float) -> float:
    """Threshold on a strong-vs-weak score so that `strong_share` of `scores` go strong.

    RouteLLM-style: compute scores on a sample of the user's own prompts and route a prompt to
    the strong model when its score is >= the returned threshold.
    """
    if not 0.0 <= strong_share <= 1.0:
        raise ValueError(f"strong_share must be in [0, 1], got {strong_share}")
    s = np.sort(np.asarray(scores, dtype=float))[::-1]
    if len(s) == 0:
        raise ValueError("need at least one score to calibrate a threshold")
    k = round(strong_share * len(s))
    if k <= 0:
        return float(np.nextafter(s[0], np.inf))
    return float(s[k - 1])


def score_quantiles(scores: np.ndarray, levels: int = QUANTILE_LEVELS) -> list[float]:
    """The strong-vs-weak score distribution at `levels` evenly spaced quantile levels (0 .. 1).

    Saved in a router's policy (at fit and calibrate time) so that any strong share maps to a
    threshold later (`threshold_for_share`) without the prompts themselves.
    """
    s = np.asarray(scores, dtype=float)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise ValueError("need at least one finite score to summarise")
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    return [float(x) for x in np.quantile(s, np.linspace(0.0, 1.0, levels))]


def threshold_for_share(quantiles: Sequence[float], strong_share: float) -> float:
    """Threshold that sends about `strong_share` of prompts strong, from `score_quantiles` output.

    A prompt goes strong when its score is >= the threshold, so the threshold is the score
    distribution's (1 - share) quantile (linear between the stored levels); share 0 gives a
    threshold above every stored score, share 1 the smallest stored score.
    """
    if not 0.0 <= strong_share <= 1.0 or math.isnan(strong_share):
        raise ValueError(f"strong_share must be in [0, 1], got {strong_share}")
    qs = np.asarray(quantiles, dtype=float)
    if qs.ndim != 1 or len(qs) < 2 or not np.all(np.isfinite(qs)):
        raise ValueError("quantiles must be at least two finite numbers (see score_quantiles)")
    if strong_share <= 0.0:
        return float(np.nextafter(qs[-1], np.inf))
    levels = np.linspace(0.0, 1.0, len(qs))
    return float(np.interp(1.0 - strong_share, levels, qs))


def unmet_constraints(
    quality: float, cost: float, *, max_cost: float | None = None, min_quality: float | None = None
) -> list[str]:
    """Which limits the chosen model's estimates break: a sublist of ["max_cost", "min_quality"].

    The policies above fall back to the closest model when no admissible model meets a limit
    (the cheapest for max_cost, the best for min_quality); this says when that happened. An
    unknown (NaN) estimate counts as not meeting the limit.
    """
    out: list[str] = []
    if max_cost is not None and not cost <= max_cost:
        out.append("max_cost")
    if min_quality is not None and not quality >= min_quality:
        out.append("min_quality")
    return out
