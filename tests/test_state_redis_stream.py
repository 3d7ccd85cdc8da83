"""Streamed requests on Redis shared state, on the non-blocking path (issue 16): exact budgets over
replicas, a disconnect billed, a stream cancelled during its settle booked and traced, and the
passthrough, cascade and cache paths booking without a blocking ledger call. A real
`redis-server` per module (see `test_state_redis.py`; shared helpers in `state_redis_fixtures.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import RedisProc, loopback_config
from llmroute.gateway.auth import estimate_input_tokens, hash_key, max_request_cost
from state_redis_fixtures import BUDGET_A, MESSAGES, PRICE_IN, PRICE_OUT, _flush, _spent, needs_redis

pytestmark = needs_redis


# ---- streamed requests on the non-blocking path (issue 16) ------------------------------------------

KEY_S = "sk-state-stream-0123456789"


def _stream_config(fake_url: str, tmp: Path, redis_url: str, budget: float) -> dict[str, Any]:
    cfg = loopback_config(fake_url, tmp)
    cfg["models"][0]["timeout_s"] = 30.0
    cfg["state"] = redis_url
    cfg["keys"] = [{"id": "stream", "key_sha256": hash_key(KEY_S), "budget_usd_day": budget}]
    return cfg


def _no_blocking_ledger_calls(monkeypatch: pytest.MonkeyPatch, app: Any, calls: list[str]) -> None:
    """Record every call of the blocking `RedisLedger.reserve` / `settle` on `app`'s budgets (the
    request paths must use `reserve_async` / `settle_async`)."""
    ledger = app.budgets._ledger
    assert ledger is not None and hasattr(ledger, "settle_async")
    for name in ("reserve", "settle"):
        blocking = getattr(ledger, name)

        def record(*a: Any, _name: str = name, _f: Any = blocking) -> Any:
            calls.append(_name)
            return _f(*a)

        monkeypatch.setattr(ledger, name, record)


def _stream_cost(chunks: list[Any]) -> float:
    u = next(c.usage for c in chunks if c.usage)
    return (u.prompt_tokens * PRICE_IN + u.completion_tokens * PRICE_OUT) / 1e6


def test_streamed_budget_is_exact_over_replicas_on_the_async_path(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three gateways on one Redis, 150 concurrent streamed requests and then one at a time until
    refused: Redis's spend equals the streamed answers' costs (from their usage), within the budget
    plus one request's maximum, no hold left, and no blocking Redis call on the way."""
    from conftest import StubRouter, run_gateway

    _flush(redis_proc)
    cfg = _stream_config(fake_server.base_url, tmp_path, redis_proc.url, BUDGET_A)
    one_max = max_request_cost(PRICE_IN, PRICE_OUT, estimate_input_tokens(MESSAGES), 50)
    calls: list[str] = []
    with contextlib.ExitStack() as stack:
        gws = [stack.enter_context(run_gateway(cfg, {"default": StubRouter()})) for _ in range(3)]
        for gw in gws:
            _no_blocking_ledger_calls(monkeypatch, gw.app, calls)

        async def main() -> tuple[list[str], float]:
            clients = [openai.AsyncOpenAI(base_url=g, api_key=KEY_S, max_retries=0, timeout=120) for g in gws]

            async def one(i: int) -> tuple[str, float]:
                try:
                    s = await clients[i % 3].chat.completions.create(
                        model="fake-strong",
                        messages=MESSAGES,  # type: ignore[arg-type]
                        max_tokens=50,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    return "ok", _stream_cost([c async for c in s])
                except openai.APIStatusError as e:
                    return str((e.body or {}).get("code") or e.status_code), 0.0  # type: ignore[union-attr]

            try:
                burst = await asyncio.gather(*(one(i) for i in range(150)))
                outcomes = [o for o, _ in burst]
                acknowledged = sum(c for _, c in burst)
                refused, i = 0, 0
                while refused < 6 and i < 300:  # the rest of the budget, one request at a time
                    o, c = await one(i)
                    i += 1
                    outcomes.append(o)
                    acknowledged += c
                    refused = 0 if o == "ok" else refused + 1
                return outcomes, acknowledged
            finally:
                for c in clients:
                    await c.close()

        outcomes, acknowledged = asyncio.run(main())
    assert set(outcomes) == {"ok", "insufficient_quota"}, set(outcomes)
    assert outcomes.count("ok") >= 3
    spent, reserved = _spent(redis_proc, "stream")
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert spent == pytest.approx(acknowledged, rel=1e-9)  # every streamed answer's cost, once
    assert BUDGET_A <= spent <= BUDGET_A + one_max, (spent, BUDGET_A, one_max)
    assert calls == []  # holds and settles went through the non-blocking calls


def test_streamed_disconnect_is_billed_with_redis_state(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes away mid-stream: the 499 trace row carries the estimated cost of what
    was streamed, Redis books exactly that, no hold is left, and no blocking Redis call was made."""
    from conftest import StubRouter, run_gateway

    _flush(redis_proc)
    cfg = _stream_config(fake_server.base_url, tmp_path, redis_proc.url, 100.0)
    msgs = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper, please."}]
    calls: list[str] = []
    with run_gateway(cfg, {"default": StubRouter()}) as gw:
        _no_blocking_ledger_calls(monkeypatch, gw.app, calls)
        client = openai.OpenAI(base_url=gw, api_key=KEY_S, max_retries=0, timeout=30)
        fake_server.set_fault("fake-strong", "drip", delay=0.3)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-strong",
                messages=msgs,  # type: ignore[arg-type]
                max_tokens=50,
                stream=True,
            )
            rid = raw.headers["x-llmroute-request-id"]
            stream = raw.parse()
            got = ""
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got += chunk.choices[0].delta.content
                    break
            stream.close()  # the client goes away mid-stream
            rec = _poll(lambda: _flushed(gw.app, rid), "the disconnected stream's trace row")
        finally:
            fake_server.clear()
        input_only = gw.app._estimated_cost("fake-strong", {"messages": msgs}, "")[2]
        spent, reserved = _poll(
            lambda: (lambda v: v if v[1] == 0 else None)(_spent(redis_proc, "stream")), "the settle"
        )
    assert got and rec["status"] == 499 and rec["extra"]["cost_source"] == "estimate"
    assert rec["cost_usd"] > input_only  # what was streamed is billed besides the input
    assert spent == pytest.approx(rec["cost_usd"], rel=1e-9)
    assert reserved == 0
    assert calls == []


def test_a_stream_cancelled_during_its_settle_is_booked_and_traced(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client goes away after the whole answer arrived but while Redis is booking its cost
    (redis-server paused): the trace row is still written (499, the upstream's usage), and the
    settle lands once Redis answers again, with no hold left."""
    import threading

    from conftest import StubRouter, run_gateway

    _flush(redis_proc)
    cfg = _stream_config(fake_server.base_url, tmp_path, redis_proc.url, 100.0)
    text = "Name three lighthouses, please (settle interrupted)."
    got: dict[str, Any] = {}
    calls: list[str] = []
    with run_gateway(cfg, {"default": StubRouter()}) as gw:
        _no_blocking_ledger_calls(monkeypatch, gw.app, calls)
        client = openai.OpenAI(base_url=gw, api_key=KEY_S, max_retries=0, timeout=60)

        def ask() -> None:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-strong",
                messages=[{"role": "user", "content": text}],
                max_tokens=50,
                stream=True,
                stream_options={"include_usage": True},
            )
            got["rid"] = raw.headers["x-llmroute-request-id"]
            stream = raw.parse()
            for chunk in stream:
                if chunk.usage:  # the whole answer is here; only the closing [DONE] is not
                    got["cost"] = _stream_cost([chunk])
                    break
            stream.close()  # the client goes away while the gateway waits for Redis

        fake_server.set_fault("fake-strong", "hold")
        paused = False
        try:
            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            # the hold is reserved and the upstream reached: pause Redis, then let the answer go
            _poll(lambda: fake_server.state.calls[("fake-strong", text)] or None, "the upstream call")
            os.kill(redis_proc.proc.pid, signal.SIGSTOP)
            paused = True
            fake_server.state.release_holds()
            asker.join(60)
            assert not asker.is_alive()
            rec = _poll(lambda: _flushed(gw.app, got["rid"]), "the trace row, Redis still paused")
        finally:
            if paused:
                os.kill(redis_proc.proc.pid, signal.SIGCONT)
            fake_server.clear()
        spent, reserved = _poll(
            lambda: (lambda v: v if v[0] > 0 else None)(_spent(redis_proc, "stream")), "the settle"
        )
    assert rec["status"] == 499 and rec["extra"]["cost_source"] == "usage"
    assert rec["cost_usd"] == pytest.approx(got["cost"], rel=1e-9)
    assert spent == pytest.approx(got["cost"], rel=1e-9)
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert calls == []


def test_passthrough_cascade_and_cache_paths_book_on_redis_without_blocking(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embeddings, completions (plain and streamed), a cascade (plain and streamed) and a cache hit
    with Redis state: Redis books exactly the traced costs, no hold is left, and no request made
    a blocking Redis call."""
    from conftest import StubRouter, run_gateway

    _flush(redis_proc)
    cfg = _stream_config(fake_server.base_url, tmp_path, redis_proc.url, 100.0)
    cfg["models"][1]["timeout_s"] = 30.0
    both = ["fake-weak", "fake-strong"]
    cfg["aliases"]["c/two"] = {"candidates": both, "cascade": {"models": both, "max_steps": 2}}
    cfg["cache"] = {"semantic": False}
    calls: list[str] = []
    with run_gateway(cfg, {"default": StubRouter()}) as gw:
        _no_blocking_ledger_calls(monkeypatch, gw.app, calls)
        c = openai.OpenAI(base_url=gw, api_key=KEY_S, max_retries=0, timeout=60)
        rids = []
        for create in (
            lambda: c.embeddings.with_raw_response.create(model="fake-weak", input=["a lighthouse"]),
            lambda: c.completions.with_raw_response.create(
                model="fake-strong", prompt="Say hi", max_tokens=20
            ),
            lambda: c.completions.with_raw_response.create(
                model="fake-strong", prompt="Say hi again", max_tokens=20, stream=True
            ),
            lambda: c.chat.completions.with_raw_response.create(
                model="c/two",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=20,
            ),
            lambda: c.chat.completions.with_raw_response.create(
                model="c/two",
                messages=[{"role": "user", "content": "And why is the sea blue?"}],
                max_tokens=20,
                stream=True,
            ),
            lambda: c.chat.completions.with_raw_response.create(
                model="fake-weak",
                messages=[{"role": "user", "content": "Cache me"}],
                max_tokens=20,
            ),
            lambda: c.chat.completions.with_raw_response.create(  # the cache hit: released
                model="fake-weak",
                messages=[{"role": "user", "content": "Cache me"}],
                max_tokens=20,
            ),
        ):
            raw = create()
            assert raw.http_response.status_code == 200
            raw.http_response.read()
            rids.append(raw.headers["x-llmroute-request-id"])
        assert "cache: hit" in raw.headers["x-llmroute-reason"]
        recs = [_poll(lambda r=rid: _flushed(gw.app, r), "a trace row") for rid in rids]
    assert [r["status"] for r in recs] == [200] * len(recs)
    assert recs[3]["extra"]["cost_source"] == recs[4]["extra"]["cost_source"] == "cascade"
    assert all(r["cost_usd"] > 0 for r in recs[:6])
    spent, reserved = _spent(redis_proc, "stream")
    assert spent == pytest.approx(sum(r["cost_usd"] for r in recs), rel=1e-9)
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert calls == []


def _flushed(app: Any, rid: str) -> Any:
    app.store.flush_sync(5)
    return app.store.get(rid)


def _poll(value: Any, what: str) -> Any:
    """`value()` once it is not None (a hang guard of 20 s, not a speed bar)."""
    for _ in range(400):
        v = value()
        if v is not None:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
