"""Sticky sessions and implicit outcomes end to end: the official openai client against the gateway in
front of the fake upstream (`llmroute.gateway.sticky`; unit tests in tests/test_sticky.py).

The router here reads its estimates from the conversation: "[q=x]" (the last one wins) makes
'strong' expected 0.5 + x against 'weak' 0.5, and the aliases route at trade-off 0, so the expected
gain of switching from fake-weak to fake-strong is exactly x."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from conftest import FakeServer, GatewayHandle, loopback_config, run_gateway

AUTO = "llmroute/auto"  # sticky (margin 0.05) + every implicit signal
TINY = "llmroute/tiny"  # sticky, remembers one session
PLAIN = "llmroute/plain"  # neither
QUIET = "llmroute/quiet"  # implicit without refusal and regenerate, no stickiness
WINDOW = "llmroute/window"  # sticky, a small-context cheap model


class GainRouter:
    """'strong' is expected 0.5 + x where the conversation's last "[q=x]" says so; 'weak' 0.5."""

    def __init__(self) -> None:
        self.models = ["strong", "weak"]

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        q = np.empty((len(prompts), 2))
        for i, p in enumerate(prompts):
            marks = re.findall(r"\[q=(-?[0-9.]+)\]", p)
            q[i] = [0.5 + (float(marks[-1]) if marks else 0.0), 0.5]
        return q, np.tile([1e-3, 1e-5], (len(prompts), 1))


@pytest.fixture(scope="module")
def gw(fake_server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("sticky"))
    cfg["models"].append(dict(cfg["models"][1], name="fake-small", context_window=60))
    both = ["fake-strong", "fake-weak"]
    cfg["aliases"] = {
        AUTO: {"router": "default", "candidates": both, "tradeoff": 0, "sticky": {"margin": 0.05}, "implicit": {}},
        TINY: {"router": "default", "candidates": both, "tradeoff": 0, "sticky": {"margin": 0.05, "max_sessions": 1}},
        PLAIN: {"router": "default", "candidates": both, "tradeoff": 0},
        QUIET: {"router": "default", "candidates": both, "tradeoff": 0,
                "implicit": {"refusal": False, "regenerate": False}},
        WINDOW: {"router": "default", "candidates": ["fake-strong", "fake-small"], "tradeoff": 0,
                 "sticky": {"margin": 0.05}},
    }  # fmt: skip
    cfg["signals"] = {"secret": {"type": "keywords", "keywords": ["confidential"]}}
    cfg["rules"] = [
        {"name": "secrets-stay-strong", "when": {"signal": "secret"}, "action": {"type": "set", "allowed": ["fake-strong"]}}
    ]  # fmt: skip
    with run_gateway(cfg, routers={"default": GainRouter()}) as h:
        yield h


@pytest.fixture(scope="module")
def client(gw: GatewayHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=30)


def ask(
    client: openai.OpenAI, messages: list[dict[str, Any]], model: str = AUTO, **kw: Any
) -> tuple[str, dict[str, str], Any]:
    """(served model, x-llmroute-* headers, the completion)."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, **kw)  # type: ignore[arg-type]
    h = {k: v for k, v in raw.headers.items() if k.startswith("x-llmroute-")}
    return h["x-llmroute-model"], h, raw.parse()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def said(completion: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": completion.choices[0].message.content}


def trace(gw: GatewayHandle, rid: str, want: str | None = None) -> dict[str, Any]:
    """The request's trace row; with `want`, waits (generously) until its outcome has that key."""
    end = time.monotonic() + 30
    while True:
        rows = gw.app.store.query(request_id=rid)
        if rows and (want is None or want in (rows[0]["outcome"] or {})):
            return rows[0]
        if time.monotonic() > end:
            raise AssertionError(f"no trace row with outcome {want!r} for {rid}: {rows}")
        time.sleep(0.02)


def test_stays_on_its_model_within_the_margin(gw: GatewayHandle, client: openai.OpenAI) -> None:
    turn1 = [user("[q=-0.1] Tell me about otters.")]
    model, h, c1 = ask(client, turn1)
    assert (model, h["x-llmroute-sticky"]) == ("fake-weak", "new")
    # the router now prefers fake-strong by 0.03, less than the margin: the conversation stays
    model, h, _ = ask(client, [*turn1, said(c1), user("[q=0.03] And beavers?")])
    assert model == "fake-weak"
    assert h["x-llmroute-sticky"] == "held model=fake-weak gain=0.03 margin=0.05"
    assert "sticky=held" in h["x-llmroute-reason"]
    row = trace(gw, h["x-llmroute-request-id"])
    assert row["extra"]["sticky"] == {
        "state": "held", "model": "fake-weak", "gain": pytest.approx(0.03), "margin": 0.05, "session": "prefix",
    }  # fmt: skip
    assert row["candidates"][0]["model"] == "fake-weak"  # the router's pick is the first fallback
    # by 0.08, more than the margin: it switches and says why
    model, h, _ = ask(client, [*turn1, said(c1), user("[q=0.08] And beavers?")])
    assert model == "fake-strong"
    assert h["x-llmroute-sticky"] == "broken model=fake-weak reason=gain gain=0.08 margin=0.05"
    # an alias without stickiness follows the router
    assert ask(client, [*turn1, said(c1), user("[q=0.03] And beavers?")], model=PLAIN)[0] == "fake-strong"
    assert "x-llmroute-sticky" not in ask(client, turn1, model=PLAIN)[1]


def test_a_changed_system_prompt_is_a_new_conversation(client: openai.OpenAI) -> None:
    turn1 = [{"role": "system", "content": "Be brief."}, user("[q=-0.1] Tell me about voles.")]
    _, _, c1 = ask(client, turn1)
    follow = [said(c1), user("[q=0.03] And moles?")]
    assert ask(client, [*turn1, *follow])[0] == "fake-weak"
    other = [{"role": "system", "content": "Be thorough."}, turn1[1]]
    model, h, _ = ask(client, [*other, *follow])
    assert (model, h["x-llmroute-sticky"]) == ("fake-strong", "new")


def test_session_header_and_user_scope(client: openai.OpenAI) -> None:
    s = {"x-llmroute-session": "conv-header-1"}
    assert ask(client, [user("[q=-0.1] Hi there.")], extra_headers=s)[0] == "fake-weak"
    # another text, same session id: the session continues
    model, h, _ = ask(client, [user("[q=0.03] Something else entirely.")], extra_headers=s)
    assert model == "fake-weak"
    assert (
        h["x-llmroute-sticky"].startswith("held model=fake-weak") and "session" not in h["x-llmroute-sticky"]
    )
    # the same id from another user is another session
    model, h, _ = ask(client, [user("[q=0.03] Something else entirely.")], extra_headers=s, user="bob")
    assert (model, h["x-llmroute-sticky"]) == ("fake-strong", "new")


def test_ttl(gw: GatewayHandle, client: openai.OpenAI) -> None:
    tracker = gw.app.sessions
    table = tracker.tables[AUTO]
    now = [time.monotonic()]
    tracker.clock = table.clock = lambda: now[0]
    try:
        turn1 = [user("[q=-0.1] Tell me about newts.")]
        known = set(table._d)
        _, _, c1 = ask(client, turn1)
        end = time.monotonic() + 30  # the turn is remembered just after the answer goes out:
        while not set(table._d) - known and time.monotonic() < end:  # wait for it before moving the clock
            time.sleep(0.01)
        follow = [*turn1, said(c1), user("[q=0.03] And toads?")]
        now[0] += table.ttl_s  # exactly ttl_s later: remembered
        assert ask(client, follow)[0] == "fake-weak"
        now[0] += 1.0  # past it: forgotten
        model, h, _ = ask(client, follow)
        assert (model, h["x-llmroute-sticky"]) == ("fake-strong", "new")
    finally:
        tracker.clock = table.clock = time.monotonic


def test_max_sessions(client: openai.OpenAI) -> None:
    a1 = [user("[q=-0.1] Conversation A.")]
    b1 = [user("[q=-0.1] Conversation B.")]
    _, _, ca = ask(client, a1, model=TINY)
    _, _, cb = ask(client, b1, model=TINY)  # one session only: A is forgotten
    assert ask(client, [*b1, said(cb), user("[q=0.03] more B")], model=TINY)[0] == "fake-weak"
    model, h, _ = ask(client, [*a1, said(ca), user("[q=0.03] more A")], model=TINY)
    assert (model, h["x-llmroute-sticky"]) == ("fake-strong", "new")


def test_open_breaker_breaks_stickiness(gw: GatewayHandle, client: openai.OpenAI) -> None:
    turn1 = [user("[q=-0.1] Tell me about herons.")]
    _, _, c1 = ask(client, turn1)
    br = gw.app.executor.breakers["fake-weak"]
    br.state, br.opened_at = "open", br.clock()
    try:
        model, h, _ = ask(client, [*turn1, said(c1), user("[q=0.0] And egrets?")])
    finally:
        br.success()
    assert model == "fake-strong"
    assert h["x-llmroute-sticky"] == "broken model=fake-weak reason=breaker_open"


def test_a_rule_excluding_the_model_breaks_stickiness(client: openai.OpenAI) -> None:
    turn1 = [user("[q=-0.1] Tell me about finches.")]
    _, _, c1 = ask(client, turn1)
    model, h, _ = ask(client, [*turn1, said(c1), user("[q=-0.1] This part is confidential.")])
    assert model == "fake-strong"
    assert h["x-llmroute-sticky"] == "broken model=fake-weak reason=not_allowed"


def test_context_window_breaks_stickiness(client: openai.OpenAI) -> None:
    turn1 = [user("[q=-0.1] Short.")]
    model, _, c1 = ask(client, turn1, model=WINDOW)
    assert model == "fake-small"
    long = "[q=-0.1] " + "words " * 60  # over fake-small's 60-token window
    model, h, _ = ask(client, [*turn1, said(c1), user(long)], model=WINDOW)
    assert model == "fake-strong"
    assert h["x-llmroute-sticky"] == "broken model=fake-small reason=context_window"


TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]


def test_tool_loop_stays_and_a_failed_tool_grades_the_call(gw: GatewayHandle, client: openai.OpenAI) -> None:
    turn = [user("[q=-0.1] Read config.yaml and summarise it.")]
    model, h1, c1 = ask(client, turn, tools=TOOLS)
    assert model == "fake-weak" and c1.choices[0].message.tool_calls
    call = c1.choices[0].message.tool_calls[0]
    leg2 = [
        *turn,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Error: no such file [q=0.03]"},
    ]
    model, h, _ = ask(client, leg2, tools=TOOLS)
    assert model == "fake-weak" and h["x-llmroute-sticky"].startswith("held model=fake-weak")
    rid1 = h1["x-llmroute-request-id"]
    assert trace(gw, rid1, "tool_error")["outcome"] == {"tool_error": 0.0}


def test_reask_grades_the_previous_answer(gw: GatewayHandle, client: openai.OpenAI) -> None:
    turn1 = [user("[q=-0.1] How do I sort a dictionary by value in Python?")]
    _, h1, c1 = ask(client, turn1)
    _, h2, _ = ask(client, [*turn1, said(c1), user("how do I sort a dictionary by value in python [q=-0.1]")])
    assert trace(gw, h1["x-llmroute-request-id"], "reask")["outcome"] == {"reask": 0.0}
    # a different follow-up grades nothing; explicit feedback is stored beside the implicit score
    _, h3, _ = ask(client, [*turn1, said(c1), user("[q=-0.1] And by key, in reverse order please?")])
    rid2 = h2["x-llmroute-request-id"]
    r = httpx.post(f"{gw}/feedback", json={"request_id": h1["x-llmroute-request-id"], "quality": 1.0})
    assert r.status_code == 200
    assert trace(gw, h1["x-llmroute-request-id"], "quality")["outcome"] == {"reask": 0.0, "quality": 1.0}
    assert trace(gw, rid2)["outcome"] is None and trace(gw, h3["x-llmroute-request-id"])["outcome"] is None


def test_regenerate_grades_the_earlier_answer(gw: GatewayHandle, client: openai.OpenAI) -> None:
    turn = [user("[q=-0.1] Write a haiku about rain.")]
    _, h1, _ = ask(client, turn)
    _, h2, _ = ask(client, turn)
    assert trace(gw, h1["x-llmroute-request-id"], "regenerate")["outcome"] == {"regenerate": 0.0}
    assert trace(gw, h2["x-llmroute-request-id"])["outcome"] is None


def test_length_and_refusal_grade_the_answer(
    gw: GatewayHandle, client: openai.OpenAI, fake_server: FakeServer
) -> None:
    fake_server.set_fault("fake-weak", "length", count=1)
    _, h, c = ask(client, [user("[q=-0.1] Write a very long story.")])
    assert c.choices[0].finish_reason == "length"
    assert trace(gw, h["x-llmroute-request-id"], "length")["outcome"] == {"length": 0.0}
    # the fake echoes the prompt: this answer holds a refusal cue
    _, h, c = ask(client, [user("[q=-0.1] I cannot help with that, said the bot.")])
    assert "I cannot help with that" in c.choices[0].message.content
    assert trace(gw, h["x-llmroute-request-id"], "refusal")["outcome"] == {"refusal": 0.0}


def test_streamed_answers_are_graded_too(
    gw: GatewayHandle, client: openai.OpenAI, fake_server: FakeServer
) -> None:
    def stream(text: str) -> tuple[str, list[Any]]:
        raw = client.chat.completions.with_raw_response.create(model=AUTO, messages=[user(text)], stream=True)
        return raw.headers["x-llmroute-request-id"], list(raw.parse())

    fake_server.set_fault("fake-weak", "length", count=1)
    rid, chunks = stream("[q=-0.1] Stream a very long story.")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert trace(gw, rid, "length")["outcome"] == {"length": 0.0}
    rid, _ = stream("[q=-0.1] I cannot help with that, streamed the bot.")
    assert trace(gw, rid, "refusal")["outcome"] == {"refusal": 0.0}


def test_signals_switch_off_per_alias(gw: GatewayHandle, client: openai.OpenAI) -> None:
    refusal = [user("[q=-0.1] I cannot help with that, said the quiet bot.")]
    _, hq, _ = ask(client, refusal, model=QUIET)
    _, hq2, _ = ask(client, refusal, model=QUIET)  # a regenerate: off too
    _, hp, _ = ask(client, refusal, model=PLAIN)
    # the same on AUTO is recorded; outcomes are recorded in order, so the others were not
    _, ha, _ = ask(client, [user("[q=-0.1] I cannot help with that, said the loud bot.")])
    trace(gw, ha["x-llmroute-request-id"], "refusal")
    for h in (hq, hq2, hp):
        assert trace(gw, h["x-llmroute-request-id"])["outcome"] is None
    # QUIET still detects a re-ask
    q1 = [user("[q=-0.1] What is the boiling point of water at sea level?")]
    _, h1, c1 = ask(client, q1, model=QUIET)
    ask(
        client,
        [*q1, said(c1), user("What is the boiling point of water at sea level? [q=-0.1]")],
        model=QUIET,
    )
    assert trace(gw, h1["x-llmroute-request-id"], "reask")["outcome"] == {"reask": 0.0}


def test_metrics(gw: GatewayHandle, client: openai.OpenAI) -> None:
    turn1 = [user("[q=-0.1] Metrics conversation.")]
    _, _, c1 = ask(client, turn1)
    ask(client, [*turn1, said(c1), user("[q=0.0] go on")])
    ask(client, [user("[q=-0.1] I cannot help with that, metrics bot.")])
    end = time.monotonic() + 30
    while True:
        text = httpx.get(f"{gw.root}/metrics").text
        if 'source="refusal"' in text or time.monotonic() > end:
            break
        time.sleep(0.05)
    held = re.search(r'llmroute_sticky_decisions_total\{alias="llmroute/auto",result="held"\} (\d+)', text)
    new = re.search(r'llmroute_sticky_decisions_total\{alias="llmroute/auto",result="new"\} (\d+)', text)
    assert held and float(held.group(1)) >= 1 and new and float(new.group(1)) >= 1
    assert re.search(
        r'llmroute_implicit_outcomes_total\{alias="llmroute/auto",source="refusal"\} [1-9]', text
    )


def test_workers_share_sessions(
    fake_server: FakeServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways on one LLMROUTE_SHARED_DIR (what `llmroute serve --workers 2` gives its workers):
    turn 1 answered by one, turn 2 by the other, stays on its model."""
    monkeypatch.setenv("LLMROUTE_SHARED_DIR", str(tmp_path))
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["aliases"][AUTO].update(tradeoff=0, sticky={"margin": 0.05})
    with (
        run_gateway(cfg, routers={"default": GainRouter()}) as one,
        run_gateway(cfg, routers={"default": GainRouter()}) as two,
    ):
        c1 = openai.OpenAI(base_url=one, api_key="unused", max_retries=0, timeout=30)
        c2 = openai.OpenAI(base_url=two, api_key="unused", max_retries=0, timeout=30)
        turn1 = [user("[q=-0.1] Tell me about kestrels.")]
        _, _, a1 = ask(c1, turn1)
        # the turn is recorded right after the answer goes out, in `one`'s thread: a client as fast
        # as this test could reach `two` first, so wait until the shared table holds it
        table = one.app.sessions.tables[AUTO]
        end = time.monotonic() + 30
        while len(table) < 1 and time.monotonic() < end:
            time.sleep(0.01)
        model, h, _ = ask(c2, [*turn1, said(a1), user("[q=0.03] And merlins?")])
        assert model == "fake-weak" and h["x-llmroute-sticky"].startswith("held model=fake-weak")


def test_route_endpoint_shows_stickiness_without_recording(gw: GatewayHandle, client: openai.OpenAI) -> None:
    turn1 = [user("[q=-0.1] Tell me about lynxes.")]
    _, _, c1 = ask(client, turn1)
    follow = [*turn1, said(c1), user("[q=0.03] And bobcats?")]
    r = httpx.post(f"{gw}/route", json={"model": AUTO, "messages": follow})
    assert r.status_code == 200 and r.json()["model"] == "fake-weak"
    assert r.headers["x-llmroute-sticky"].startswith("held model=fake-weak")
    # a decision alone is not a turn: sending the same conversation is no regenerate
    _, h, _ = ask(client, follow)
    _, h2, _ = ask(client, [user("[q=-0.1] I cannot help with that, route bot.")])
    trace(gw, h2["x-llmroute-request-id"], "refusal")
    assert trace(gw, h["x-llmroute-request-id"])["outcome"] is None
