"""Routing metrics against hand-computed values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmroute.eval.metrics import (
    aiq,
    apgr,
    cost_ratio_at_best_quality,
    cpt,
    gap_closed,
    oracle_curve,
    pgr_curve,
    router_curve,
    single_model_points,
    upper_hull,
)

# ---- AIQ --------------------------------------------------------------------------------------


def test_aiq_concave_points_and_flat_right_extension() -> None:
    pts = np.array([[1.0, 0.5], [2.0, 0.7], [3.0, 0.8]])
    # trapezoids 1..2: 0.6, 2..3: 0.75, flat 3..4: 0.8 -> 2.15 / 3
    assert aiq(pts, 1.0, 4.0) == pytest.approx(2.15 / 3)


def test_aiq_ignores_points_under_the_hull() -> None:
    pts = np.array([[1.0, 0.5], [2.0, 0.7], [3.0, 0.8], [2.5, 0.6], [1.5, 0.55]])
    assert aiq(pts, 1.0, 4.0) == pytest.approx(2.15 / 3)


def test_aiq_hull_bridges_a_non_concave_point() -> None:
    pts = np.array([[1.0, 0.5], [2.0, 0.55], [3.0, 0.8]])
    # hull is the straight line (1, .5) -> (3, .8): mean height 0.65
    assert aiq(pts, 1.0, 3.0) == pytest.approx(0.65)
    h = upper_hull(pts)
    assert h.tolist() == [[1.0, 0.5], [3.0, 0.8]]


def test_aiq_non_decreasing_cut_then_flat() -> None:
    # a dearer but worse point does not pull the curve down: flat at 0.8 after cost 3
    pts = np.array([[1.0, 0.5], [3.0, 0.8], [4.0, 0.6]])
    assert upper_hull(pts).tolist() == [[1.0, 0.5], [3.0, 0.8]]
    assert aiq(pts, 1.0, 5.0) == pytest.approx((0.5 + 0.8) / 2 * 2 / 4 + 0.8 * 2 / 4)


def test_aiq_single_point_is_its_quality() -> None:
    assert aiq(np.array([[2.0, 0.42]]), 1.0, 5.0) == pytest.approx(0.42)
    assert aiq(np.array([[2.0, 0.42]]), 2.0, 2.0) == pytest.approx(0.42)


def test_aiq_same_cost_keeps_best_quality() -> None:
    pts = np.array([[1.0, 0.2], [1.0, 0.6], [2.0, 0.6]])
    assert aiq(pts, 1.0, 2.0) == pytest.approx(0.6)


def test_aiq_of_no_points_is_nan() -> None:
    assert math.isnan(aiq(np.zeros((0, 2)), 0.0, 1.0))


# ---- gap closed, cost ratio ---------------------------------------------------------------------


def test_gap_closed() -> None:
    assert gap_closed(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert gap_closed(0.8, 0.6, 0.8) == pytest.approx(1.0)
    assert gap_closed(0.6, 0.6, 0.8) == pytest.approx(0.0)
    assert math.isnan(gap_closed(0.7, 0.6, 0.6))


def test_cost_ratio_at_best_quality() -> None:
    singles = np.array([[1.0, 0.6], [4.0, 0.75]])
    curve = np.array([[1.0, 0.6], [2.0, 0.75], [3.0, 0.8]])
    assert cost_ratio_at_best_quality(curve, singles) == pytest.approx(0.5)
    never = np.array([[1.0, 0.6], [2.0, 0.7]])
    assert math.isnan(cost_ratio_at_best_quality(never, singles))


def test_curves_on_a_known_matrix() -> None:
    # 2 prompts x 2 models; model 1 is dear; prompt 0 needs it, prompt 1 does not
    Q = np.array([[0.0, 1.0], [1.0, 1.0]])
    C = np.array([[1.0, 10.0], [1.0, 10.0]])
    singles = single_model_points(Q, C)
    assert singles.tolist() == [[1.0, 0.5], [10.0, 1.0]]
    oc = oracle_curve(Q, C)
    # best point: prompt 0 -> model 1, prompt 1 -> model 0 (cheapest among ties)
    assert [5.5, 1.0] in oc.tolist()
    assert aiq(oc, 1.0, 10.0) > aiq(singles, 1.0, 10.0)
    # a router with perfect estimates reproduces the oracle
    rc = router_curve(Q, C, Q, C)
    assert np.allclose(rc, oc)


def test_router_curve_plots_true_outcomes_of_picks_made_on_wrong_estimates() -> None:
    # the estimates are deliberately wrong (quality and cost inverted); the picks follow them,
    # but each point must be the mean TRUE cost and mean TRUE quality of those picks
    Q = np.array([[0.2, 0.9], [0.8, 0.1]])
    C = np.array([[1.0, 10.0], [2.0, 20.0]])
    q_hat = np.array([[0.9, 0.1], [0.1, 0.9]])
    c_hat = np.array([[5.0, 1.0], [5.0, 1.0]])
    rc = router_curve(Q, C, q_hat, c_hat, lambdas=[0.0, math.inf])
    # tradeoff 0: best estimated quality -> prompt 0 model 0, prompt 1 model 1
    #   true cost (1 + 20) / 2 = 10.5, true quality (0.2 + 0.1) / 2 = 0.15
    # tradeoff inf: cheapest estimated cost -> model 1 for both prompts
    #   true cost (10 + 20) / 2 = 15, true quality (0.9 + 0.1) / 2 = 0.5
    assert np.allclose(rc, [[10.5, 0.15], [15.0, 0.5]])


def test_nan_quality_cells_are_excluded_from_means() -> None:
    Q = np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]])
    C = np.ones((3, 2))
    pts = single_model_points(Q, C)
    assert pts[:, 1].tolist() == pytest.approx([2 / 3, 1.0])


# ---- APGR / CPT --------------------------------------------------------------------------------


def _two_model_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = 100
    qs = np.zeros(n)
    qs[:20] = 1.0  # the strong model wins on the first 20 prompts only
    qw = np.zeros(n)
    gain = qs - qw
    return qs, qw, gain


def test_apgr_perfect_ranking() -> None:
    qs, qw, gain = _two_model_case()
    # PGR(f) = min(100 f, 20) / 20: area 0.2/2 + 0.8 = 0.9
    assert apgr(gain, qs, qw) == pytest.approx(0.9)
    assert cpt(gain, qs, qw, 0.5) == pytest.approx(0.10)
    assert cpt(gain, qs, qw, 0.8) == pytest.approx(0.16)
    _fr, pgr = pgr_curve(gain, qs, qw)
    assert pgr[0] == pytest.approx(0.0) and pgr[-1] == pytest.approx(1.0)


def test_apgr_worst_ranking() -> None:
    qs, qw, gain = _two_model_case()
    assert apgr(-gain, qs, qw) == pytest.approx(0.1)
    assert cpt(-gain, qs, qw, 0.5) == pytest.approx(0.90)


def test_apgr_random_is_one_half_in_expectation() -> None:
    rng = np.random.default_rng(0)
    qs = (rng.random(400) < 0.8).astype(float)
    qw = (rng.random(400) < 0.6).astype(float)
    vals = [apgr(rng.random(400), qs, qw) for _ in range(400)]
    assert np.mean(vals) == pytest.approx(0.5, abs=0.01)


def test_cpt_never_reached_is_nan() -> None:
    qs = np.array([1.0, 0.0])
    qw = np.array([1.0, 0.0])  # no gap at all -> PGR undefined
    assert math.isnan(apgr(np.array([1.0, 0.0]), qs, qw))
    assert math.isnan(cpt(np.array([1.0, 0.0]), qs, qw, 0.5))


# ---- properties ---------------------------------------------------------------------------------

_point = st.tuples(
    st.floats(min_value=1e-6, max_value=1e3, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_point, min_size=1, max_size=40))
def test_aiq_lies_between_min_and_max_quality(points: list[tuple[float, float]]) -> None:
    pts = np.array(points)
    c_min, c_max = float(pts[:, 0].min()), float(pts[:, 0].max())
    a = aiq(pts, c_min, c_max)
    assert pts[:, 1].min() - 1e-9 <= a <= pts[:, 1].max() + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(_point, min_size=1, max_size=40))
def test_upper_hull_is_monotone_and_concave(points: list[tuple[float, float]]) -> None:
    pts = np.array(points)
    h = upper_hull(pts)
    assert len(h) >= 1
    assert np.all(np.diff(h[:, 0]) > 0)
    assert np.all(np.diff(h[:, 1]) >= -1e-12)
    slopes = np.diff(h[:, 1]) / np.diff(h[:, 0])
    assert np.all(np.diff(slopes) <= 1e-9 * (1 + np.abs(slopes[1:])))
    # the hull reaches the best quality and no point lies above it
    assert h[:, 1].max() == pytest.approx(pts[:, 1].max())
    above = np.interp(pts[:, 0], h[:, 0], h[:, 1]) - pts[:, 1]
    assert np.all(above >= -1e-9)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=-1, max_value=1, allow_nan=False), min_size=5, max_size=60),
    st.integers(0, 10),
)
def test_apgr_bounded_by_perfect_and_worst(score: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(score)
    qs = (rng.random(n) < 0.7).astype(float)
    qw = (rng.random(n) < 0.4).astype(float)
    if qs.mean() == qw.mean():
        return
    gain = qs - qw
    sign = 1.0 if qs.mean() > qw.mean() else -1.0
    a = apgr(np.array(score), qs, qw)
    best, worst = apgr(sign * gain, qs, qw), apgr(-sign * gain, qs, qw)
    assert min(best, worst) - 1e-9 <= a <= max(best, worst) + 1e-9
