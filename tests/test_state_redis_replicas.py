"""Three `llmroute serve` replicas (one worker each, different ports, the same config) on one
Redis in front of the fake upstream: an exact budget under 500 concurrent requests, a Redis outage
(routing goes on, then recovers), a kill -9 mid-load losing no acknowledged spend, and the response
cache shared through the state's Redis. A real `redis-server` per module (see
`test_state_redis.py`; shared helpers in `state_redis_fixtures.py`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import RedisProc, Replica, loopback_config
from llmroute.gateway.auth import estimate_input_tokens, hash_key, max_request_cost
from state_redis_fixtures import (
    BUDGET_A,
    KEY_A,
    KEY_B,
    KEY_C,
    MESSAGES,
    PRICE_IN,
    PRICE_OUT,
    _flush,
    _spent,
    needs_redis,
    spend_rest,
)

pytestmark = needs_redis


# ---- end to end: three `llmroute serve` replicas on one Redis --------------------------------------


@pytest.fixture(scope="module")
def replicas(
    fake_server: Any, redis_proc: RedisProc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    tmp = tmp_path_factory.mktemp("replicas")
    _flush(redis_proc)
    cfg = loopback_config(fake_server.base_url, tmp)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    cfg["models"][0]["timeout_s"] = 30.0
    cfg["store"] = {"url": "memory://"}
    cfg["state"] = redis_proc.url
    cfg["keys"] = [
        {"id": "team-a", "key_sha256": hash_key(KEY_A), "budget_usd_day": BUDGET_A},
        {"id": "team-b", "key_sha256": hash_key(KEY_B), "budget_usd_day": 1000.0},
        {"id": "team-c", "key_sha256": hash_key(KEY_C)},
    ]
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reps = [Replica(path, tmp) for _ in range(3)]
    try:
        for r in reps:
            if not r.ready.wait(120):
                raise RuntimeError("replica did not start:\n" + "".join(r.lines[-30:]))
        yield reps
    finally:
        for r in reps:
            r.stop()


async def _burst(roots: list[str], key: str, n: int, on_ok: Any = None) -> list[tuple[str, float]]:
    """`n` concurrent chat requests spread round-robin over `roots`: (outcome, cost from usage)."""
    clients = [openai.AsyncOpenAI(base_url=f"{r}/v1", api_key=key, max_retries=0, timeout=120) for r in roots]

    async def one(i: int) -> tuple[str, float]:
        try:
            resp = await clients[i % len(clients)].chat.completions.create(
                model="fake-strong",
                messages=MESSAGES,
                max_tokens=50,  # type: ignore[arg-type]
            )
        except openai.APIStatusError as e:
            return str((e.body or {}).get("code") or e.status_code), 0.0  # type: ignore[union-attr]
        except openai.APIConnectionError:
            return "connection", 0.0
        u = resp.usage
        assert u is not None
        cost = (u.prompt_tokens * PRICE_IN + u.completion_tokens * PRICE_OUT) / 1e6
        if on_ok is not None:
            on_ok()
        return "ok", cost

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()


def test_replicas_budget_exact_under_500_concurrent(replicas: list[Replica], redis_proc: RedisProc) -> None:
    roots = [r.root for r in replicas]
    one_max = max_request_cost(PRICE_IN, PRICE_OUT, estimate_input_tokens(MESSAGES), 50)
    results = asyncio.run(_burst(roots, KEY_A, 500))
    outcomes = [o for o, _ in results]
    assert outcomes.count("ok") >= 3
    assert outcomes.count("ok") + outcomes.count("insufficient_quota") == 500, set(outcomes)
    acknowledged = sum(c for _, c in results)
    # holds were for the worst case: spend the rest one request at a time on each replica in turn
    acknowledged += spend_rest(roots)[0]
    spent, reserved = _spent(redis_proc, "team-a")
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert spent == pytest.approx(acknowledged, rel=1e-9)  # every answered cost, once
    # books kept per replica would let three replicas spend about three budgets
    assert BUDGET_A <= spent <= BUDGET_A + one_max, (spent, BUDGET_A, one_max)


def test_redis_outage_routing_goes_on_then_recovers(replicas: list[Replica], redis_proc: RedisProc) -> None:
    roots = [r.root for r in replicas]
    before, _ = _spent(redis_proc, "team-c")
    redis_proc.stop()
    try:
        results = asyncio.run(_burst(roots, KEY_C, 30))
        assert [o for o, _ in results] == ["ok"] * 30  # fail_open (the default): admitted
        outage_cost = sum(c for _, c in results)
        r = httpx.post(  # a routed alias routes on
            f"{roots[0]}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY_C}"},
            json={"model": "llmroute/auto", "messages": MESSAGES, "max_tokens": 20},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        prices = {"fake-strong": (PRICE_IN, PRICE_OUT), "fake-weak": (0.2, 0.2)}[
            r.headers["x-llmroute-model"]
        ]
        outage_cost += (u["prompt_tokens"] * prices[0] + u["completion_tokens"] * prices[1]) / 1e6
        for root in roots:
            h = httpx.get(f"{root}/healthz", timeout=30).json()
            assert h["status"] == "degraded" and h["state"]["ok"] is False, h
        metrics = httpx.get(f"{roots[0]}/metrics", timeout=30).text
        assert "llmroute_state_degraded 1.0" in metrics
    finally:
        redis_proc.start()
    deadline = time.monotonic() + 30
    for root in roots:  # each replica tries Redis again within a second and adds its queued costs
        while True:
            h = httpx.get(f"{root}/healthz", timeout=30).json()
            if h["status"] == "ok":
                break
            assert time.monotonic() < deadline, h
            time.sleep(0.2)
        assert h["state"]["ok"] is True
    assert "llmroute_state_degraded 0.0" in httpx.get(f"{roots[1]}/metrics", timeout=30).text
    spent, reserved = _spent(redis_proc, "team-c")
    assert spent - before == pytest.approx(outage_cost, rel=1e-9)
    assert reserved == pytest.approx(0.0, abs=1e-12)


def test_kill_9_of_a_replica_mid_load_loses_no_acknowledged_spend(
    replicas: list[Replica], redis_proc: RedisProc, fake_server: Any
) -> None:
    roots = [r.root for r in replicas]
    before, _ = _spent(redis_proc, "team-b")
    victim = replicas[2]
    done = [0]

    def on_ok() -> None:
        done[0] += 1
        if done[0] == 60:  # mid-load: answers are flowing and many requests are in flight
            os.kill(victim.proc.pid, signal.SIGKILL)

    fake_server.set_fault("fake-strong", "slow", delay=0.05)  # keep requests in flight at the kill
    try:
        results = asyncio.run(_burst(roots, KEY_B, 300, on_ok))
    finally:
        fake_server.clear()
    victim.proc.wait(30)
    outcomes = [o for o, _ in results]
    acknowledged = sum(c for _, c in results)
    lost = len(outcomes) - outcomes.count("ok")
    # the survivors answered their share (the victim's cut-off count depends on timing: not asserted)
    assert outcomes.count("ok") >= 200, outcomes
    one_max = max_request_cost(PRICE_IN, PRICE_OUT, estimate_input_tokens(MESSAGES), 50)
    spent, _ = _spent(redis_proc, "team-b")
    # every acknowledged cost is in Redis; at most the cut-off requests' costs besides
    assert acknowledged - 1e-12 <= spent - before <= acknowledged + lost * one_max
    # the survivors still serve the key
    for root in roots[:2]:
        r = httpx.post(
            f"{root}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY_B}"},
            json={"model": "fake-strong", "messages": MESSAGES, "max_tokens": 50},
            timeout=60,
        )
        assert r.status_code == 200, r.text


def test_response_cache_is_shared_through_the_state_redis(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path
) -> None:
    """`cache:` without a backend lives on the state's Redis: an answer cached by one replica is
    a hit on another."""
    from conftest import StubRouter, run_gateway

    _flush(redis_proc)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["store"] = {"url": "memory://"}
    cfg["state"] = redis_proc.url
    cfg["cache"] = {"semantic": False}
    body = {"model": "fake-weak", "messages": MESSAGES, "max_tokens": 20}
    with run_gateway(cfg, {"default": StubRouter()}) as a, run_gateway(cfg, {"default": StubRouter()}) as b:
        first = httpx.post(f"{a}/chat/completions", json=body, timeout=60)
        assert first.status_code == 200 and "cache: hit" not in first.headers["x-llmroute-reason"]
        second = httpx.post(f"{b}/chat/completions", json=body, timeout=60)
        assert second.status_code == 200 and "cache: hit" in second.headers["x-llmroute-reason"], (
            second.headers
        )
        assert second.json()["choices"] == first.json()["choices"]
