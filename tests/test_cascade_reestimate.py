"""Cascade routing (issue 14 item 1): after a rejected answer the gateway re-estimates the models
not tried with the answer's evidence and calls the one with the largest gain - tradeoff x cost.

Fake models are right or wrong by construction: `re-cheap`, `re-mid` and `re-dud` refuse
chit-chat ("Sorry, I cannot help with that.", which the refusal check scores 0), `re-strong`
answers it. The router's priors are fixed (`PriorRouter`): cheap 0.6, mid 0.8, strong 0.95, dud
0.97; prices make `re-strong` cost 1.8x `re-mid`. With the trade-off set so that tradeoff x
cost(mid) = 0.25, the static ranking is cheap (reward ~0.60), mid (0.55), strong (0.50); after
cheap's refusal the prompt looks harder, which lowers mid's chance more than strong's: the
re-estimated nets are strong ~0.37 > mid ~0.33, so the cascade goes to strong directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import openai
import pytest

from conftest import FakeServer, GatewayHandle, run_gateway
from llmroute.cascade.reestimate import DifficultyReestimator, Evidence, choose_next, fit_max_score
from llmroute.gateway.auth import hash_key
from test_cascade_gateway import _record, _steps

KEY = "sk-test-reestimate-0123456789"
CHAT = "Hello! Could you say something nice to my colleague Bob? (#re)"
MATH = "Compute 12 + 5. Reply with the final number."
PRIORS = {"cheap": 0.6, "mid": 0.8, "strong": 0.95, "dud": 0.97}
SKILLS = {
    "re-cheap": {"math": 1.0, "code": 1.0, "chat": 0.0},
    "re-mid": {"math": 1.0, "code": 1.0, "chat": 0.0},
    "re-strong": {"math": 1.0, "code": 1.0, "chat": 1.0},
    "re-dud": {"math": 0.0, "code": 0.0, "chat": 0.0},
}
PRICE = {"re-cheap": 0.01, "re-mid": 1.0, "re-strong": 1.8, "re-dud": 1.0}  # $/Mtok, in = out
ALL = ["re-cheap", "re-mid", "re-strong"]


class PriorRouter:
    """A router whose quality estimates are the fixed `PRIORS` (costs come from the prices)."""

    def __init__(self) -> None:
        self.models = list(PRIORS)

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(prompts)
        q = np.tile([PRIORS[m] for m in self.models], (n, 1))
        return q, np.full((n, len(self.models)), 1e-6)


def _model(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": url,
        "input_per_mtok": PRICE[name],
        "output_per_mtok": PRICE[name],
        "timeout_s": 10.0,
        "router_model": name.removeprefix("re-"),
    }


def _config(url: str, tmp: Any) -> dict[str, Any]:
    return {
        "server": {"request_timeout_s": 60, "retries": 1, "backoff_s": 0.001, "breaker_failures": 1000},
        "models": [_model(m, url) for m in PRICE],
        "routers": {"default": "builtin:default"},
        "aliases": {
            # router-chosen first model, re-estimation by default
            "re/auto": {"candidates": ALL, "cascade": {"max_steps": 3}},
            "re/ranked": {"candidates": ALL, "cascade": {"max_steps": 3, "next": "ranked"}},
            "re/steps2": {
                "candidates": ["re-cheap", "re-dud", "re-strong"],
                "cascade": {
                    "models": ["re-cheap", "re-dud", "re-strong"],
                    "max_steps": 2,
                    "next": "reestimate",
                },
            },
            "re/steps3": {
                "candidates": ["re-cheap", "re-dud", "re-strong"],
                "cascade": {
                    "models": ["re-cheap", "re-dud", "re-strong"],
                    "max_steps": 3,
                    "next": "reestimate",
                },
            },
            "re/ceiling": {
                "candidates": ALL,
                "cascade": {"models": ALL, "max_steps": 3, "next": "reestimate", "max_cost_usd": 0.0015},
            },
            "re/outside": {  # re-dud is no candidate: the router has no estimate for it
                "candidates": ALL,
                "cascade": {
                    "models": ["re-cheap", "re-dud", "re-strong"],
                    "max_steps": 3,
                    "next": "reestimate",
                },
            },
            "re/open": {"candidates": ALL, "cascade": {"models": ALL, "max_steps": 3, "next": "reestimate"}},
        },
        "keys": [{"id": "team", "key_sha256": hash_key(KEY), "budget_usd_day": 100.0}],
        "store": {"url": f"sqlite:///{tmp}/traces.sqlite", "flush_interval_s": 0.05, "ledger": "off"},
        "trace": {"store_prompts": False, "store_responses": True},
    }


@pytest.fixture(scope="module")
def gw(fake_server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    before = dict(fake_server.state.skills)
    fake_server.state.skills.update(SKILLS)
    try:
        cfg = _config(fake_server.base_url, tmp_path_factory.mktemp("reestimate"))
        with run_gateway(cfg, routers={"default": PriorRouter()}) as url:
            yield url
    finally:
        fake_server.state.skills.clear()
        fake_server.state.skills.update(before)
        fake_server.clear()


@pytest.fixture(autouse=True)
def _no_faults(fake_server: FakeServer) -> Iterator[None]:
    fake_server.clear()
    yield
    fake_server.clear()


def _tradeoff(gw: GatewayHandle, alias: str, r_mid: float, text: str = CHAT) -> float:
    """The trade-off at which tradeoff x (re-mid's expected cost for `text`) = `r_mid`."""
    from llmroute.gateway.routing import RequestContext

    msgs = [{"role": "user", "content": text}]
    d = gw.app.engine.route(RequestContext("x", alias, msgs, {"model": alias, "messages": msgs}))
    assert d.expected_cost["re-strong"] == pytest.approx(1.8 * d.expected_cost["re-mid"])
    return r_mid / d.expected_cost["re-mid"]


def _ask(
    gw: GatewayHandle, alias: str, tradeoff: float | None, text: str = CHAT, stream: bool = False, **kw: Any
) -> tuple[str, list[dict[str, str]], str, Any]:
    c = openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=30)
    extra = {"llmroute": {"tradeoff": tradeoff}} if tradeoff is not None else None
    raw = c.chat.completions.with_raw_response.create(
        model=alias, messages=[{"role": "user", "content": text}], stream=stream, extra_body=extra, **kw
    )
    steps, stop = _steps(raw.headers["x-llmroute-cascade"])
    if stream:
        out = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    else:
        out = raw.parse().choices[0].message.content or ""
    return out, steps, stop, raw.headers


def _est(step: dict[str, str]) -> dict[str, tuple[float, float]]:
    """{model: (gain, cost)} from a step's `est=` field."""
    out = {}
    for item in step["est"].split("|"):
        model, g, c = item.rsplit(":", 2)
        out[model] = (float(g[1:]), float(c[1:]))
    return out


# ---- the estimator and the rule ---------------------------------------------------------------
def _ev(scores: list[float], codes: list[int] | None = None) -> Evidence:
    m = len(scores)
    return Evidence(
        np.array([codes or [-1] * m]),
        np.array([scores], dtype=float),
        np.zeros((1, m, 0)),
        np.isfinite(np.array([scores])),
    )


def test_a_rejected_answer_favours_the_stronger_model_over_the_static_next() -> None:
    est = DifficultyReestimator()
    q = np.array([[0.6, 0.8, 0.95]])
    S = np.array([[True, False, False]])
    rejected = est.gains(S, est.called(S, q, _ev([0.0, np.nan, np.nan])), q, _ev([0.0, np.nan, np.nan]))
    unknown = est.gains(S, est.called(S, q, _ev([0.5, np.nan, np.nan])), q, _ev([0.5, np.nan, np.nan]))
    passed = est.gains(S, est.called(S, q, _ev([0.95, np.nan, np.nan])), q, _ev([0.95, np.nan, np.nan]))
    # the worse the answer looks, the more another model gains
    assert (rejected[0, 1:] > unknown[0, 1:]).all()
    # by default a pass is no evidence (max_score 0.5); with a higher cap it lowers the gains
    np.testing.assert_allclose(passed, unknown)
    trusting = DifficultyReestimator(max_score=0.8)
    ev_p = _ev([0.95, np.nan, np.nan])
    assert (trusting.gains(S, trusting.called(S, q, ev_p), q, ev_p)[0, 1:] < unknown[0, 1:]).all()
    # a refusal says the prompt is hard: mid's chance falls more than strong's
    cost = np.array([[0.0025, 0.25, 0.45]])  # tradeoff x cost; the static rank: mid before strong
    assert (q - cost)[0, 1] > (q - cost)[0, 2]
    j, go, net = choose_next(rejected, cost, S, 1.0)
    assert j[0] == 2 and go[0] and net[0, 2] > net[0, 1]
    # the same rule on the prior alone keeps the static order (the evidence made the difference)
    j0, _, _ = choose_next(q, cost, S, 1.0)
    assert j0[0] == 1


def test_agreement_raises_the_answers_chance() -> None:
    est = DifficultyReestimator()
    q = np.array([[0.6, 0.7, 0.95]])
    S = np.array([[True, True, False]])
    agree, differ = _ev([0.5, 0.5, np.nan], [0, 0, -1]), _ev([0.5, 0.5, np.nan], [0, 1, -1])
    pa, pd = est.called(S, q, agree), est.called(S, q, differ)
    assert (pa[0, :2] > pd[0, :2]).all()
    assert pd[0, 0] + pd[0, 1] < 1.02  # two different answers are not both right
    # the rarer it is that wrong answers agree by chance, the more agreement says
    rare, common = DifficultyReestimator(kappa=0.05), DifficultyReestimator(kappa=0.6)
    assert (rare.called(S, q, agree)[0, :2] > common.called(S, q, agree)[0, :2]).all()
    assert est.gains(S, pa, q, agree)[0, 2] < est.gains(S, pd, q, differ)[0, 2]
    assert np.isnan(pa[0, 2]) and np.isnan(est.gains(S, pa, q, agree)[0, :2]).all()


def test_choose_next_rule() -> None:
    gains = np.array([[np.nan, 0.3, 0.5], [np.nan, 0.3, 0.5]])
    cost = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    S = np.array([[True, False, False], [True, False, False]])
    j, go, net = choose_next(gains, cost, S, 0.1)  # nets 0.2, 0.3: the larger
    assert list(j) == [2, 2] and go.all() and net[0, 0] == -np.inf
    j, go, _ = choose_next(gains, cost, S, 0.25)  # nets 0.05, 0.0: mid, and 0 is not worth it
    assert j[0] == 1 and go[0]
    _, go, _ = choose_next(gains, cost, S, 0.3)  # nets 0.0, -0.1: stop
    assert not go.any()
    j, go, _ = choose_next(gains, cost, S, 0.1, blocked=np.array([[False, False, True]] * 2))
    assert list(j) == [1, 1] and go.all()
    _, go, _ = choose_next(gains, cost, S, float("inf"))
    assert not go.any()
    j, go, _ = choose_next(gains, np.array([[0.0, 1.0, np.inf]] * 2), S, 0.0)  # no price: never
    assert list(j) == [1, 1] and go.all()


# ---- the gateway --------------------------------------------------------------------------------
def test_reestimation_skips_the_static_next_model(gw: GatewayHandle, fake_server: FakeServer) -> None:
    lam = _tradeoff(gw, "re/auto", 0.25)
    # the static ranking at this trade-off: cheap, mid, strong (mid refuses too: three calls)
    _, steps, stop, _ = _ask(gw, "re/ranked", lam)
    assert [s["model"] for s in steps] == ["re-cheap", "re-mid", "re-strong"] and stop == "pass"
    fake_server.clear()
    out, steps, stop, headers = _ask(gw, "re/auto", lam)
    assert [s["model"] for s in steps] == ["re-cheap", "re-strong"] and stop == "pass"
    assert out.startswith("Sure!") and headers["x-llmroute-model"] == "re-strong"
    assert fake_server.state.counts.get("re-mid", 0) == 0
    # the decision, compact on the step it followed: both candidates with gain and cost
    assert steps[0]["next"] == "re-strong" and "next" not in steps[1]
    est = _est(steps[0])
    assert list(est) == ["re-strong", "re-mid"]  # best net first
    (g_s, c_s), (g_m, c_m) = est["re-strong"], est["re-mid"]
    assert g_s > g_m and c_s > c_m and g_s - lam * c_s > g_m - lam * c_m
    # and in full in the trace
    rec = _record(gw, headers["x-llmroute-request-id"])
    (plan,) = rec["extra"]["cascade"]["next"]
    assert plan["after"] == 1 and plan["next"] == "re-strong" and plan["tradeoff"] == pytest.approx(lam)
    assert plan["answers"][0]["model"] == "re-cheap" and plan["answers"][0]["p_right"] < 0.1
    cands = {c["model"]: c for c in plan["candidates"]}
    assert cands["re-strong"]["net"] > cands["re-mid"]["net"]
    assert cands["re-mid"]["prior"] == pytest.approx(0.8)


def test_reestimation_stops_when_no_gain_is_worth_its_cost(
    gw: GatewayHandle, fake_server: FakeServer
) -> None:
    lam = _tradeoff(gw, "re/auto", 0.7)  # mid's gain (~0.58) < 0.7, strong's (~0.82) < 1.26
    out, steps, stop, headers = _ask(gw, "re/auto", lam)
    assert [s["model"] for s in steps] == ["re-cheap"] and stop == "no_gain"
    assert steps[0]["next"] == "none" and out.startswith("Sorry")  # the best answer there is
    assert fake_server.state.counts == {"re-cheap": 1}
    rec = _record(gw, headers["x-llmroute-request-id"])
    plan = rec["extra"]["cascade"]["next"][0]
    assert plan["next"] is None and all(c["net"] <= 0 for c in plan["candidates"])
    # a little cheaper, mid is worth it (and, after mid's refusal too, strong is not)
    lam = _tradeoff(gw, "re/auto", 0.5)
    _, steps, stop, _ = _ask(gw, "re/auto", lam)
    assert [s["model"] for s in steps] == ["re-cheap", "re-mid"] and stop == "no_gain"
    # the ranked cascade ignores the cost of the next model
    _, steps, _, _ = _ask(gw, "re/ranked", _tradeoff(gw, "re/ranked", 0.7))
    assert [s["model"] for s in steps] == ["re-cheap", "re-mid", "re-strong"]
    # a passing answer is served without re-estimation
    out, steps, stop, _ = _ask(gw, "re/auto", lam, MATH)
    assert [s["model"] for s in steps] == ["re-cheap"] and stop == "pass" and "next" not in steps[0]


def test_reestimation_respects_the_step_limit(gw: GatewayHandle, fake_server: FakeServer) -> None:
    # on quality alone the evidence favours dud (prior 0.97) after cheap; dud refuses as well
    _, steps, stop, _ = _ask(gw, "re/steps2", 0.0)
    assert [s["model"] for s in steps] == ["re-cheap", "re-dud"] and stop == "max_steps"
    assert fake_server.state.counts.get("re-strong", 0) == 0
    # one more step allowed: strong is next, and passes
    _, steps, stop, _ = _ask(gw, "re/steps3", 0.0)
    assert [s["model"] for s in steps] == ["re-cheap", "re-dud", "re-strong"] and stop == "pass"


def test_reestimation_respects_the_cost_ceiling(gw: GatewayHandle, fake_server: FakeServer) -> None:
    # with max_tokens=1000 strong's worst case (~$0.0018) breaks the $0.0015 ceiling, mid's fits
    _, steps, stop, _ = _ask(gw, "re/ceiling", 0.0, max_tokens=1000)
    assert [s["model"] for s in steps] == ["re-cheap", "re-mid"] and stop == "max_cost"
    assert fake_server.state.counts.get("re-strong", 0) == 0
    assert "re-strong" not in _est(steps[0])  # not a candidate
    # without the ceiling, the evidence favours strong after cheap
    _, steps, stop, _ = _ask(gw, "re/open", 0.0, max_tokens=1000)
    assert [s["model"] for s in steps] == ["re-cheap", "re-strong"] and stop == "pass"


def test_reestimation_in_a_stream(gw: GatewayHandle, fake_server: FakeServer) -> None:
    lam = _tradeoff(gw, "re/auto", 0.25)
    text, steps, stop, headers = _ask(gw, "re/auto", lam, stream=True)
    assert [s["model"] for s in steps] == ["re-cheap", "re-strong"] and stop == "pass"
    assert text.startswith("Sure!") and "Sorry" not in text
    assert steps[0]["next"] == "re-strong" and headers["x-llmroute-model"] == "re-strong"


def test_a_model_without_a_router_estimate_falls_back_to_the_ranked_order(gw: GatewayHandle) -> None:
    _, steps, stop, headers = _ask(gw, "re/outside", 0.0)
    assert [s["model"] for s in steps] == ["re-cheap", "re-dud", "re-strong"] and stop == "pass"
    assert steps[0]["next"] == "re-dud" and steps[0]["est"] == "ranked"
    plan = _record(gw, headers["x-llmroute-request-id"])["extra"]["cascade"]["next"][0]
    assert plan["why"].startswith("ranked: no router estimate") and "re-dud" in plan["why"]


def test_fit_max_score_matches_the_share_of_passed_answers_that_are_right() -> None:
    """A lone passed answer with an even prior gets P(right) = max_score: the log loss is lowest
    at the grid value nearest the share right (0.7 here, 0.5 when a pass says nothing)."""
    rng = np.random.default_rng(0)
    n = 2000
    q = np.full((n, 2), 0.5)
    ev = Evidence(np.full((n, 2), -1), np.ones((n, 2)), np.zeros((n, 2, 0)), np.ones((n, 2), dtype=bool))
    right = rng.random((n, 2)) < 0.7
    assert fit_max_score(q, ev, right.astype(float)) == 0.7
    half = np.arange(2 * n).reshape(n, 2) % 2 == 0
    assert fit_max_score(q, ev, half.astype(float)) == 0.5
    # a failed check never counts as a pass: all failed and all wrong, any cap fits; the smallest
    failed = Evidence(ev.codes, np.zeros((n, 2)), ev.text, ev.has)
    assert fit_max_score(q, failed, np.zeros((n, 2))) == 0.5
    # answers without a response or a known quality are left out
    Q = np.where(right, 1.0, 0.0)
    Q[:, 1] = np.nan
    assert fit_max_score(q, ev, Q) == 0.7
    assert fit_max_score(q, Evidence(ev.codes, ev.checks, ev.text, np.zeros((n, 2), dtype=bool)), Q) == 0.5
