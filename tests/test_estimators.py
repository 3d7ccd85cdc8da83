"""Quality and cost estimators on synthetic tables whose best model per prompt is known."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from llmroute.data import SYNTHETIC_MODELS, make_synthetic_table, true_best
from llmroute.estimators import ESTIMATORS, Features, estimator_class, make_estimator
from llmroute.estimators.cost import CostEstimator

_WORD = re.compile(r"[a-z0-9]+")


def hash_embed(texts: Sequence[str], dim: int = 256) -> np.ndarray:
    """Bag of words (4+ letters) hashed into `dim` buckets, L2-normalised (a stand-in encoder)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in _WORD.findall(t.lower()):
            if len(w) >= 4 and not w.isdigit():
                out[i, zlib.crc32(w.encode()) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _features(table, extra: bool = True) -> Features:
    emb = hash_embed(table.prompts)
    ex = np.log1p(np.array([[len(p), p.count(" ")] for p in table.prompts], dtype=np.float32))
    return Features(emb, ex if extra else None)


@pytest.fixture(scope="module")
def split():
    train = make_synthetic_table(240, seed=1, missing_rate=0.1)
    test = make_synthetic_table(120, seed=2)
    return train, test


SIMPLE = ["knn", "linear", "mlp", "mf"]


@pytest.mark.parametrize("name", SIMPLE)
def test_learns_best_model(name, split):
    train, test = split
    est = make_estimator(name, seed=0).fit(_features(train), train.quality_matrix())
    P = est.predict(_features(test))
    assert P.shape == (test.n_prompts, len(SYNTHETIC_MODELS))
    assert np.all((P >= 0) & (P <= 1))
    truth = true_best(test)
    pred = [test.models[j] for j in P.argmax(axis=1)]
    acc = np.mean([a == b for a, b in zip(pred, truth, strict=True)])
    assert acc >= 0.8, f"{name}: argmax accuracy {acc:.2f} (chance 0.25)"


@pytest.mark.parametrize("name", SIMPLE)
def test_state_round_trip_is_identical(name, split):
    train, test = split
    est = make_estimator(name, seed=0).fit(_features(train), train.quality_matrix())
    arrays, params = est.get_state()
    import json

    params = json.loads(json.dumps(params))  # must be JSON-able
    back = type(est).from_state({k: np.array(v) for k, v in arrays.items()}, params)
    np.testing.assert_allclose(
        back.predict(_features(test)), est.predict(_features(test)), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", SIMPLE)
def test_hyper_parameters_chosen_by_cv(name, split):
    train, _ = split
    est = make_estimator(name).fit(_features(train), train.quality_matrix())
    assert est.cv_scores_, "no inner-CV scores recorded"
    assert all(np.isfinite(v) for v in est.cv_scores_.values())


@pytest.mark.parametrize("name", SIMPLE)
def test_handles_all_nan_column_and_rejects_bad_input(name):
    table = make_synthetic_table(80, seed=3)
    Q = table.quality_matrix().copy()
    Q[:, 0] = np.nan
    X = _features(table)
    P = make_estimator(name).fit(X, Q).predict(X)
    assert np.isfinite(P).all()
    with pytest.raises(ValueError):
        make_estimator(name).fit(X, Q[:10])
    with pytest.raises(ValueError):
        make_estimator(name).fit(X, Q * 3)


def test_registry():
    assert set(ESTIMATORS) >= {"knn", "linear", "mlp", "mf", "default"}
    assert estimator_class("default") is not None
    with pytest.raises(ValueError, match="unknown estimator"):
        make_estimator("nope")


def test_cost_estimator_prices_and_fallbacks():
    table = make_synthetic_table(160, seed=4)
    ce = CostEstimator().fit(table)
    assert set(ce.modes.values()) == {"price"}
    C = ce.predict(table.prompts)
    true = table.cost_matrix()
    # expensive models are predicted expensive; the mean is close to the observed one
    assert np.all(np.argsort(C.mean(0)) == np.argsort(true.mean(0)))
    np.testing.assert_allclose(C.mean(0), true.mean(0), rtol=0.35)
    # feature-based token models are at least as good per prompt
    X = _features(table)
    ce2 = CostEstimator().fit(table, X)
    C2 = ce2.predict(table.prompts, X)
    assert np.abs(C2 - true).mean() <= np.abs(C - true).mean() * 1.05
    # without prices: observed costs; without anything: zero
    df = table.df.copy()
    from llmroute.data import RoutingTable

    no_price = CostEstimator().fit(RoutingTable(df, prices=None))
    assert set(no_price.modes.values()) == {"observed"}
    np.testing.assert_allclose(no_price.predict(table.prompts).mean(0), true.mean(0), rtol=0.35)
    bare = CostEstimator().fit(
        RoutingTable(df.drop(columns=["cost_usd", "input_tokens", "output_tokens"]), prices=None)
    )
    assert set(bare.modes.values()) == {"zero"}
    assert np.all(bare.predict(["hello there"]) == 0)
    # state round trip
    arrays, params = ce2.get_state()
    back = CostEstimator.from_state(arrays, params)
    np.testing.assert_allclose(back.predict(table.prompts, X), C2)


def test_cost_token_count_from_text():
    table = make_synthetic_table(80, seed=5)
    ce = CostEstimator().fit(table)
    tin = table.matrix("input_tokens")[:, 0]
    est = ce.count_tokens(table.prompts)
    assert np.median(np.abs(est - tin) / tin) < 0.2
    assert ce.count_tokens([""])[0] == 0


def test_cost_estimate_stays_finite_on_out_of_range_prompts():
    """A prompt far outside the training range (one huge 'word', a huge text) gets a large but
    finite cost: the log-token models are capped, never overflow to inf."""
    table = make_synthetic_table(160, seed=4)
    X = _features(table)
    ce = CostEstimator().fit(table, X)
    odd = ["x" * 5000, "word " * 200_000, "é" * 20_000]
    Xo = Features(hash_embed(odd), np.full((len(odd), 2), 1e4, dtype=np.float32))  # far off-range
    for C in (ce.predict(odd, Xo), ce.predict(odd), ce.predict_tokens(np.array([1e12]))):
        assert np.isfinite(C).all() and (C >= 0).all()


def test_shipped_router_cost_finite_for_one_huge_word():
    from llmroute import Router
    from llmroute.router import default_router_path

    d = Router.load(default_router_path()).route("x" * 5000)
    assert all(np.isfinite(v) for v in d.expected_cost.values())
