"""The shipped default router: loads fast, routes sensibly, holds weights only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmroute.router import Router, default_router_path

PATH = default_router_path()  # shipped in src/llmroute/assets


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load(PATH)


def test_artifact_is_small_and_weights_only():
    from safetensors import safe_open

    assert PATH.stat().st_size < 5 * 1024 * 1024
    with safe_open(str(PATH), framework="numpy") as f:
        meta = json.loads(f.metadata()["llmroute"])
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    assert meta["estimator"]["class"].split(":")[0] != "llmroute.estimators.knn"
    n = meta["info"]["n_prompts"]
    assert n > 1000
    # no array has one row per training prompt (no memory of prompts/outcomes)
    assert all(not s or s[0] < 1000 for s in shapes.values()), shapes
    assert (PATH.parent / "default-router.NOTICE").exists()


def test_routes_and_respects_policy(router):
    prompts = [
        "What is the capital of France?",
        "Prove that there are infinitely many primes.",
        "Write a Python function that parses an ISO 8601 date and handles time zones.",
    ]
    q, c = router.estimate(prompts)
    assert q.shape == c.shape == (3, len(router.models))
    assert np.all((q >= 0) & (q <= 1)) and np.all(c >= 0)
    cheapest = router.route(prompts[0], tradeoff=math.inf)
    assert cheapest.expected_cost[cheapest.model] == pytest.approx(min(cheapest.expected_cost.values()))
    best = router.route(prompts[1], tradeoff=0.0)
    assert best.expected_quality[best.model] == pytest.approx(max(best.expected_quality.values()))
    d = router.route([{"role": "user", "content": prompts[2]}])
    assert d.model in router.models and d.reason
    # the default policy is a trade-off that is cheaper on average than always-best
    ds = router.route_batch(prompts * 5)
    assert (
        np.mean([x.expected_cost[x.model] for x in ds])
        <= np.mean(
            [
                x.expected_cost[router.route(p, tradeoff=0.0).model]
                for x, p in zip(ds, prompts * 5, strict=True)
            ]
        )
        + 1e-12
    )
