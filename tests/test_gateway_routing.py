"""The gateway's routing core: the one-row policy equals `llmroute.policy.choose`, micro-batched
estimates equal one-by-one estimates, hooks run first, and aliases map onto router columns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import StubRouter, loopback_config
from llmroute.gateway.auth import GatewayError
from llmroute.gateway.config import parse_config
from llmroute.gateway.routing import (
    RequestContext,
    RouteDecision,
    RoutingEngine,
    choose_one,
    conversation_text,
)
from llmroute.policy import choose

finite_or_nan = st.one_of(st.floats(0, 1), st.just(float("nan")))


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda m: st.tuples(
            st.lists(finite_or_nan, min_size=m, max_size=m),
            st.lists(
                st.one_of(st.sampled_from([1e-5, 1e-4, 1e-3]), st.just(float("nan"))), min_size=m, max_size=m
            ),
            st.lists(st.booleans(), min_size=m, max_size=m),
        )
    ),
    st.sampled_from([0.0, 10.0, 1000.0, float("inf")]),
    st.one_of(st.none(), st.sampled_from([1e-6, 1e-4, 1e-2])),
    st.one_of(st.none(), st.sampled_from([0.3, 0.7, 0.99])),
)
def test_choose_one_matches_policy_choose(
    rows: Any, tradeoff: float, max_cost: float | None, min_quality: float | None
) -> None:
    q, c, ok = rows
    kw = {"tradeoff": tradeoff, "max_cost": max_cost, "min_quality": min_quality}
    want = int(choose(np.array([q]), np.array([c]), mask=np.array([ok]), **kw)[0])
    assert choose_one(list(q), list(c), list(ok), **kw) == want


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda m: st.tuples(
            st.lists(st.sampled_from([0.2, 0.5, 0.5 + 1e-13, 0.9]) | st.floats(0, 1), min_size=m, max_size=m),
            st.lists(st.sampled_from([1e-5, 1e-4, 1e-3, 0.0]), min_size=m, max_size=m),
        )
    ),
    st.sampled_from([0.0, 10.0, 1000.0, 1e300]),
)
def test_choose_one_usual_row_matches_policy_choose(rows: Any, tradeoff: float) -> None:
    """The fast path (finite estimates, every model allowed, no limits), ties included."""
    q, c = rows
    want = int(choose(np.array([q]), np.array([c]), tradeoff=tradeoff)[0])
    assert choose_one(list(q), list(c), [True] * len(q), tradeoff=tradeoff) == want


class CountingRouter(StubRouter):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(prompts))
        return super().estimate(prompts)


def _engine(router: Any, batch: int) -> RoutingEngine:
    cfg = parse_config(loopback_config("http://127.0.0.1:9/v1", "/tmp"))
    return RoutingEngine(cfg, {"default": router}, batch_size=batch)


def _ctx(text: str, model: str = "llmroute/auto") -> RequestContext:
    return RequestContext(
        request_id="r", requested=model, messages=[{"role": "user", "content": text}], body={}
    )


def test_batched_estimates_equal_single_ones() -> None:
    texts = [f"prompt {'x' * (i * 9)}" for i in range(20)]
    single = _engine(StubRouter(), 1)
    want = [single.route(_ctx(t)) for t in texts]
    router = CountingRouter()
    eng = _engine(router, 8)

    async def main() -> list[RouteDecision]:
        return await asyncio.gather(*(eng.decide(_ctx(t)) for t in texts))

    got = asyncio.run(main())
    assert [d.model for d in got] == [d.model for d in want]
    assert [d.ranked for d in got] == [d.ranked for d in want]
    for a, b in zip(got, want, strict=True):
        assert a.expected_quality == pytest.approx(b.expected_quality)
        assert a.expected_cost == pytest.approx(b.expected_cost)
    assert router.calls == [8, 8, 4]  # 20 concurrent requests, batches of at most 8, every prompt estimated


def test_default_batch_takes_a_turn_of_32_connections_in_one_call() -> None:
    """server.route_batch defaults to 32: the requests of one event-loop turn (up to 32) share one
    router call (a flush computes every pending chunk in the same callback anyway, so a larger batch
    only saves the per-call cost)."""
    cfg = parse_config(loopback_config("http://127.0.0.1:9/v1", "/tmp"))
    assert cfg.server.route_batch == 32
    router = CountingRouter()
    eng = RoutingEngine(cfg, {"default": router})

    async def main() -> list[RouteDecision]:
        return await asyncio.gather(*(eng.decide(_ctx(f"prompt {i}")) for i in range(40)))

    asyncio.run(main())
    assert router.calls == [32, 8]


class QualityOnlyRouter(CountingRouter):
    """A router that can skip its cost model; `estimate` must not be needed when every candidate is priced."""

    def __init__(self) -> None:
        super().__init__()
        self.quality_calls: list[int] = []

    def estimate_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self.quality_calls.append(len(prompts))
        return StubRouter.estimate(self, prompts)[0]


@pytest.mark.parametrize("batch", [1, 8])
def test_priced_candidates_skip_the_router_cost_model(batch: int) -> None:
    """Every candidate of llmroute/auto has configured prices: the engine asks the router for quality
    only, and the decisions equal those made from the full estimate."""
    texts = [f"prompt {'x' * (i * 9)}" for i in range(10)]
    want = [_engine(StubRouter(), 1).route(_ctx(t)) for t in texts]
    router = QualityOnlyRouter()
    eng = _engine(router, batch)

    async def main() -> list[RouteDecision]:
        return await asyncio.gather(*(eng.decide(_ctx(t)) for t in texts))

    got = asyncio.run(main())
    assert router.calls == []
    assert sum(router.quality_calls) == len(texts)
    assert [d.ranked for d in got] == [d.ranked for d in want]
    for a, b in zip(got, want, strict=True):
        assert a.expected_quality == pytest.approx(b.expected_quality)
        assert a.expected_cost == pytest.approx(b.expected_cost)


def test_an_unpriced_candidate_uses_the_router_cost_model() -> None:
    cfg = loopback_config("http://127.0.0.1:9/v1", "/tmp")
    cfg["models"][1]["input_per_mtok"] = cfg["models"][1]["output_per_mtok"] = 0
    router = QualityOnlyRouter()
    eng = RoutingEngine(parse_config(cfg), {"default": router}, batch_size=1)
    d = eng.route(_ctx("hello there"))
    assert router.calls == [1] and router.quality_calls == []
    assert d.expected_cost["fake-weak"] == pytest.approx(1e-5)  # the router's cost column


def test_hooks_run_first_and_can_block_or_decide() -> None:
    eng = _engine(StubRouter(), 8)
    seen: list[str] = []

    async def pin(ctx: RequestContext, engine: RoutingEngine) -> RouteDecision | None:
        seen.append(ctx.text)
        if "pin" in ctx.text:
            return RouteDecision(model="fake-strong", ranked=["fake-strong"], reason="rule")
        if "block" in ctx.text:
            raise GatewayError(400, "blocked", code="blocked_by_rule")
        ctx.allowed = ["fake-strong"]
        return None

    eng.add_hook(pin)

    async def main() -> None:
        assert (await eng.decide(_ctx("pin me"))).reason == "rule"
        with pytest.raises(GatewayError):
            await eng.decide(_ctx("block me"))
        d = await eng.decide(_ctx("hi"))  # the stub prefers fake-weak for short prompts; the hook narrowed it
        assert d.model == "fake-strong" and d.ranked == ["fake-strong"]

    asyncio.run(main())
    assert seen == ["pin me", "block me", "hi"]


def test_unknown_and_direct_names_and_conversation_text() -> None:
    eng = _engine(StubRouter(), 1)
    assert eng.route(_ctx("x", "fake-weak")).reason == "direct"
    with pytest.raises(GatewayError) as e:
        eng.route(_ctx("x", "gpt-9"))
    assert e.value.status == 404 and e.value.param == "model"
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "U"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "T"},
    ]
    assert conversation_text(msgs) == "S\n\nU\n\nT"
    assert conversation_text([{"role": "user", "content": "only"}]) == "only"


def test_alias_needs_router_columns() -> None:
    cfg = loopback_config("http://127.0.0.1:9/v1", "/tmp")
    cfg["models"][0]["router_model"] = "not-a-column"
    with pytest.raises(ValueError, match="router_model"):
        RoutingEngine(parse_config(cfg), {"default": StubRouter()})
