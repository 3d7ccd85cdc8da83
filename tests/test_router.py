"""Router pipeline: fit, policies, messages, save/load round trip, bad input."""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from llmroute.data import SYNTHETIC_PRICES, ModelPrice, make_synthetic_table, true_best
from llmroute.router import Decision, Router, RouterFileError, default_router_path, messages_text

_WORD = re.compile(r"[a-z0-9]+")


class HashEncoder:
    """Bag of words (4+ letters) hashed into `dim` buckets; a stand-in Encoder for tests."""

    name = "test-hash"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in _WORD.findall(t.lower()):
                if len(w) >= 4 and not w.isdigit():
                    out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def spec(self) -> dict:
        return {"name": self.name, "dim": self.dim}


ENC = HashEncoder()


@pytest.fixture(scope="module")
def data():
    return make_synthetic_table(240, seed=1), make_synthetic_table(80, seed=2)


@pytest.fixture(scope="module", params=["linear", "knn", "mf"])
def router(request, data):
    train, _ = data
    return Router.fit(train, estimator=request.param, encoder=ENC, seed=0)


def test_estimate_shapes_and_best_model(router, data):
    _, test = data
    q, c = router.estimate(test.prompts)
    assert q.shape == c.shape == (test.n_prompts, 4)
    assert router.models == test.models
    assert np.all((q >= 0) & (q <= 1)) and np.all(c >= 0)
    decisions = router.route_batch(test.prompts, tradeoff=0.0)
    acc = np.mean([d.model == t for d, t in zip(decisions, true_best(test), strict=True)])
    assert acc >= 0.8


def test_estimate_quality_is_the_quality_of_estimate(router, data):
    _, test = data
    q, _ = router.estimate(test.prompts[:12])
    np.testing.assert_array_equal(router.estimate_quality(test.prompts[:12]), q)
    np.testing.assert_array_equal(router.estimate_quality(test.prompts[:1]), q[:1])


def test_estimate_quality_of_the_shipped_router_with_its_regime_head():
    r = Router.load(default_router_path())
    texts = ["hello", "Prove that sqrt(2) is irrational.", "Write a SQL query that joins two tables."]
    np.testing.assert_array_equal(r.estimate_quality(texts), r.estimate(texts)[0])
    r.blas_single_thread = True  # the gateway's setting: no per-call BLAS limit
    np.testing.assert_array_equal(r.estimate_quality(texts[:1]), r.estimate(texts[:1])[0])


def test_tradeoff_extremes_max_cost_and_min_quality(router, data):
    _, test = data
    prompts = test.prompts[:20]
    q, c = router.estimate(prompts)
    for i, d in enumerate(router.route_batch(prompts, tradeoff=0.0)):
        assert d.expected_quality[d.model] == pytest.approx(q[i].max())
    for i, d in enumerate(router.route_batch(prompts, tradeoff=math.inf)):
        assert d.expected_cost[d.model] == pytest.approx(c[i].min())
        assert d.model == "tiny-1b"
    budget = float(np.median(c))
    for i, d in enumerate(router.route_batch(prompts, tradeoff=0.0, max_cost=budget)):
        within = c[i] <= budget
        if within.any():
            assert d.expected_cost[d.model] <= budget
            assert d.expected_quality[d.model] == pytest.approx(q[i][within].max())
            assert all(d.expected_cost[m] <= budget for m in d.ranked)
    for i, d in enumerate(router.route_batch(prompts, min_quality=0.7)):
        ok = q[i] >= 0.7
        if ok.any():
            assert d.expected_cost[d.model] == pytest.approx(c[i][ok].min())
        else:
            assert d.expected_quality[d.model] == pytest.approx(q[i].max())


def test_decision_fields(router):
    d = router.route("What is the capital of Norway? One word, please.", tradeoff=0.0)
    assert isinstance(d, Decision)
    assert d.ranked[0] == d.model and sorted(d.ranked) == sorted(router.models)
    assert d.model in d.reason and "q=" in d.reason and "c=$" in d.reason
    assert router.route("What is the capital of Norway?", tradeoff=10.0).reason.isascii()  # HTTP-header safe
    js = json.dumps(d.to_dict())
    assert json.loads(js)["model"] == d.model
    cheap = router.route("What is the capital of Norway?", tradeoff=math.inf)
    assert json.loads(json.dumps(cheap.to_dict()))["policy"]["tradeoff"] == "inf"


def test_allowed_and_context_windows(router):
    p = "Write a C function that checks whether a string is a palindrome."
    d = router.route(p, tradeoff=0.0, allowed=["tiny-1b", "math-7b"])
    assert d.model in {"tiny-1b", "math-7b"} and set(d.ranked) == {"tiny-1b", "math-7b"}
    d = router.route(p, tradeoff=0.0, context_windows={"code-13b": 2, "big-70b": 2})
    assert d.model not in {"code-13b", "big-70b"}
    with pytest.raises(ValueError, match="unknown model"):
        router.route(p, allowed=["gpt-9"])
    with pytest.raises(ValueError):
        router.route(p, allowed=[])


def test_messages_input_reads_whole_conversation(router):
    msgs = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Write a Python function that reverses a linked list."},
        {"role": "assistant", "content": "Sure."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Also add unit tests."}, {"type": "image_url"}],
        },
    ]
    text = messages_text(msgs)
    assert "reverses a linked list" in text and "unit tests" in text and "helpful" in text
    assert messages_text([{"role": "user", "content": "hi"}]) == "hi"
    d1 = router.route(msgs, tradeoff=0.0)
    d2 = router.route(text, tradeoff=0.0)
    assert d1.model == d2.model and d1.expected_quality == d2.expected_quality
    with pytest.raises(TypeError):
        router.route({"role": "user", "content": "x"})


def test_bad_input(router):
    with pytest.raises(ValueError, match="empty prompt list"):
        router.estimate([])
    with pytest.raises(ValueError, match="empty prompt list"):
        router.route_batch([])
    with pytest.raises(TypeError):
        router.estimate("a single string")
    with pytest.raises(ValueError):
        router.route("x", tradeoff=-1.0)


def test_save_load_round_trip_identical(router, data, tmp_path):
    _, test = data
    router.set_policy(max_cost=None)
    path = router.save(tmp_path / "r.safetensors")
    back = Router.load(path, encoder=ENC)
    assert back.models == router.models and back.policy == router.policy
    for lam in (0.0, 1e3, math.inf):
        a = [d.to_dict() for d in router.route_batch(test.prompts, tradeoff=lam)]
        b = [d.to_dict() for d in back.route_batch(test.prompts, tradeoff=lam)]
        assert a == b
    q1, c1 = router.estimate(test.prompts)
    q2, c2 = back.estimate(test.prompts)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(c1, c2)
    # the file is safetensors with JSON metadata and no pickle
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["llmroute"])
    assert meta["format"] == "llmroute-router" and meta["version"] == 1
    assert meta["models"] == router.models and meta["encoder"] == ENC.spec()
    assert b"pickle" not in path.read_bytes()[:200]


def test_load_errors(tmp_path, router):
    with pytest.raises(RouterFileError, match="not found"):
        Router.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a router")
    with pytest.raises(RouterFileError):
        Router.load(bad)
    path = router.save(tmp_path / "r.safetensors")
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["llmroute"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["version"] = 9
    save_file(arrays, str(tmp_path / "v9.safetensors"), metadata={"llmroute": json.dumps(meta)})
    with pytest.raises(RouterFileError, match="version"):
        Router.load(tmp_path / "v9.safetensors", encoder=ENC)


def test_calibrated_threshold_hits_share(data):
    train, test = data
    r = Router.fit(train, estimator="linear", encoder=ENC, seed=0)
    r.set_policy(strong="big-70b", weak="tiny-1b")
    thr = r.calibrate(test.prompts, strong_share=0.25)
    assert r.policy["threshold"] == thr
    picks = [d.model for d in r.route_batch(test.prompts)]
    share = np.mean([m == "big-70b" for m in picks])
    assert set(picks) <= {"big-70b", "tiny-1b"}
    assert abs(share - 0.25) <= 0.05
    scores = r.strong_weak_score(test.prompts)
    assert scores.shape == (test.n_prompts,)
    # an explicit trade-off overrides the threshold rule
    assert r.route(test.prompts[0], tradeoff=math.inf).model == "tiny-1b"


def test_fitted_policy_defaults_and_prices(data):
    train, test = data
    r = Router.fit(train, estimator="linear", encoder=ENC, seed=0)
    assert r.policy["strong"] in r.models and r.policy["weak"] in r.models
    assert r.policy["tradeoff"] >= 0
    d = r.route(test.prompts[0])
    assert d.policy["tradeoff"] == r.policy["tradeoff"]
    assert r.info["n_prompts"] == train.n_prompts
    before = r.estimate(test.prompts[:5])[1]
    r.set_prices({"big-70b": ModelPrice(SYNTHETIC_PRICES["big-70b"].input_per_mtok * 10, 150.0)})
    after = r.estimate(test.prompts[:5])[1]
    assert np.all(after[:, 0] > before[:, 0] * 5) and np.allclose(after[:, 1:], before[:, 1:])
    with pytest.raises(ValueError):
        r.set_prices({"gpt-9": ModelPrice(1, 1)})


def test_default_router_path():
    p = default_router_path()
    assert p.name == "default-router.safetensors" and p.parent.name == "assets"


@pytest.mark.parametrize("encoder", ["tfidf", "static-minilm"])
def test_round_trip_with_project_encoders(encoder, data, tmp_path):
    """Fit with a real encoder spec; load without help (encoder rebuilt from spec + state)."""
    train, test = data
    r = Router.fit(train, estimator="mf", encoder=encoder, seed=0)
    back = Router.load(r.save(tmp_path / "r.safetensors"))
    assert type(back.encoder).__name__ == type(r.encoder).__name__
    a = [d.to_dict() for d in r.route_batch(test.prompts)]
    b = [d.to_dict() for d in back.route_batch(test.prompts)]
    assert a == b
    acc = np.mean(
        [
            d.model == t
            for d, t in zip(r.route_batch(test.prompts, tradeoff=0.0), true_best(test), strict=True)
        ]
    )
    assert acc >= 0.6


def test_route_batch_with_workers_gives_identical_decisions() -> None:
    """Forked batch workers estimate chunks; the decisions match the single-process ones (values
    agree to float rounding: BLAS sums in a different order for other chunk sizes)."""
    from llmroute.data import make_synthetic_table
    from llmroute.router import Router

    table = make_synthetic_table(n_prompts=200, seed=3)
    router = Router.fit(table, estimator="linear", encoder="static-minilm")
    prompts = [f"{p} (copy {i})" for i in range(6) for p in table.prompts][:1200]
    one = router.route_batch(prompts, tradeoff=50)
    two = router.route_batch(prompts, tradeoff=50, workers=2)
    assert [d.model for d in one] == [d.model for d in two]
    for a, b in zip(one, two, strict=True):
        assert a.expected_quality == pytest.approx(b.expected_quality, rel=1e-6, abs=1e-9)
        assert a.expected_cost == pytest.approx(b.expected_cost, rel=1e-6, abs=1e-12)
