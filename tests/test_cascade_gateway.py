"""Cascades in the gateway (issue 14): a real gateway, fake models right or wrong by construction.

The fake server's skill profiles are set to 0 / 1 so each model's answer is fixed: `cheap-m` and
`mid-m` answer maths right and refuse chit-chat ("Sorry, I cannot help with that."), `strong-m`
answers everything right. The refusal check scores a refusal 0, so a chat prompt escalates and a
maths prompt does not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from conftest import FakeServer, GatewayHandle, StubRouter, run_gateway
from llmroute.gateway.auth import hash_key

KEY = "sk-test-cascade-0123456789"
MATH = "Compute 12 + 5. Reply with the final number."
CHAT = "Hi there! Could you greet my friend Alice warmly? (#1)"
SKILLS = {
    "cheap-m": {"math": 1.0, "code": 1.0, "chat": 0.0},
    "mid-m": {"math": 1.0, "code": 1.0, "chat": 0.0},
    "strong-m": {"math": 1.0, "code": 1.0, "chat": 1.0},
    "tiny-window": {"math": 1.0, "code": 1.0, "chat": 0.0},
}
PRICES = {"cheap-m": (0.1, 0.1), "mid-m": (1.0, 2.0), "strong-m": (10.0, 30.0), "tiny-window": (0.1, 0.1)}


def _model(name: str, url: str, column: str, **over: Any) -> dict[str, Any]:
    pin, pout = PRICES[name]
    return {
        "name": name,
        "base_url": url,
        "input_per_mtok": pin,
        "output_per_mtok": pout,
        "timeout_s": 10.0,
        "router_model": column,
        **over,
    }


def _config(url: str, tmp: Any) -> dict[str, Any]:
    ordered = ["cheap-m", "mid-m", "strong-m"]
    return {
        "server": {"request_timeout_s": 60, "retries": 1, "backoff_s": 0.001, "breaker_failures": 1000},
        "models": [
            _model("cheap-m", url, "weak"),
            _model("mid-m", url, "weak"),
            _model("strong-m", url, "strong"),
            _model("tiny-window", url, "weak", context_window=40),
        ],
        "routers": {"default": "builtin:default"},
        "aliases": {
            "c/three": {"candidates": ordered, "cascade": {"models": ordered, "max_steps": 3}},
            "c/two": {"candidates": ordered, "cascade": {"models": ordered, "max_steps": 2}},
            "c/ceiling": {
                "candidates": ordered,
                "cascade": {"models": ordered, "max_steps": 3, "max_cost_usd": 0.001},
            },
            "c/router": {  # the static ranking (re-estimation: tests/test_cascade_reestimate.py)
                "candidates": ["cheap-m", "strong-m"],
                "tradeoff": 1000,
                "cascade": {"max_steps": 2, "next": "ranked"},
            },
            "c/router-q": {"candidates": ["cheap-m", "strong-m"], "tradeoff": 0, "cascade": {"max_steps": 2}},
            "c/stall": {
                "candidates": ordered,
                "cascade": {"models": ordered, "max_steps": 3, "stall_s": 1.0},
            },
            "c/window": {
                "candidates": ["tiny-window", "mid-m", "strong-m"],
                "cascade": {"models": ["tiny-window", "strong-m"], "max_steps": 2},
            },
            "c/nobuffer": {
                "candidates": ordered,
                "cascade": {"models": ordered, "max_steps": 3, "stream_buffer_chars": 0},
            },
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
        cfg = _config(fake_server.base_url, tmp_path_factory.mktemp("cascade"))
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
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


def _client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=30)


def _steps(header: str) -> tuple[list[dict[str, str]], str]:
    """(steps, stop) from `x-llmroute-cascade`."""
    items = [x.strip() for x in header.split(",")]
    assert items[-1].startswith("stop=")
    steps = []
    for it in items[:-1]:
        model, *fields = it.split(";")
        steps.append({"model": model, **dict(f.split("=", 1) for f in fields)})
    return steps, items[-1][5:]


def _ask(gw: str, alias: str, text: str, **kw: Any) -> tuple[Any, list[dict[str, str]], str, Any]:
    raw = _client(gw).chat.completions.with_raw_response.create(
        model=alias, messages=[{"role": "user", "content": text}], **kw
    )
    steps, stop = _steps(raw.headers["x-llmroute-cascade"])
    return raw.parse(), steps, stop, raw.headers


def _record(gw: GatewayHandle, rid: str) -> dict[str, Any]:
    # the trace is queued when the request finishes, which may be just after the client has
    # its answer: wait for it (the bound only guards against a hang on a loaded box)
    deadline = time.monotonic() + 30
    while True:
        gw.app.store.flush_sync(10)
        rec = gw.app.store.get(rid)
        if rec is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rec is not None
    return rec


def test_passing_first_answer_is_served_without_escalation(
    gw: GatewayHandle, fake_server: FakeServer
) -> None:
    resp, steps, stop, headers = _ask(gw, "c/three", MATH)
    assert stop == "pass"
    assert [s["model"] for s in steps] == ["cheap-m"]
    assert float(steps[0]["score"]) == 1.0
    assert headers["x-llmroute-model"] == "cheap-m"
    assert "17" in resp.choices[0].message.content
    assert fake_server.state.counts.get("mid-m", 0) == 0 and fake_server.state.counts.get("strong-m", 0) == 0


def test_refused_answer_escalates_until_one_passes(gw: GatewayHandle, fake_server: FakeServer) -> None:
    spent0 = gw.app.budgets.usage("team")["day_spent"]
    resp, steps, stop, headers = _ask(gw, "c/three", CHAT)
    assert [s["model"] for s in steps] == ["cheap-m", "mid-m", "strong-m"]
    assert [float(s["score"]) for s in steps] == [0.0, 0.0, 1.0]
    assert steps[0]["why"].startswith("refusal")
    assert stop == "pass"
    assert headers["x-llmroute-model"] == "strong-m"
    assert resp.choices[0].message.content.startswith("Sure!")
    assert fake_server.state.counts == {"cheap-m": 1, "mid-m": 1, "strong-m": 1}
    # every call is paid for: the budget is charged the sum of the steps' costs
    costs = [float(s["cost_usd"]) for s in steps]
    assert all(c > 0 for c in costs)
    spent = gw.app.budgets.usage("team")["day_spent"] - spent0
    assert spent == pytest.approx(sum(costs), rel=1e-3)
    assert spent > costs[-1]
    # and each step is in the trace
    rec = _record(gw, headers["x-llmroute-request-id"])
    casc = rec["extra"]["cascade"]
    assert [s["model"] for s in casc["steps"]] == ["cheap-m", "mid-m", "strong-m"]
    assert [s["score"] for s in casc["steps"]] == [0.0, 0.0, 1.0]
    assert casc["stop"] == "pass"
    assert rec["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in casc["steps"]))
    assert rec["model"] == "strong-m"


def test_step_limit_serves_the_best_answer_so_far(gw: GatewayHandle, fake_server: FakeServer) -> None:
    _resp, steps, stop, headers = _ask(gw, "c/two", CHAT)
    assert [s["model"] for s in steps] == ["cheap-m", "mid-m"]
    assert stop == "max_steps"
    assert fake_server.state.counts.get("strong-m", 0) == 0
    assert headers["x-llmroute-model"] == "mid-m"  # both refused: the later of equal scores


def test_cost_ceiling_stops_before_a_step_that_could_break_it(
    gw: GatewayHandle, fake_server: FakeServer
) -> None:
    # with max_tokens=50, strong-m's worst case (50 x $30/Mtok + input) > $0.001; mid-m's fits
    _, steps, stop, _ = _ask(gw, "c/ceiling", CHAT, max_tokens=50)
    assert [s["model"] for s in steps] == ["cheap-m", "mid-m"]
    assert stop == "max_cost"
    assert fake_server.state.counts.get("strong-m", 0) == 0
    assert sum(float(s["cost_usd"]) for s in steps) <= 0.001
    # with a larger ceiling the same request reaches strong-m (the ceiling, not the steps, stopped it)
    _resp, steps, stop, _headers = _ask(gw, "c/three", CHAT, max_tokens=50)
    assert steps[-1]["model"] == "strong-m"


def test_budget_holds_the_worst_case_of_the_steps_allowed(gw: GatewayHandle) -> None:
    app = gw.app
    casc = app.cascades["c/three"]
    body = {"model": "c/three", "messages": [{"role": "user", "content": CHAT}], "max_tokens": 50}
    per = {m: casc.step_max_cost(m, body) for m in ["cheap-m", "mid-m", "strong-m"]}
    from llmroute.gateway.routing import RequestContext

    ctx = RequestContext("x", "c/three", body["messages"], body)
    d = app.engine.route(ctx)
    assert casc.worst_cost(ctx, d, body) == pytest.approx(sum(per.values()))
    assert app.cascades["c/two"].worst_cost(ctx, d, body) == pytest.approx(per["strong-m"] + per["mid-m"])
    ceiling = app.cascades["c/ceiling"].worst_cost(ctx, d, body)
    assert ceiling == pytest.approx(max(per["strong-m"], 0.001))


def test_router_ranking_orders_the_cascade(gw: GatewayHandle) -> None:
    # priced high (tradeoff 1000) the router ranks cheap-m first; on quality alone strong-m
    _, steps, stop, _ = _ask(gw, "c/router-q", CHAT)
    assert [s["model"] for s in steps] == ["strong-m"] and stop == "pass"
    _, steps, stop, _ = _ask(gw, "c/router", MATH)
    assert [s["model"] for s in steps] == ["cheap-m"] and stop == "pass"
    _, steps, stop, _headers = _ask(gw, "c/router", CHAT)
    assert [s["model"] for s in steps] == ["cheap-m", "strong-m"] and stop == "pass"


def test_stalled_model_escalates(gw: GatewayHandle, fake_server: FakeServer) -> None:
    fake_server.set_fault("cheap-m", "timeout", delay=30)  # never answers within the stall limit
    _resp, steps, stop, headers = _ask(gw, "c/stall", MATH)
    assert steps[0]["model"] == "cheap-m" and steps[0]["score"] == "none"
    assert steps[0]["why"].startswith("stalled")
    assert [s["model"] for s in steps[1:]] == ["mid-m"]
    assert stop == "pass" and headers["x-llmroute-model"] == "mid-m"


def test_context_window_overflow_moves_to_a_larger_window(gw: GatewayHandle, fake_server: FakeServer) -> None:
    long_math = "Compute 12 + 5. Reply with the final number. " + "Please be careful. " * 20
    _, steps, _, headers = _ask(gw, "c/window", long_math)
    assert steps[0]["model"] == "tiny-window" and steps[0]["why"].startswith("context_window")
    assert steps[-1]["model"] == "strong-m" and headers["x-llmroute-model"] == "strong-m"
    assert fake_server.state.counts.get("tiny-window", 0) == 0
    # a short prompt fits the small window and is answered there
    _, steps, _stop, headers = _ask(gw, "c/window", MATH)
    assert [s["model"] for s in steps] == ["tiny-window"]


def _stream(gw: str, alias: str, text: str) -> tuple[str, list[dict[str, str]], str, Any]:
    raw = _client(gw).chat.completions.with_raw_response.create(
        model=alias, messages=[{"role": "user", "content": text}], stream=True
    )
    steps, stop = _steps(raw.headers["x-llmroute-cascade"])
    text_out = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return text_out, steps, stop, raw.headers


def test_stream_buffers_verifies_and_escalates(gw: GatewayHandle) -> None:
    spent0 = gw.app.budgets.usage("team")["day_spent"]
    text, steps, stop, headers = _stream(gw, "c/three", CHAT)
    # cheap-m and mid-m refused within the buffer: held back, never shown; strong-m streamed
    assert [s["model"] for s in steps] == ["cheap-m", "mid-m", "strong-m"]
    assert float(steps[0]["score"]) == 0.0 and float(steps[1]["score"]) == 0.0
    assert stop == "streamed"
    assert text.startswith("Sure!") and "Sorry" not in text
    assert headers["x-llmroute-model"] == "strong-m"
    spent = gw.app.budgets.usage("team")["day_spent"] - spent0
    assert spent > float(steps[0]["cost_usd"]) + float(steps[1]["cost_usd"])
    # a passing first answer is replayed from the buffer
    text, steps, stop, headers = _stream(gw, "c/three", MATH)
    assert [s["model"] for s in steps] == ["cheap-m"] and stop == "pass"
    assert "17" in text


def test_stream_longer_than_the_buffer_is_streamed_without_escalation(gw: GatewayHandle) -> None:
    text, steps, stop, _headers = _stream(gw, "c/nobuffer", CHAT)
    assert [s["model"] for s in steps] == ["cheap-m"] and stop == "streamed"
    assert text.startswith("Sorry")


@pytest.mark.parametrize("stream", [False, True])
def test_no_failed_client_requests_under_faults(
    gw: GatewayHandle, fake_server: FakeServer, stream: bool
) -> None:
    fake_server.set_fault("cheap-m", "500", count=6)
    fake_server.set_fault("mid-m", "reset", count=3)
    c = _client(gw)
    for i in range(12):
        prompt = CHAT if i % 2 else MATH
        if stream:
            out = "".join(
                ch.choices[0].delta.content or ""
                for ch in c.chat.completions.create(
                    model="c/three", messages=[{"role": "user", "content": prompt}], stream=True
                )
                if ch.choices
            )
        else:
            r = c.chat.completions.create(model="c/three", messages=[{"role": "user", "content": prompt}])
            out = r.choices[0].message.content or ""
        assert out, i
        if prompt == CHAT:
            assert out.startswith("Sure!"), out  # only strong-m answers chit-chat right
        else:
            assert "17" in out
    assert fake_server.state.faults["cheap-m"]["count"] == 0  # every injected fault was hit
    assert fake_server.state.faults["mid-m"]["count"] == 0


def test_anthropic_messages_cascade_too(gw: GatewayHandle) -> None:
    import anthropic

    c = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=30)
    raw = c.messages.with_raw_response.create(
        model="c/three", max_tokens=100, messages=[{"role": "user", "content": CHAT}]
    )
    steps, stop = _steps(raw.headers["x-llmroute-cascade"])
    assert [s["model"] for s in steps] == ["cheap-m", "mid-m", "strong-m"] and stop == "pass"
    msg = raw.parse()
    assert msg.model == "strong-m" and msg.content[0].text.startswith("Sure!")
    with c.messages.stream(
        model="c/three", max_tokens=100, messages=[{"role": "user", "content": CHAT}]
    ) as s:
        text = "".join(s.text_stream)
    assert text.startswith("Sure!")


def test_context_overflow_errors_and_header_items() -> None:
    from llmroute.gateway.backends import BackendError
    from llmroute.gateway.cascade import Step, is_context_overflow

    assert is_context_overflow(
        BackendError("model 'a': upstream rejected the request (400) maximum context length is 8192")
    )
    assert is_context_overflow(BackendError("x", code="context_length_exceeded"))
    assert is_context_overflow(BackendError("prompt is too long: 250000 tokens > 200000 maximum"))
    assert not is_context_overflow(
        BackendError("model 'a': upstream rejected the request (400) bad temperature")
    )
    # header items stay one token per field: separators in reasons are replaced
    item = Step("m", 0.5, "refusal: 'Sorry, I; cannot'", 1.5e-5).item()
    assert item.startswith("m;score=0.5;cost_usd=1.5e-05;why=refusal")
    assert item.count(";") == 3 and "," not in item and " " not in item
    assert (
        Step("m", error="stalled: no answer").item().endswith("score=none;cost_usd=0;why=stalled:_no_answer")
    )


def _ctx(alias: str, text: str) -> Any:
    from llmroute.gateway.routing import RequestContext

    msgs = [{"role": "user", "content": text}]
    return RequestContext("x", alias, msgs, {"model": alias, "messages": msgs})


def test_escalations_are_not_counted_as_fallbacks(gw: GatewayHandle) -> None:
    import httpx

    _, _, _, headers = _ask(gw, "c/three", MATH)  # the router picks strong-m; the cascade serves cheap-m
    assert headers["x-llmroute-model"] == "cheap-m"
    assert gw.app.engine.route(_ctx("c/three", MATH)).model != "cheap-m"
    text = httpx.get(gw.root + "/metrics").text
    fb = [
        ln
        for ln in text.splitlines()
        if ln.startswith("llmroute_fallbacks_total{") and 'alias="c/three"' in ln
    ]
    assert fb == []
    served = [
        ln
        for ln in text.splitlines()
        if ln.startswith("llmroute_requests_total{") and 'alias="c/three"' in ln
    ]
    assert served, "the cascade's requests are counted"


def test_upstream_context_overflow_escalates(gw: GatewayHandle, fake_server: FakeServer) -> None:
    fake_server.set_fault("cheap-m", "context")
    _, steps, stop, _ = _ask(gw, "c/three", MATH)
    assert steps[0]["model"] == "cheap-m" and steps[0]["why"].startswith("context_window")
    assert [s["model"] for s in steps[1:]] == ["mid-m"] and stop == "pass"
    # a plain upstream 400 is the request's fault: no escalation, the client gets it
    fake_server.set_fault("cheap-m", "400")
    with pytest.raises(openai.BadRequestError):
        _ask(gw, "c/three", MATH)
    assert fake_server.state.counts.get("mid-m", 0) == 1


def test_models_list_shows_an_alias_cascade(gw: GatewayHandle) -> None:
    """/v1/models tells a client that a cascade alias may buy several answers, and within which ceilings."""
    models = {m.id: m for m in _client(gw).models.list().data}
    ceiling = models["c/ceiling"].model_extra["llmroute"]["cascade"]  # type: ignore[index]
    assert ceiling["models"] == ["cheap-m", "mid-m", "strong-m"]
    assert ceiling["max_steps"] == 3 and ceiling["max_cost_usd"] == 0.001
    assert ceiling["learned_verifier"] is False
    assert ceiling["next"] == "ranked"  # the default with `models`
    router = models["c/router-q"].model_extra["llmroute"]["cascade"]  # type: ignore[index]
    assert router["models"] is None and router["next"] == "reestimate"  # the default without
    assert "cascade" not in models["cheap-m"].model_extra.get("llmroute", {})  # type: ignore[union-attr]


def _cascade_counters(gw: GatewayHandle) -> dict[tuple[str, ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gw.root}/metrics", timeout=10).text
    out: dict[tuple[str, ...], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("llmroute_cascade_") and s.name.endswith("_total"):
                out[(s.name, *sorted(s.labels.values()))] = s.value
    return out


def test_metrics_count_cascade_steps_and_stops(gw: GatewayHandle) -> None:
    before = _cascade_counters(gw)
    _ask(gw, "c/three", CHAT)  # cheap-m and mid-m refuse, strong-m passes
    after = _cascade_counters(gw)

    def delta(*key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    steps = "llmroute_cascade_steps_total"
    assert delta(steps, *sorted(["c/three", "cheap-m", "below_threshold"])) == 1
    assert delta(steps, *sorted(["c/three", "mid-m", "below_threshold"])) == 1
    assert delta(steps, *sorted(["c/three", "strong-m", "passed"])) == 1
    assert delta("llmroute_cascade_requests_total", *sorted(["c/three", "pass"])) == 1
    assert sum(v - before.get(k, 0.0) for k, v in after.items()) == 4  # nothing else counted
