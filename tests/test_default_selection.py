"""The default estimator on small tables: decision-relevant loss, final-predictor selection, and the
size-invariant "how far" kernel feature.

All data is generated here: no shared data needed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmroute.data import make_synthetic_table, true_best
from llmroute.estimators.base import Features
from llmroute.estimators.default import DefaultEstimator, _Base, _centred_sq, _select_candidate
from llmroute.router import Router


def _weak(n: int, seed: int, dim: int = 32) -> tuple[Features, np.ndarray]:
    """Two models, graded quality; their difference has a weak signal along one axis and much noise
    (the regime of MT-Bench: 160 prompts, both models usually good)."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sig = 0.05 * np.tanh(3 * emb[:, 0])
    Q = np.clip(np.stack([0.85 + sig, 0.80 - sig], axis=1) + 0.2 * rng.standard_normal((n, 2)), 0, 1)
    extra = rng.standard_normal((n, 3)).astype(np.float32)
    return Features(emb.astype(np.float32), extra), Q


def test_centred_loss_ignores_row_shifts_and_is_the_pairwise_difference_error() -> None:
    rng = np.random.default_rng(0)
    Q = rng.random((50, 4))
    Q[3, 1] = np.nan
    P = rng.random((50, 4))
    base = _centred_sq(Q, P)
    shifted = _centred_sq(Q, P + rng.normal(size=(50, 1)))  # a per-row constant: same decisions
    np.testing.assert_allclose(base, shifted, atol=1e-12)
    # = sum over pairs of the squared error of the predicted difference, / m (complete rows)
    m = 4
    pair = np.zeros(50)
    for i in range(m):
        for j in range(i + 1, m):
            pair += ((Q[:, i] - Q[:, j]) - (P[:, i] - P[:, j])) ** 2
    full = np.isfinite(Q).all(axis=1)
    np.testing.assert_allclose(base[full], pair[full] / m, atol=1e-12)
    assert np.all(np.isfinite(base))


def test_select_candidate_best_and_one_standard_error_rule() -> None:
    rng = np.random.default_rng(1)
    Q = rng.random((400, 3))
    noise = rng.normal(size=(400, 3))
    cands = {
        "stack": Q + 0.10 * noise,  # best
        "ridge": Q + 0.11 * noise,  # the same noise, scaled: worse on every row
        "mean": np.tile(Q.mean(axis=0), (400, 1)),
    }
    choice, scores = _select_candidate(cands, Q, ["ridge", "stack"], z=0.0)
    assert choice == "stack" and scores["stack"] < scores["ridge"] < scores["mean"]
    # identical noise -> the paired difference has tiny spread: "ridge" is not within 1 SE
    assert _select_candidate(cands, Q, ["ridge", "stack"], z=1.0)[0] == "stack"
    # independent noise of nearly the same size: the simpler one is within 1 SE
    cands["ridge"] = Q + 0.1005 * rng.normal(size=(400, 3))
    assert _select_candidate(cands, Q, ["ridge", "stack"], z=1.0)[0] == "ridge"
    # the per-model mean (not in the order) wins only when it is the best
    assert _select_candidate({"mean": cands["mean"], "stack": Q[::-1]}, Q, ["stack"], z=1.0)[0] == "mean"


def test_density_feature_does_not_grow_with_the_training_size() -> None:
    """The stacker is fitted on inner-fold bases (3/4 of the rows) and applied to the base fitted
    on all rows: its "how far" inputs must not shift with the row count."""
    X, Q = _weak(80, seed=2)
    Xt, _ = _weak(20, seed=3)
    K = X.emb / np.linalg.norm(X.emb, axis=1, keepdims=True)
    Kt = Xt.emb / np.linalg.norm(Xt.emb, axis=1, keepdims=True)
    Z = np.asarray(X.emb, dtype=np.float64)
    betas = (8.0, 2.0)

    def density(rows: np.ndarray) -> np.ndarray:
        b = _Base([], [], 2.0, betas).fit(X.take(rows), Z[rows], Q[rows], [], K[rows])
        cols = b._kernel(Kt)
        return np.hstack(cols[len(betas) :])

    once = density(np.arange(80))
    twice = density(np.concatenate([np.arange(80), np.arange(80)]))  # every row twice
    np.testing.assert_allclose(once, twice, atol=1e-5)


@pytest.mark.parametrize("seed", [3, 4])
def test_small_weak_table_does_not_collapse(seed: int) -> None:
    """128-160 prompts, weak signal: held-out between-model error stays near the per-model mean's
    (before the size-invariant density feature the stack was 1.48x worse on seed 4)."""
    Xtr, Qtr = _weak(120, seed)
    Xte, Qte = _weak(3000, 100 + seed)
    est = DefaultEstimator().fit(Xtr, Qtr)
    loss = _centred_sq(Qte, est.predict(Xte)).mean()
    mean_loss = _centred_sq(Qte, np.tile(np.nanmean(Qtr, axis=0), (len(Qte), 1))).mean()
    assert loss <= 1.03 * mean_loss
    assert est.stack_choice_ in est.selection_scores_


def test_small_table_gets_the_logistic_block_large_one_not() -> None:
    X, Q = _weak(120, seed=5)
    small = DefaultEstimator().fit(X, Q)
    assert small.base_.logit is not None
    # with the logistic block the choice is among three candidates only (less selection noise)
    assert set(small.selection_scores_) == {"stack", "logistic", "mean"}
    off = DefaultEstimator(logistic_max_n=50).fit(X, Q)
    assert off.base_.logit is None and "logistic" not in off.selection_scores_
    assert {"stack", "mean", "ridge", "kernel0"} <= set(off.selection_scores_)
    forced = DefaultEstimator(logistic=False).fit(X, Q)
    assert forced.base_.logit is None


@pytest.mark.parametrize("selection", ["best", "one_se", "stack"])
def test_state_round_trip_keeps_the_selected_predictor(selection: str) -> None:
    X, Q = _weak(150, seed=6)
    Xt, _ = _weak(40, seed=7)
    est = DefaultEstimator(selection=selection).fit(X, Q)
    if selection == "stack":
        assert est.stack_choice_ == "stack" and est.selection_scores_ == {}
    arrays, params = est.get_state()
    params = json.loads(json.dumps(params))
    again = DefaultEstimator.from_state({k: v.copy() for k, v in arrays.items()}, params)
    assert again.stack_choice_ == est.stack_choice_ and again.selection == selection
    np.testing.assert_array_equal(est.predict(Xt), again.predict(Xt))


def test_states_saved_before_the_mean_density_keep_their_predictions() -> None:
    """An old state (no density_mean / selection params) is read with the old log(1 + total)."""
    X, Q = _weak(100, seed=8)
    Xt, _ = _weak(10, seed=9)
    arrays, params = DefaultEstimator(selection="stack", logistic=False).fit(X, Q).get_state()
    old = {k: v for k, v in params.items() if k not in ("density_mean", "selection", "stack_choice")}
    est = DefaultEstimator.from_state(arrays, old)
    assert est.base_.density_mean is False and est.selection == "stack"
    assert est.predict(Xt).shape == (10, 2)


def test_rejects_unknown_selection() -> None:
    with pytest.raises(ValueError, match="selection"):
        DefaultEstimator(selection="vote")


class _WordHash:
    """Tiny bag-of-words encoder, so the test needs no model files."""

    name = "test-words"
    dim = 128

    def encode(self, texts: list[str]) -> np.ndarray:
        import zlib

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.strip(".,?!").encode()) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def spec(self) -> dict:
        return {"name": self.name, "dim": self.dim}


@pytest.mark.parametrize("n", [24, 40, 120])
def test_synthetic_tables_of_small_size_route_to_the_known_best(n: int) -> None:
    """Graded synthetic tables of 6 to 30 prompts per topic: the default picks the known best
    model at trade-off 0 (four models: chance 0.25) and is not worse than the logistic router."""
    train = make_synthetic_table(n, seed=1)
    test = make_synthetic_table(200, seed=2)
    truth = true_best(test)

    def accuracy(estimator: str) -> float:
        router = Router.fit(train, estimator=estimator, encoder=_WordHash(), seed=0)
        picks = [d.model for d in router.route_batch(test.prompts, tradeoff=0.0)]
        return float(np.mean([p == t for p, t in zip(picks, truth, strict=True)]))

    acc = accuracy("default")
    assert acc >= 0.8
    assert acc >= accuracy("linear") - 0.05
