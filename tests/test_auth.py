"""API keys, permissions, rate limits and budgets (atomic under 200 concurrent requests)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmroute.gateway.auth import (
    ApiKey,
    Authenticator,
    BudgetManager,
    GatewayError,
    TokenBucket,
    estimate_input_tokens,
    extract_key,
    generate_key,
    hash_key,
    max_request_cost,
    period_ids,
)
from llmroute.gateway.config import KeyConfig
from llmroute.gateway.store import open_store

KEY_A = "sk-test-alpha-0123456789"
KEY_B = "sk-test-beta-9876543210"


def _keys(**over: object) -> list[KeyConfig]:
    a = {"id": "team-a", "key_sha256": hash_key(KEY_A), **over}
    return [
        KeyConfig(**a),
        KeyConfig(id="team-b", key_sha256=hash_key(KEY_B), aliases=["llmroute/cheap", "fake-*"]),
    ]


class FakeClock:
    def __init__(self, t: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.t = t

    def __call__(self) -> float:
        return self.t


def _run_threads(threads: list[threading.Thread]) -> None:
    """Start and join `threads`, then re-raise the first exception any of them raised (an assertion
    failing inside a thread would otherwise only be printed, and the test would pass)."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    for t in threads:
        target = t.run

        def run(target: Any = target) -> None:
            try:
                target()
            except BaseException as e:
                with lock:
                    errors.append(e)

        t.run = run  # type: ignore[method-assign]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_thread_failures_fail_the_test() -> None:
    def boom() -> None:
        raise AssertionError("inside a thread")

    with pytest.raises(AssertionError, match="inside a thread"):
        _run_threads([threading.Thread(target=boom)])


def test_hash_and_extract() -> None:
    assert hash_key(KEY_A) == hashlib.sha256(KEY_A.encode()).hexdigest()
    assert hash_key(f"  {KEY_A}\n") == hash_key(KEY_A)
    k = generate_key()
    assert k.startswith("sk-llmroute-") and len(k) > 40 and generate_key() != k
    assert extract_key({"authorization": f"Bearer {KEY_A}"}) == KEY_A
    assert extract_key({"authorization": f"bearer   {KEY_A} "}) == KEY_A
    assert extract_key({"x-api-key": KEY_A}) == KEY_A
    assert extract_key({"authorization": "Basic abc"}) is None
    assert extract_key({"authorization": "Bearer "}) is None
    assert extract_key({}) is None


def test_open_gateway_without_keys() -> None:
    auth = Authenticator([])
    assert not auth.enabled
    assert auth.admit({}, "llmroute/auto") is None
    budgets = BudgetManager([])
    res = budgets.reserve(None, 10.0)
    budgets.commit(res, 5.0)  # no-op


def test_401_missing_and_invalid_key_never_echo_the_key() -> None:
    auth = Authenticator(_keys())
    assert auth.enabled
    with pytest.raises(GatewayError) as e:
        auth.admit({}, "llmroute/auto")
    assert e.value.status == 401
    body = e.value.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in body["error"]["message"]
    assert e.value.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(GatewayError) as e:
        auth.admit({"authorization": "Bearer sk-wrong-secret-value"}, "llmroute/auto")
    assert e.value.status == 401
    assert "sk-wrong-secret-value" not in str(e.value.body()) and "sk-wrong" not in repr(e.value)
    key = auth.admit({"authorization": f"Bearer {KEY_A}"}, "llmroute/auto")
    assert key is not None and key.id == "team-a"
    key = auth.admit({"x-api-key": KEY_B}, "llmroute/cheap")
    assert key is not None and key.id == "team-b"


def test_403_model_not_allowed() -> None:
    auth = Authenticator(_keys())
    assert auth.admit({"x-api-key": KEY_B}, "fake-weak") is not None  # glob pattern
    with pytest.raises(GatewayError) as e:
        auth.admit({"x-api-key": KEY_B}, "llmroute/best")
    assert e.value.status == 403
    assert e.value.body()["error"]["code"] == "model_not_allowed"
    assert e.value.body()["error"]["param"] == "model"
    assert e.value.key_id == "team-b"
    assert "llmroute/best" in e.value.message and "team-b" in e.value.message


def test_key_from_env_and_bad_config() -> None:
    cfg = KeyConfig(id="env-key", key_env="MY_GATEWAY_KEY")
    auth = Authenticator([cfg], env={"MY_GATEWAY_KEY": "sk-from-env"})
    assert auth.admit({"x-api-key": "sk-from-env"}).id == "env-key"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="MY_GATEWAY_KEY"):
        Authenticator([cfg], env={})
    with pytest.raises(ValueError, match="configured twice"):
        Authenticator([{"id": "x", "key_sha256": hash_key("k")}, {"id": "y", "key_sha256": hash_key("k")}])


def test_rate_limit_token_bucket_with_retry_after() -> None:
    clock = FakeClock(100.0)
    auth = Authenticator(_keys(rpm=60), burst_s=3.0, clock=clock)  # 1 request/s, bucket of 3
    hdr = {"x-api-key": KEY_A}
    for _ in range(3):
        auth.admit(hdr, "llmroute/auto")
    with pytest.raises(GatewayError) as e:
        auth.admit(hdr, "llmroute/auto")
    assert e.value.status == 429
    assert e.value.body()["error"]["code"] == "rate_limit_exceeded"
    assert e.value.headers["Retry-After"] == "1"
    auth.admit({"x-api-key": KEY_B}, "llmroute/cheap")  # other keys are unaffected (no rpm)
    clock.t += 1.0
    auth.admit(hdr, "llmroute/auto")
    with pytest.raises(GatewayError):
        auth.admit(hdr, "llmroute/auto")
    clock.t += 100.0  # refills only up to the bucket size
    for _ in range(3):
        auth.admit(hdr, "llmroute/auto")
    with pytest.raises(GatewayError):
        auth.admit(hdr, "llmroute/auto")


def test_token_bucket_threads_grant_exactly_capacity() -> None:
    bucket = TokenBucket(rate=1e-9, capacity=50)
    granted = []

    def take() -> None:
        for _ in range(20):
            if bucket.take() == 0.0:
                granted.append(1)

    _run_threads([threading.Thread(target=take) for _ in range(10)])
    assert len(granted) == 50


def test_cost_helpers() -> None:
    assert max_request_cost(1.0, 2.0, 1000, 500) == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    msgs = [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": None}]
    assert estimate_input_tokens(msgs) >= 100
    assert estimate_input_tokens("hello world") >= 3
    parts = [{"role": "user", "content": [{"type": "text", "text": "a" * 90}, {"type": "image_url"}]}]
    assert estimate_input_tokens(parts) >= 30 + 85
    assert period_ids(1_767_225_600.0) == ("d:2026-01-01", "m:2026-01")


def test_budget_reserve_commit_release_and_retry_after() -> None:
    clock = FakeClock(1_767_225_600.0 + 3600)  # 01:00 UTC
    b = BudgetManager(_keys(budget_usd_day=1.0, budget_usd_month=2.0), clock=clock)
    key = ApiKey(id="team-a", sha256="")
    r1 = b.reserve(key, 0.6)
    r2 = b.reserve("team-a", 0.6)  # admitted: spend + reserved (0.6) < 1.0
    with pytest.raises(GatewayError) as e:
        b.reserve("team-a", 0.01)  # 1.2 in flight >= 1.0
    assert e.value.status == 429 and e.value.body()["error"]["code"] == "insufficient_quota"
    assert e.value.headers["Retry-After"] == str(23 * 3600)
    assert e.value.key_id == "team-a"
    b.release(r2)
    b.commit(r1, 0.3)  # reconciled with the actual cost
    b.commit(r1, 0.3)  # settling twice is a no-op
    assert b.usage("team-a") == {
        "day_spent": 0.3,
        "day_reserved": 0.0,
        "month_spent": 0.3,
        "month_reserved": 0.0,
    }
    r3 = b.reserve("team-a", 2.0)
    b.commit(r3, 0.8)
    with pytest.raises(GatewayError):
        b.reserve("team-a", 0.0)  # day spent 1.1 >= 1.0
    clock.t += 86400  # next day: the daily budget resets, the monthly one keeps counting
    b.commit(b.reserve("team-a", 0.5), 0.95)
    assert b.usage("team-a")["day_spent"] == pytest.approx(0.95)
    assert b.usage("team-a")["month_spent"] == pytest.approx(2.05)
    with pytest.raises(GatewayError) as e:
        b.reserve("team-a", 0.0)
    assert "monthly" in e.value.message
    # a key without budgets is never refused
    b.commit(b.reserve("team-b", 1e6), 1e6)
    b.reserve("team-b", 1e6)


def test_zero_budget_refuses_everything() -> None:
    b = BudgetManager(_keys(budget_usd_day=0.0))
    with pytest.raises(GatewayError):
        b.reserve("team-a", 0.0)


def _check_bound(spent: float, budget: float, max_costs: list[float]) -> None:
    assert spent <= budget + max(max_costs) + 1e-12, (spent, budget)


def test_budget_200_concurrent_threads_overspend_at_most_one_request() -> None:
    budget = 0.05
    b = BudgetManager(_keys(budget_usd_day=budget))
    rng = random.Random(1)
    max_costs = [rng.uniform(0.001, 0.01) for _ in range(200)]
    start = threading.Barrier(200)
    outcomes: list[str] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        start.wait()
        try:
            res = b.reserve("team-a", max_costs[i])
        except GatewayError as e:
            assert e.status == 429
            with lock:
                outcomes.append("rejected")
            return
        time.sleep(0.001 * (i % 5))  # the upstream call
        b.commit(res, max_costs[i] * rng.uniform(0.5, 1.0))
        with lock:
            outcomes.append("ok")

    _run_threads([threading.Thread(target=request, args=(i,)) for i in range(200)])
    spent = b.usage("team-a")["day_spent"]
    assert outcomes.count("ok") >= 5 and outcomes.count("rejected") > 100
    _check_bound(spent, budget, max_costs)
    assert b.usage("team-a")["day_reserved"] == pytest.approx(0.0, abs=1e-12)


def test_budget_200_concurrent_tasks_overspend_at_most_one_request() -> None:
    budget = 0.05
    b = BudgetManager(_keys(budget_usd_day=budget))
    rng = random.Random(2)
    max_costs = [rng.uniform(0.001, 0.01) for _ in range(200)]
    # the worst case: every request costs more than its estimate said (actual = 1.0 x max)
    actual = list(max_costs)

    async def request(i: int) -> bool:
        await asyncio.sleep(0)
        try:
            res = b.reserve("team-a", max_costs[i])
        except GatewayError:
            return False
        try:
            await asyncio.sleep(0.001 * (i % 7))
        finally:
            b.commit(res, actual[i])
        return True

    async def main() -> list[bool]:
        return await asyncio.gather(*(request(i) for i in range(200)))

    ok = asyncio.run(main())
    spent = b.usage("team-a")["day_spent"]
    assert 5 <= sum(ok) < 200
    _check_bound(spent, budget, max_costs)
    assert spent >= budget  # the budget was actually used up, not refused too early


def test_budget_spend_survives_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    clock = FakeClock()
    st = open_store(url)
    b = BudgetManager(_keys(budget_usd_day=1.0), store=st, clock=clock)
    b.commit(b.reserve("team-a", 0.7), 0.7)
    b.commit(b.reserve("team-b", 0.2), 0.2)
    st.close_sync()

    st = open_store(url)
    try:
        b2 = BudgetManager(_keys(budget_usd_day=1.0), store=st, clock=clock)
        assert b2.usage("team-a")["day_spent"] == pytest.approx(0.7)
        assert b2.usage("team-b")["day_spent"] == pytest.approx(0.2)
        b2.commit(b2.reserve("team-a", 0.5), 0.5)
        with pytest.raises(GatewayError):
            b2.reserve("team-a", 0.1)
        clock.t += 86400
        b3 = BudgetManager(_keys(budget_usd_day=1.0), store=st, clock=clock)
        assert b3.usage("team-a")["day_spent"] == 0.0
        assert b3.usage("team-a")["month_spent"] == pytest.approx(1.2)
    finally:
        st.close_sync()
