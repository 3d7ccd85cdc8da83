"""Issue #11 item 3: bad input never costs a budget hold and never gives a 5xx.

Deeply nested JSON is a 400 before any hold (`server.max_json_depth`, default 64); every exit of
the request pipeline releases the key's hold (fault injection at each stage after the hold: the
in-flight reservation returns to 0 and the next request is admitted); an unexpected exception is
a 500 with a trace row and a metric, and repeated identical errors are rate-limited in the log.
Real gateway and fake upstream on 127.0.0.1, official openai client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from conftest import GatewayHandle, StubRouter, loopback_config, run_gateway
from llmroute.gateway.api_openai import OpenAIChat, OpenAIStream
from llmroute.gateway.asgi import MAX_JSON_DEPTH, ErrorLog, json_too_deep
from llmroute.gateway.auth import hash_key

KEY = "sk-holds-0123456789abcdef"
# one request's hold (fake-strong: 4,096 output tokens at $30/Mtok, about $0.12) is above the
# budget: a single leaked hold locks the key out, so "the next request is admitted" proves release
BUDGET = 0.05
HI = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("holds"))
    cfg["keys"] = [{"id": "k", "key_sha256": hash_key(KEY), "budget_usd_day": BUDGET}]
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        yield url


def _client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=10)


def _reserved(gw: GatewayHandle) -> float:
    return float(gw.app.budgets.usage("k")["day_reserved"])


def _admitted(gw: GatewayHandle) -> None:
    """No hold is left and a normal request gets through (a leaked hold would make it a 429)."""
    assert _reserved(gw) == 0.0
    r = _client(gw).chat.completions.create(model="llmroute/auto", messages=HI)
    assert r.choices[0].message.content
    assert _reserved(gw) == 0.0


def _nested(levels: int) -> Any:
    """A JSON value `levels` deep: lists in lists (1 = an empty list)."""
    v: Any = []
    for _ in range(levels - 1):
        v = [v]
    return v


def _post_raw(gw: GatewayHandle, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{gw}/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        timeout=10,
    )


# ---- nesting depth -------------------------------------------------------------------------------


def test_json_too_deep_counts_levels() -> None:
    body = {"a": _nested(63)}  # the object is level 1: 64 in all
    raw = orjson.dumps(body)
    assert not json_too_deep(raw, body, 64)
    assert json_too_deep(raw, body, 63)
    deep = {"a": [{"b": _nested(64)}]}  # objects and lists both count: 1 + 1 + 1 + 64
    assert json_too_deep(orjson.dumps(deep), deep, 66)
    assert not json_too_deep(orjson.dumps(deep), deep, 67)
    # many brackets (in strings, in wide shallow arrays) are not depth
    wide = {"messages": [{"role": "user", "content": "[[[{{{" * 100}] * 200}
    assert not json_too_deep(orjson.dumps(wide), wide, 3)
    assert json_too_deep(orjson.dumps(wide), wide, 2)


@pytest.mark.parametrize("where", ["extra", "content", "tools", "llmroute", "message_field"])
@pytest.mark.parametrize("levels", [65, 254, 600])
def test_deep_nesting_is_a_400_before_any_hold(gw: GatewayHandle, where: str, levels: int) -> None:
    deep = _nested(levels)
    extra: dict[str, Any] = {}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hello"}]
    if where == "extra":
        extra["metadata"] = {"x": deep}
    elif where == "content":
        messages = [{"role": "user", "content": [{"type": "text", "text": "hi", "x": deep}]}]
    elif where == "tools":
        extra["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"x": deep}}}]
    elif where == "llmroute":
        extra["llmroute"] = {"tradeoff": deep}
    else:
        messages = [{"role": "user", "content": "hello", "x": deep}]
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw).chat.completions.create(model="llmroute/auto", messages=messages, extra_body=extra)  # type: ignore[arg-type]
    assert e.value.body["code"] == "json_too_deep"  # type: ignore[index]
    assert f"more than {MAX_JSON_DEPTH} levels" in e.value.body["message"]  # type: ignore[index]
    _admitted(gw)


@pytest.mark.parametrize("levels", [1023, 1024, 5000])
def test_deeper_than_the_parser_is_a_400_too(gw: GatewayHandle, levels: int) -> None:
    body = b'{"model":"llmroute/auto","messages":[{"role":"user","content":"hi"}],"x":%s}' % (
        b"[" * levels + b"]" * levels
    )
    r = _post_raw(gw, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"
    _admitted(gw)


def test_the_limit_is_inclusive_and_configurable(fake_server: Any, tmp_path: Path) -> None:
    def body(levels: int) -> bytes:  # `levels` deep in all: the body object is level 1
        return orjson.dumps({"model": "llmroute/auto", "messages": HI, "metadata": _nested(levels - 1)})

    cfg = loopback_config(fake_server.base_url, tmp_path, max_json_depth=8)
    cfg["keys"] = [{"id": "k", "key_sha256": hash_key(KEY), "budget_usd_day": BUDGET}]
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        assert _post_raw(url, body(8)).status_code == 200
        r = _post_raw(url, body(9))
        assert r.status_code == 400 and "more than 8 levels" in r.json()["error"]["message"]
        # /v1/route reads its body the same way
        r = httpx.post(f"{url}/route", content=body(9), headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"


def test_the_default_limit_is_64(tmp_path: Path) -> None:
    from llmroute.gateway.config import parse_config

    cfg = parse_config(loopback_config("http://127.0.0.1:9/v1", tmp_path))
    assert cfg.server.max_json_depth == MAX_JSON_DEPTH == 64


# ---- every exit path releases the hold -----------------------------------------------------------


class Boom(RuntimeError):
    """The injected fault."""


def _boom(*_: Any, **__: Any) -> Any:
    raise Boom("injected fault")


async def _aboom(*_: Any, **__: Any) -> Any:
    raise Boom("injected fault")


def _inject(gw: GatewayHandle, mp: pytest.MonkeyPatch, stage: str) -> None:
    app = gw.app
    if stage == "decide":
        mp.setattr(app.engine, "decide", _aboom)
    elif stage == "cache":  # a cache hit whose stored answer cannot be read
        decide = app.engine.decide

        async def hit(ctx: Any) -> Any:
            d = await decide(ctx)
            ctx.extra["cache_hit"] = object()
            return d

        mp.setattr(app.engine, "decide", hit)
    elif stage == "execute":
        mp.setattr(app.executor, "complete", _aboom)
    elif stage == "execute_stream":
        mp.setattr(app.executor, "stream", _aboom)
    elif stage == "response":
        mp.setattr(OpenAIChat, "response", _boom)
    elif stage == "stream_chunk":  # after the response started
        mp.setattr(OpenAIStream, "feed", _boom)
    elif stage == "finish":  # the metrics/trace step after the answer was sent
        mp.setattr(app, "_finish", _boom)
    else:  # pragma: no cover
        raise AssertionError(stage)


STAGES = ["decide", "cache", "execute", "execute_stream", "response", "stream_chunk", "finish"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_exit_path_releases_the_hold(gw: GatewayHandle, stage: str) -> None:
    stream = stage in ("execute_stream", "stream_chunk")
    req = {"model": "llmroute/auto", "messages": HI, "stream": stream}
    auth = {"authorization": f"Bearer {KEY}"}
    with pytest.MonkeyPatch.context() as mp:
        _inject(gw, mp, stage)
        if stage == "stream_chunk":  # the response had started: the stream can only be cut short
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.post(f"{gw}/chat/completions", json=req, headers=auth, timeout=10)
        else:
            r = httpx.post(f"{gw}/chat/completions", json=req, headers=auth, timeout=10)
            if stage == "finish":
                assert r.status_code == 200  # the answer went out before the failing step
            else:
                assert r.status_code == 500
                assert r.json()["error"]["code"] == "internal_error"
                assert "injected" not in r.text  # internals stay in the log
    _admitted(gw)


def test_internal_error_gets_a_trace_row_and_a_metric(gw: GatewayHandle) -> None:
    with pytest.MonkeyPatch.context() as mp:
        _inject(gw, mp, "execute")
        r = httpx.post(
            f"{gw}/chat/completions",
            json={"model": "llmroute/auto", "messages": HI},
            headers={"authorization": f"Bearer {KEY}"},
            timeout=10,
        )
    assert r.status_code == 500
    rid = r.headers["x-llmroute-request-id"]
    gw.app.store.flush_sync(5)
    rec = gw.app.store.get(rid)
    assert rec is not None and rec["status"] == 500 and rec["key_id"] == "k"
    assert rec["error"] == "internal error: Boom"
    text = httpx.get(f"{gw.root}/metrics", timeout=10).text
    assert any(
        line.startswith("llmroute_requests_total{") and 'status="500"' in line and not line.endswith(" 0.0")
        for line in text.splitlines()
    ), text


def test_repeated_identical_errors_are_rate_limited_in_the_log(
    gw: GatewayHandle, caplog: pytest.LogCaptureFixture
) -> None:
    gw.app.errors._kinds.clear()
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.ERROR, logger="llmroute.gateway"):
        _inject(gw, mp, "execute")
        for _ in range(5):
            r = httpx.post(
                f"{gw}/chat/completions",
                json={"model": "llmroute/auto", "messages": HI},
                headers={"authorization": f"Bearer {KEY}"},
                timeout=10,
            )
            assert r.status_code == 500
    logged = [
        rec for rec in caplog.records if rec.name == "llmroute.gateway" and "internal error" in rec.message
    ]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the first, with its traceback
    _admitted(gw)


def test_error_log_first_of_each_kind_per_window_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    elog = ErrorLog(logging.getLogger("llmroute.test.errors"), window_s=60, clock=lambda: now[0])

    def fail(kind: type[Exception]) -> Exception:
        try:
            raise kind("x")
        except Exception as e:
            return e

    with caplog.at_level(logging.ERROR, logger="llmroute.test.errors"):
        assert elog.exception(fail(ValueError), "boom %s", 1)
        assert not elog.exception(fail(ValueError), "boom %s", 2)
        assert not elog.exception(fail(ValueError), "boom %s", 3)
        assert elog.exception(fail(KeyError), "other")  # another kind is logged at once
        now[0] = 59.9
        assert not elog.exception(fail(ValueError), "boom %s", 4)
        now[0] = 60.0  # a new window: logged again, with the count of those not logged
        assert elog.exception(fail(ValueError), "boom %s", 5)
        assert not elog.exception(fail(ValueError), "boom %s", 6)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "boom 1",
        "other",
        "boom 5 (3 more of this kind in the last 60 s not logged)",
    ]
    assert all(r.exc_info is not None for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="llmroute.test.errors"):
        elog.flush()  # at shutdown: the one not logged yet is counted
        elog.flush()  # and only once
    assert [r.getMessage() for r in caplog.records] == [
        f"1 more ValueError errors (raised at {__file__}:{fail.__code__.co_firstlineno + 2}) not logged"
    ]
