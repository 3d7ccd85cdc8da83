"""The default estimator (stacked kNN + ridge) and the hand-made prompt features.

Synthetic data built here: prompts live in clusters, model j is good on cluster j only, so the
best model per prompt is known by construction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmroute.estimators import make_estimator
from llmroute.estimators.base import Features
from llmroute.estimators.default import DefaultEstimator, _ridge_gcv
from llmroute.estimators.features import FEATURE_NAMES, prompt_features, text_of


def _clusters(n: int, m: int = 3, dim: int = 24, seed: int = 0, missing: float = 0.0):
    """(Features, Q, best): n prompts around m centres; model j is right 90% on cluster j, 25% elsewhere."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((m, dim))
    lab = rng.integers(0, m, n)
    emb = centres[lab] + 0.6 * rng.standard_normal((n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    p = np.where(np.arange(m)[None, :] == lab[:, None], 0.9, 0.25)
    Q = (rng.random((n, m)) < p).astype(float)
    if missing:
        Q[rng.random((n, m)) < missing] = np.nan
    extra = rng.standard_normal((n, 2)).astype(np.float32)
    return Features(emb.astype(np.float32), extra), Q, lab


def test_learns_the_best_model_per_prompt() -> None:
    Xtr, Qtr, _ = _clusters(400, seed=1, missing=0.1)
    Xte, _, best = _clusters(200, seed=2)
    est = DefaultEstimator().fit(Xtr, Qtr)
    q = est.predict(Xte)
    assert q.shape == (200, 3)
    assert np.all((q >= 0) & (q <= 1))
    assert (q.argmax(axis=1) == best).mean() >= 0.95
    # calibrated-ish: the winner's expected quality near 0.9, the others well below
    rows = np.arange(200)
    assert abs(q[rows, best].mean() - 0.9) < 0.1
    others = np.where(np.arange(3)[None, :] != best[:, None], q, np.nan)
    assert np.nanmean(others) < 0.45


def test_beats_the_column_means_out_of_sample() -> None:
    Xtr, Qtr, _ = _clusters(300, seed=3)
    Xte, Qte, _ = _clusters(300, seed=4)
    q = DefaultEstimator().fit(Xtr, Qtr).predict(Xte)
    mse = np.mean((q - Qte) ** 2)
    mse_mean = np.mean((np.nanmean(Qtr, axis=0)[None, :] - Qte) ** 2)
    assert mse < 0.85 * mse_mean


@pytest.mark.parametrize(
    "params",
    [{}, {"logistic": True, "neighbours": (5, 20)}, {"expert_sizes": (50,), "stack_clusters": 2}],
)
def test_state_round_trip_gives_identical_predictions(params: dict) -> None:
    Xtr, Qtr, _ = _clusters(200, seed=5, missing=0.05)
    Xte, _, _ = _clusters(50, seed=6)
    est = DefaultEstimator(**params).fit(Xtr, Qtr)
    arrays, params = est.get_state()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    params = json.loads(json.dumps(params))  # JSON-able, no pickle
    again = DefaultEstimator.from_state({k: v.copy() for k, v in arrays.items()}, params)
    np.testing.assert_array_equal(est.predict(Xte), again.predict(Xte))


def test_deterministic_given_seed() -> None:
    Xtr, Qtr, _ = _clusters(150, seed=7)
    Xte, _, _ = _clusters(40, seed=8)
    a = DefaultEstimator(seed=3).fit(Xtr, Qtr).predict(Xte)
    b = DefaultEstimator(seed=3).fit(Xtr, Qtr).predict(Xte)
    np.testing.assert_array_equal(a, b)


def test_small_and_featureless_inputs() -> None:
    X, Q, _ = _clusters(12, seed=9)
    X = Features(X.emb, None)  # no hand-made columns
    q = DefaultEstimator().fit(X, Q).predict(X.take(np.arange(3)))
    assert q.shape == (3, 3)
    assert np.isfinite(q).all()


def test_rejects_bad_quality() -> None:
    X, Q, _ = _clusters(20, seed=10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DefaultEstimator().fit(X, Q * 2)


def test_registry_builds_the_default() -> None:
    est = make_estimator("default")
    assert isinstance(est, DefaultEstimator)
    assert est.name == "default"


def test_ridge_gcv_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((500, 5))
    W = rng.standard_normal((5, 2))
    Y = A @ W + 0.3 + 0.01 * rng.standard_normal((500, 2))
    W_hat, b_hat, alpha = _ridge_gcv(A, Y)
    np.testing.assert_allclose(W_hat, W, atol=0.02)
    np.testing.assert_allclose(b_hat, [0.3, 0.3], atol=0.02)
    assert alpha <= 1.0


# ---- hand-made features -------------------------------------------------------------------
def test_prompt_features_shape_and_signals() -> None:
    texts = [
        "",
        "What is 12 + 30?",
        "def add(a, b):\n    return a + b\n",
        "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:",
        "请解释一下量子力学的基本原理。",
        "Write a short poem about the sea.",
    ]
    F = prompt_features(texts)
    assert F.shape == (len(texts), len(FEATURE_NAMES))
    assert F.dtype == np.float32
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    assert np.all(F[0] == 0)
    assert F[1, col["digit_frac"]] > 0 and F[1, col["ends_with_question"]] == 1
    assert F[2, col["code_markers"]] > F[1, col["code_markers"]]
    assert F[3, col["mc_options"]] > 0 and F[3, col["qa_blocks"]] > 0
    assert F[4, col["cjk_frac"]] > 0.5 and F[4, col["non_ascii_frac"]] > 0.5
    assert F[5, col["generative_verbs"]] > 0
    assert np.isfinite(F).all()


def test_prompt_features_of_long_text_are_bounded() -> None:
    F = prompt_features(["word " * 100_000])
    assert np.isfinite(F).all()
    assert F[0, 0] == pytest.approx(np.log1p(500_000), rel=1e-5)


def test_text_of_chat_messages() -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": "Hi"},
    ]
    assert text_of(msgs) == "Be brief.\nHello"
    assert text_of("plain") == "plain"
    np.testing.assert_array_equal(prompt_features([msgs]), prompt_features(["Be brief.\nHello"]))


def test_empty_batch_and_unobserved_model() -> None:
    X, Q, _ = _clusters(100, seed=11)
    Q[:, 1] = np.nan  # a model with no outcomes at all
    est = DefaultEstimator().fit(X, Q)
    assert est.predict(X.take(np.arange(0))).shape == (0, 3)
    q = est.predict(X.take(np.arange(5)))
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q[:, 1], 0.5, atol=0.05)  # falls back to the neutral prior
