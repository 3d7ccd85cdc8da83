"""The online learner decides a micro-batch of requests in one vectorised step (issue 13: the
learning-on routed path): `OnlineLearner.context_batch` / `prepare` / `pick_many` make the same
choices, with the same random stream and the same propensities up to rounding, as `choose` one
request at a time; the logged propensity is the empirical pick frequency; and in the gateway
(`Learning.decide_batch`, the routing engine's batch listener) a micro-batch decides exactly as
the same requests one at a time, on both the vectorised (>= 16 requests) and the per-request
path."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import StubRouter, loopback_config
from llmroute.gateway.learning import _VECTOR_MIN
from llmroute.online import OnlineLearner
from online_fixtures import moved_learner


@pytest.mark.parametrize("method", ["thompson", "linucb", "greedy"])
@pytest.mark.parametrize("confidence", [0.0, 1.0])
@pytest.mark.parametrize(("m", "explore_loss"), [(2, 0.0), (2, 0.002), (3, 0.0), (3, 0.002)])
@pytest.mark.parametrize("explore_decay", [0.0, 15.0])  # 15: 60 outcomes learned, exploration halved
def test_pick_many_is_choose_one_at_a_time(
    method: str, confidence: float, m: int, explore_loss: float, explore_decay: float
) -> None:
    models = [f"m{i}" for i in range(m)]
    kw = {"method": method, "max_explore": 0.4, "confidence": confidence, "explore_loss": explore_loss}
    kw["explore_decay"] = explore_decay
    one, batch = moved_learner(models, **kw), moved_learner(models, **kw)
    data = np.random.default_rng(11)
    B = 200
    E = data.standard_normal((B, 16)).astype(np.float32)
    Q = data.uniform(0.4, 0.7, (B, m))
    C = data.uniform(0.0, 0.01, (B, m))
    Q[::7, 0] = np.nan  # a model without a profile
    lam = data.choice([0.0, 5.0, 20.0], B)
    masks = data.random((B, m)) < 0.8
    masks[np.arange(B), data.integers(m, size=B)] = True
    masks[::2] = True  # half the rows allow every model
    X = batch.context_batch(E)
    fills = [batch._fill_list(Q[i], C[i]) for i in range(B)]
    tx, xax, axk = batch.prepare(X)
    ch, g, probs = batch.pick_many(
        np.array([f[0] for f in fills]), np.array([f[1] for f in fills]), lam, masks, tx, xax, axk
    )
    explored = 0
    for i in range(B):
        c1 = one.choose(E[i], Q[i], C[i], tradeoff=float(lam[i]), candidates=masks[i], context=X[i])
        assert (int(ch[i]), int(g[i])) == (c1.index, models.index(c1.greedy)), i
        np.testing.assert_allclose(probs[i], c1.propensities, rtol=0, atol=1e-12)
        explored += c1.explored
    assert one.rng.random() == batch.rng.random()  # the same uniforms, one per random choice
    if method == "thompson":
        assert explored > 0  # the comparison covered exploring choices


@pytest.mark.parametrize(("max_explore", "explore_loss"), [(1.0, 0.0), (0.1, 0.0), (1.0, 0.002)])
def test_pick_many_propensity_is_the_pick_frequency(max_explore: float, explore_loss: float) -> None:
    """One context repeated over a batch: every row logs the same probabilities, and the models
    are picked as often as they say."""
    L = OnlineLearner(
        ["a", "b"], 8, max_explore=max_explore, prior_var=0.05, seed=4, explore_loss=explore_loss
    )
    n = 5_000
    X = np.repeat(L.context_batch(np.linspace(-1.0, 1.0, 8)[None]), n, axis=0)
    tx, xax, axk = L.prepare(X)
    ch, _, probs = L.pick_many(
        np.tile([0.55, 0.5], (n, 1)), np.zeros((n, 2)), np.zeros(n), None, tx, xax, axk
    )
    np.testing.assert_array_equal(probs, np.repeat(probs[:1], n, axis=0))
    assert probs[0].min() > 0.02  # not trivial: both models are picked
    counts = np.bincount(ch, minlength=2)
    np.testing.assert_allclose(counts / n, probs[0], atol=4 * np.sqrt(0.25 / n))


class _EmbeddingStub(StubRouter):
    """The stub router with a prompt embedding (a fixed vector per text), which the learner's
    context is made from."""

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(12))
        return np.asarray(rows, dtype=np.float32)


def _gateway(tmp_path: Path) -> Any:
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import parse_config

    cfg = loopback_config("http://127.0.0.1:9/v1", tmp_path)
    # max_explore 1, no loss budget: Thompson's own probabilities, far from 0 and 1
    cfg["aliases"]["llmroute/auto"]["learning"] = {"enabled": True, "max_explore": 1.0, "explore_loss": 0.0}
    cfg["aliases"]["llmroute/auto"]["tradeoff"] = 0.0
    return Gateway(parse_config(cfg), routers={"default": _EmbeddingStub()})


def _contexts(n: int) -> list[Any]:
    from llmroute.gateway.routing import RequestContext

    return [
        RequestContext(
            request_id=f"r{i}",
            requested="llmroute/auto",
            messages=[{"role": "user", "content": f"question {i} " + "word " * (i % 40)}],
            body={},
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [_VECTOR_MIN + 24, _VECTOR_MIN - 10])
def test_gateway_micro_batch_decides_as_one_at_a_time(tmp_path: Path, n: int) -> None:
    """The same requests through the routing engine, all in one micro-batch (the learner's
    batch listener decides them together) and one at a time (a batch of one each), with the
    same seed: the same models, propensities and trace features."""
    ctxs = _contexts(n)

    async def together() -> list[Any]:
        gw = _gateway(tmp_path / "a")
        ds = await asyncio.gather(*(gw.engine.decide(c) for c in ctxs))
        for c, d in zip(ctxs, ds, strict=True):
            gw.learning.decide(c, d)  # what the request path calls: already decided, unchanged
        return ds

    async def one_by_one() -> list[Any]:
        gw = _gateway(tmp_path / "b")
        out = []
        for c in ctxs:
            d = await gw.engine.decide(c)
            gw.learning.decide(c, d)
            out.append(d)
        return out

    a, b = asyncio.run(together()), asyncio.run(one_by_one())
    assert [d.model for d in a] == [d.model for d in b]
    pa = np.array([d.learning["propensity"] for d in a])
    np.testing.assert_allclose(pa, [d.learning["propensity"] for d in b], rtol=0, atol=1e-12)
    assert ((pa > 0.05) & (pa < 0.95)).sum() >= n // 3  # random choices, not certainties
    assert len({d.model for d in a}) == 2
    for da, db in zip(a, b, strict=True):
        assert da.learning["explored"] == db.learning["explored"]
        fa, fb = da.learning["features"], db.learning["features"]
        assert fa["x"] == fb["x"]  # the same float32 context, encoded
        assert (fa["q0"], fa["c0"], fa["greedy"]) == (fb["q0"], fb["c0"], fb["greedy"])
        assert da.reason == db.reason and da.reason.count("learner=") == 1


def test_gateway_logged_propensity_is_the_pick_frequency(tmp_path: Path) -> None:
    """One prompt decided many times in micro-batches: the logged propensity of each model is
    how often the gateway served it."""
    from llmroute.gateway.routing import RequestContext

    gw = _gateway(tmp_path)
    ctx = _contexts(1)[0]
    base = gw.engine.route(ctx)
    n, counts, props = 4_000, {"fake-strong": 0, "fake-weak": 0}, {}
    for k in range(0, n, 32):
        pairs = []
        for i in range(32):
            c = RequestContext(
                request_id=f"r{k + i}", requested=ctx.requested, messages=ctx.messages, body={}
            )
            d = gw.engine.route(c)
            pairs.append((c, d))
        gw.learning.decide_batch(pairs)
        for _, d in pairs:
            counts[d.model] += 1
            props.setdefault(d.model, d.learning["propensity"])
            assert d.learning["propensity"] == props[d.model]  # one context: one distribution
    assert base.learning is None and set(props) == {"fake-strong", "fake-weak"}
    assert props["fake-strong"] + props["fake-weak"] == pytest.approx(1.0)
    for m, p in props.items():
        assert counts[m] / n == pytest.approx(p, abs=4 * np.sqrt(0.25 / n))


def test_a_failing_batch_listener_does_not_fail_the_requests(tmp_path: Path) -> None:
    """A listener that raises is logged; the batch's requests still get their decisions (and a
    request whose own decision fails gets its own error only)."""
    gw = _gateway(tmp_path)
    calls: list[int] = []

    def broken(pairs: list[Any]) -> None:
        calls.append(len(pairs))
        raise RuntimeError("listener bug")

    gw.engine.batch_listeners.insert(0, broken)
    ctxs = _contexts(5)
    ctxs[2].allowed = ["no-such-model"]  # its own decision fails: 403, no candidate allowed

    async def run() -> list[Any]:
        coros = (gw.engine.decide(c) for c in ctxs)
        return await asyncio.wait_for(asyncio.gather(*coros, return_exceptions=True), 60)

    out = asyncio.run(run())
    assert calls == [4]  # one batch, without the failed request
    assert getattr(out[2], "status", None) == 403
    for i in (0, 1, 3, 4):
        assert out[i].model in ("fake-strong", "fake-weak")
        assert out[i].learning is not None  # the learner's listener still ran
