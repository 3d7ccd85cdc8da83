"""Unit tests of `llmroute.gateway.sticky`: session digests, the LRU with TTL, the sticky rule and the
implicit-outcome detectors (the gateway end to end: tests/test_gateway_sticky.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from llmroute.gateway.config import AliasConfig, ImplicitConfig
from llmroute.gateway.sticky import (
    Outcome,
    SessionTable,
    SessionTracker,
    SharedSessionTable,
    Turn,
    _SharedDB,
    detect_length,
    detect_reask,
    detect_refusal,
    detect_regenerate,
    detect_tool_error,
    excluded_reason,
    similarity,
    split_turn,
    sticky_choice,
    sticky_header,
    word_set,
)

IM = ImplicitConfig()


def _turn(model: str = "m", rid: str = "r1", at: float = 0.0, words: str = "") -> Turn:
    return Turn(model, rid, at, b"t", word_set(words))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _table(kind: str, tmp_path: Any, max_sessions: int, ttl_s: float, clock: Any) -> Any:
    if kind == "memory":
        return SessionTable(max_sessions, ttl_s, clock)
    return SharedSessionTable(_SharedDB(str(tmp_path / "s.sqlite")), "al", max_sessions, ttl_s, clock)


TABLES = ["memory", "shared"]


@pytest.mark.parametrize("kind", TABLES)
def test_table_forgets_after_ttl(kind: str, tmp_path: Any) -> None:
    clock = Clock()
    t = _table(kind, tmp_path, 10, 60, clock)
    t.put(b"a", _turn(at=clock.now))
    clock.now += 60
    assert t.get(b"a") is not None  # exactly ttl_s old: still there
    clock.now += 0.5
    assert t.get(b"a") is None
    if kind == "memory":
        assert len(t) == 0


def test_table_evicts_least_recently_used() -> None:
    t = SessionTable(2, ttl_s=1e9, clock=Clock())
    t.put(b"a", _turn(rid="a"))
    t.put(b"b", _turn(rid="b"))
    assert t.get(b"a") is not None  # a is now the most recently used
    t.put(b"c", _turn(rid="c"))
    assert t.get(b"b") is None
    assert t.get(b"a") is not None and t.get(b"c") is not None
    assert len(t) == 2


def test_shared_table_evicts_the_oldest_and_keeps_turns_whole(tmp_path: Any) -> None:
    clock = Clock()
    t = _table("shared", tmp_path, 2, 1e9, clock)
    for k in (b"a", b"b", b"c"):
        clock.now += 1
        t.put(k, Turn("m-" + k.decode(), "r-" + k.decode(), clock.now, b"turn", word_set("one two three")))
    assert t.get(b"a") is None  # answered longest ago: gone beyond max_sessions
    got = t.get(b"c")
    assert got == Turn("m-c", "r-c", clock.now, b"turn", word_set("one two three"))
    assert len(t) == 2


def test_workers_share_sessions(tmp_path: Any) -> None:
    """Two trackers on one shared folder (two workers of `serve --workers 2`): a conversation
    answered by one continues on the other, re-ask included."""
    a = SessionTracker({"al": AliasConfig(sticky={}, implicit={})}, shared_dir=str(tmp_path))
    b = SessionTracker({"al": AliasConfig(sticky={}, implicit={})}, shared_dir=str(tmp_path))
    got: list[Outcome] = []
    b.sink = lambda o, al, k: got.append(o)
    q = {"role": "user", "content": "How do I reverse a list in Python?"}
    _answer(a, _ctx([q], "r1"), "m1")
    s = b.begin(_ctx([q, {"role": "assistant", "content": "x"}, dict(q)], "r2"), "al")
    assert s is not None and s.prev is not None and s.prev.model == "m1"
    assert got == [Outcome("r1", 0.0, "reask")]


def test_split_turn() -> None:
    u = {"role": "user", "content": "x"}
    a = {"role": "assistant", "content": "y"}
    tool = {"role": "tool", "content": "z", "tool_call_id": "1"}
    assert split_turn([u]) == (0, 0)
    assert split_turn([u, a, u]) == (2, 0)
    assert split_turn([u, a, tool]) == (0, 2)
    assert split_turn([{"role": "system", "content": "s"}]) == (-1, 1)


def test_word_sets_and_similarity() -> None:
    a = word_set("How do I reverse a list in Python?")
    assert a == word_set("how do i REVERSE a list in python")  # case and punctuation do not count
    assert similarity(a, a) == 1.0
    assert similarity(a, word_set("what is the capital of France")) == 0.0
    assert similarity(a, frozenset()) == 0.0
    # one of 8 distinct words differs: 7 shared of 9 in the union
    b = word_set("how do i reverse a list in rust")
    assert similarity(a, b) == pytest.approx(7 / 9)


def test_reask_threshold_and_min_words() -> None:
    prev = _turn(rid="prev", words="how do i reverse a list in python")
    assert detect_reask(prev, word_set("How do I reverse a list in Python??"), IM) == Outcome(
        "prev", 0.0, "reask"
    )
    near = word_set("how do i reverse a list in rust")  # similarity 7/9 = 0.78
    assert detect_reask(prev, near, IM) is None  # below the default 0.8
    assert detect_reask(prev, near, ImplicitConfig(reask_similarity=7 / 9)) is not None  # >= threshold
    short = _turn(rid="p", words="continue please")
    assert detect_reask(short, word_set("continue please"), IM) is None  # 2 words < reask_min_words 3
    assert detect_reask(short, word_set("continue please"), ImplicitConfig(reask_min_words=2)) is not None
    assert detect_reask(None, near, IM) is None


def test_regenerate_grades_the_earlier_answer() -> None:
    assert detect_regenerate(_turn(rid="r0"), ImplicitConfig(score=0.1)) == Outcome("r0", 0.1, "regenerate")
    assert detect_regenerate(None, IM) is None


@pytest.mark.parametrize(
    ("tool_msg", "failed"),
    [
        ({"role": "tool", "tool_call_id": "1", "content": "Error: file not found"}, True),
        ({"role": "tool", "tool_call_id": "1", "content": "Traceback (most recent call last): ..."}, True),
        ({"role": "tool", "tool_call_id": "1", "content": '{"error": "timeout"}'}, True),
        ({"role": "tool", "tool_call_id": "1", "content": "x", "is_error": True}, True),
        ({"role": "tool", "tool_call_id": "1", "content": [{"type": "text", "text": "error: 404"}]}, True),
        ({"role": "tool", "tool_call_id": "1", "content": '{"error": null, "result": 3}'}, False),
        ({"role": "tool", "tool_call_id": "1", "content": "No errors found; 3 files checked."}, False),
        ({"role": "tool", "tool_call_id": "1", "content": "42"}, False),
    ],
)
def test_tool_error(tool_msg: dict[str, Any], failed: bool) -> None:
    msgs = [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        tool_msg,
    ]
    out = detect_tool_error(msgs, _turn(rid="caller"), IM)
    assert out == (Outcome("caller", 0.0, "tool_error") if failed else None)


def test_tool_error_reads_only_the_latest_results() -> None:
    msgs = [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "tool_calls": [{"id": "1"}]},
        {"role": "tool", "tool_call_id": "1", "content": "Error: first try failed"},
        {"role": "assistant", "tool_calls": [{"id": "2"}]},
        {"role": "tool", "tool_call_id": "2", "content": "ok"},
    ]
    assert detect_tool_error(msgs, _turn(), IM) is None
    assert detect_tool_error(msgs[:3], None, IM) is None  # nothing to grade


def test_length_and_refusal() -> None:
    cut = [{"index": 0, "message": {"content": "a b c"}, "finish_reason": "length"}]
    done = [{"index": 0, "message": {"content": "a b c"}, "finish_reason": "stop"}]
    assert detect_length("r", cut, IM) == Outcome("r", 0.0, "length")
    assert detect_length("r", {"choices": cut}, IM) is not None
    assert detect_length("r", done, IM) is None
    no = [
        {
            "index": 0,
            "message": {"content": "I'm sorry, but I can't help with that."},
            "finish_reason": "stop",
        }
    ]
    assert detect_refusal("r", no, IM) == Outcome("r", 0.0, "refusal")
    assert detect_refusal("r", done, IM) is None
    assert detect_refusal("r", None, IM) is None


def _excluded(j: int, **kw: Any) -> str | None:
    base: dict[str, Any] = dict(
        allowed=None, input_tokens=10, windows=[1e9, 1e9], down=None, max_cost=None, min_quality=None
    )
    base.update(kw)
    return excluded_reason(j, 0, ["a", "b"], [0.9, 0.5], [1e-3, 1e-5], **base)


def test_excluded_reasons() -> None:
    assert _excluded(1) is None
    assert _excluded(1, allowed=["a"]) == "not_allowed"
    assert _excluded(1, windows=[1e9, 9]) == "context_window"
    assert _excluded(1, windows=[1e9, 10]) is None  # fits exactly
    assert _excluded(1, down=lambda m: m == "b") == "breaker_open"
    assert _excluded(1, min_quality=0.8) == "constraint"  # b misses 0.8, the pick a meets it
    assert _excluded(1, min_quality=0.95) is None  # neither meets it: not a reason to switch
    assert _excluded(0, max_cost=1e-4) is None  # only the sticky one is judged against the pick


def test_sticky_choice_margin() -> None:
    names = ["a", "b"]

    def never(j: int) -> None:
        return None

    # the router picks a (index 0); the session was on b; gain = 0.7 - 0.6 = 0.1
    j, v = sticky_choice("b", names, [0.7, 0.6], 0, 0.2, never)
    assert (j, v["state"]) == (1, "held") and v["gain"] == pytest.approx(0.1)
    j, v = sticky_choice("b", names, [0.7, 0.6], 0, 0.05, never)
    assert (j, v["state"], v["reason"]) == (0, "broken", "gain")
    j, v = sticky_choice("b", names, [0.75, 0.5], 0, 0.25, never)  # gain == margin: held (exceeds only)
    assert (j, v["state"]) == (1, "held")
    j, v = sticky_choice("a", names, [0.7, 0.6], 0, 0.0, never)  # sticky model is the pick
    assert (j, v["state"], v["gain"]) == (0, "held", 0.0)
    j, v = sticky_choice("b", names, [0.7, 0.6], 0, 1.0, lambda k: "breaker_open" if k == 1 else None)
    assert (j, v["state"], v["reason"]) == (0, "broken", "breaker_open")
    j, v = sticky_choice("gone", names, [0.7, 0.6], 0, 1.0, never)
    assert (j, v["reason"]) == (0, "not_candidate")
    assert sticky_header({"state": "new"}) == "new"
    assert sticky_header(v) == "broken model=gone reason=not_candidate"
    assert sticky_header({"state": "held", "model": "b", "gain": 0.1, "margin": 0.2}) == (
        "held model=b gain=0.1 margin=0.2"
    )


def _ctx(messages: list[dict[str, Any]], rid: str, **kw: Any) -> SimpleNamespace:
    return SimpleNamespace(
        messages=messages,
        body=kw.pop("body", {}),
        headers=kw.pop("headers", {}),
        key_id=kw.pop("key_id", None),
        endpoint=kw.pop("endpoint", "chat"),
        request_id=rid,
        extra={},
    )


def _tracker(**alias: Any) -> tuple[SessionTracker, list[tuple[Outcome, str, str | None]]]:
    tr = SessionTracker({"al": AliasConfig(**alias)})
    got: list[tuple[Outcome, str, str | None]] = []
    tr.sink = lambda o, a, k: got.append((o, a, k))
    return tr, got


def _answer(tr: SessionTracker, ctx: SimpleNamespace, model: str, response: Any = None) -> None:
    s = tr.begin(ctx, "al")
    ctx.extra["session"] = s
    tr.finished(ctx, model, 200, response)


def test_prefix_sessions_continue_and_scope() -> None:
    tr, _ = _tracker(sticky={})
    sys = {"role": "system", "content": "be brief"}
    u1 = {"role": "user", "content": "first question here"}
    a1 = {"role": "assistant", "content": "answer one"}
    u2 = {"role": "user", "content": "second question"}
    _answer(tr, _ctx([sys, u1], "r1"), "m1")
    s = tr.begin(_ctx([sys, u1, a1, u2], "r2"), "al")
    assert s is not None and s.prev is not None and (s.prev.model, s.source) == ("m1", "prefix")
    # the assistant's text is not hashed: a client that re-serialises it continues the session
    s = tr.begin(_ctx([sys, u1, {"role": "assistant", "content": "ANSWER ONE"}, u2], "r2"), "al")
    assert s is not None and s.prev is not None
    # another system prompt, another user or another key: another conversation
    assert tr.begin(_ctx([{"role": "system", "content": "be long"}, u1, a1, u2], "r"), "al").prev is None  # type: ignore[union-attr]
    assert tr.begin(_ctx([sys, u1, a1, u2], "r", body={"user": "bob"}), "al").prev is None  # type: ignore[union-attr]
    assert tr.begin(_ctx([sys, u1, a1, u2], "r", key_id="k2"), "al").prev is None  # type: ignore[union-attr]


def test_header_sessions() -> None:
    tr, _ = _tracker(sticky={})
    h = {"x-llmroute-session": "conv-1"}
    _answer(tr, _ctx([{"role": "user", "content": "hello there"}], "r1", headers=h), "m1")
    s = tr.begin(_ctx([{"role": "user", "content": "a different start"}], "r2", headers=h), "al")
    assert s is not None and s.prev is not None and (s.prev.request_id, s.source) == ("r1", "header")
    other = {"x-llmroute-session": "conv-2"}
    assert (
        tr.begin(_ctx([{"role": "user", "content": "hello there"}], "r3", headers=other), "al").prev is None
    )  # type: ignore[union-attr]


def test_tracker_emits_implicit_outcomes() -> None:
    tr, got = _tracker(implicit={})
    q = {"role": "user", "content": "How do I reverse a list in Python?"}
    _answer(tr, _ctx([q], "r1"), "m1")
    # regenerate: the same conversation again
    _answer(tr, _ctx([q], "r2"), "m1")
    assert got == [(Outcome("r1", 0.0, "regenerate"), "al", None)]
    # re-ask: the next turn asks the same again
    _answer(tr, _ctx([q, {"role": "assistant", "content": "use reversed()"}, dict(q)], "r3"), "m1")
    assert got[-1][0] == Outcome("r2", 0.0, "reask")
    # /v1/route decides without an answer: no signal, nothing recorded
    n = len(got)
    ctx = _ctx([q], "r4", endpoint="route")
    _answer(tr, ctx, "m1")
    assert len(got) == n
    # answer-level signals grade this request
    cut = [{"message": {"content": "x"}, "finish_reason": "length"}]
    _answer(tr, _ctx([{"role": "user", "content": "write a long story"}], "r5"), "m1", cut)
    assert got[-1][0] == Outcome("r5", 0.0, "length")


def test_switches_per_alias() -> None:
    tr, got = _tracker(implicit={"regenerate": False, "reask": False, "tool_error": False})
    assert "al" not in tr.tables  # only answer-level signals: no session kept
    q = {"role": "user", "content": "How do I reverse a list in Python?"}
    _answer(tr, _ctx([q], "r1"), "m1")
    _answer(tr, _ctx([q], "r2"), "m1")
    assert got == []
    refusal = [{"message": {"content": "I cannot help with that."}, "finish_reason": "stop"}]
    _answer(tr, _ctx([q], "r3"), "m1", refusal)
    assert got == [(Outcome("r3", 0.0, "refusal"), "al", None)]
    tr2, got2 = _tracker(implicit={"refusal": False, "length": False})
    _answer(tr2, _ctx([q], "r1"), "m1", refusal)
    assert got2 == []
    assert not SessionTracker({"al": AliasConfig()})  # neither block: nothing tracked


def test_metrics_counters() -> None:
    from llmroute.gateway.metrics import GatewayMetrics

    m = GatewayMetrics()
    m.observe_sticky("al", "held")
    m.observe_sticky("al", "held")
    m.observe_sticky("al", "broken_gain")
    m.observe_implicit("al", "reask")
    text = m.render()[0].decode()
    assert 'llmroute_sticky_decisions_total{alias="al",result="held"} 2.0' in text
    assert 'llmroute_sticky_decisions_total{alias="al",result="broken_gain"} 1.0' in text
    assert 'llmroute_implicit_outcomes_total{alias="al",source="reask"} 1.0' in text
    m.close()
