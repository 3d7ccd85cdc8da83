"""The learner's per-request path for small micro-batches (issue 13): `prepare_embeddings` gives
the contexts and posterior parts of `prepare(context_batch(E))` after fewer numpy calls, also
right after an update (its copy of the factors is rebuilt), and the router hands the learner the
embeddings of its last micro-batch (`Router.batch_embeddings`) without encoding again."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from llmroute.online.learner import OnlineLearner
from llmroute.router import Router


def _learner(models: int, rng: np.random.Generator) -> OnlineLearner:
    lr = OnlineLearner([f"m{j}" for j in range(models)], 16, dim=8, max_explore=0.2)
    for _ in range(40):  # a posterior away from the prior: every term of x' A x matters
        x = lr.context_batch(rng.standard_normal((1, 16)))[0]
        x[-2] = rng.random() - 0.5
        lr.observe(x, int(rng.integers(models)), float(rng.standard_normal() * 0.3), 0.001)
    return lr


def _check(lr: OnlineLearner, E: np.ndarray) -> None:
    X = lr.context_batch(E)
    tx, xax, axk = lr.prepare(X)
    X32, tx2, xax2, axk2 = lr.prepare_embeddings(E)
    assert X32.dtype == np.float32
    np.testing.assert_array_equal(X32, X.astype(np.float32))
    for a, b in ((tx, tx2), (xax, xax2), (axk, axk2)):
        np.testing.assert_allclose(np.array(b), a, rtol=0, atol=1e-13)


@pytest.mark.parametrize("models", [2, 3])
def test_prepare_embeddings_is_prepare_of_the_contexts(models: int) -> None:
    rng = np.random.default_rng(models)
    lr = _learner(models, rng)
    E = rng.standard_normal((5, 16)).astype(np.float32)
    E[2] = 0.0  # a zero embedding: context [0, ..., 0, 0, 1]
    _check(lr, E)
    _check(lr, E[:1])
    # an outcome changes one model's factors in place: the next call sees it
    before = lr.prepare_embeddings(E)[2]
    lr.observe(lr.context_batch(E[:1])[0], 1, 0.5, None)
    assert lr.prepare_embeddings(E)[2] != before
    _check(lr, E)
    lr.add_model("new")  # a new stack of factors
    _check(lr, E)


def test_router_batch_embeddings_reuses_the_last_batch() -> None:
    encoded: list[str] = []

    def single(texts: list[str]) -> np.ndarray:
        encoded.extend(texts)
        return np.full((1, 3), float(len(texts[0])), dtype=np.float32)

    emb = np.arange(9, dtype=np.float32).reshape(3, 3)
    r = SimpleNamespace(last_batch=(["a", "bb", "ccc"], emb), _embed=single)
    assert Router.batch_embeddings(r, ["a", "bb", "ccc"]) is emb  # the batch itself: no copy
    np.testing.assert_array_equal(Router.batch_embeddings(r, ["ccc", "a"]), emb[[2, 0]])
    assert encoded == []
    out = Router.batch_embeddings(r, ["a", "dddd"])  # a text not in the batch: encoded alone
    np.testing.assert_array_equal(out, [[1.0] * 3, [4.0] * 3])
    assert encoded == ["a", "dddd"]
    r.last_batch = None
    np.testing.assert_array_equal(Router.batch_embeddings(r, ["bb"]), [[2.0] * 3])
