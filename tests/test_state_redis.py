"""Gateway replicas on shared Redis state (`state: redis://...`, llmroute.gateway.state).

A real `redis-server` (Debian package `redis-server`; `make test` installs it) runs on a free
loopback port with an append-only file in a temporary folder; the module skips when the program
is not installed. The unit tests drive `RedisState` / `BudgetManager` / `Executor` directly (one
process stands in for several replicas with several `RedisState`s, or real processes where a
kill matters); the end-to-end tests run three `llmroute serve` processes (one worker each,
different ports, the same config) in front of the fake upstream.

The tests are split by feature, each module with its own Redis server: this one (budgets,
reservations, rate limits, breakers, an outage; the config), `test_state_redis_async.py` (the event
loop's auto-pipelined path), `test_state_redis_replicas.py` (three `llmroute serve` replicas) and
`test_state_redis_stream.py` (streamed requests on the non-blocking path). Shared constants and
helpers are in `state_redis_fixtures.py`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import RedisProc
from llmroute.gateway.auth import BudgetManager, GatewayError
from llmroute.gateway.config import ConfigError, parse_config
from llmroute.gateway.state import RedisState
from state_redis_fixtures import _flush, _state, needs_redis

pytestmark = needs_redis


# ---- unit: budgets, reservations, rate limits, breakers -------------------------------------------


def _spend(url: str, budget: float, amount: float, actual: float, out: Any, start: Any) -> None:
    st = RedisState(url)
    bm = BudgetManager([{"id": "k", "budget_usd_day": budget}], state=st)
    start.wait()
    n = 0
    for _ in range(100_000):
        try:
            res = bm.reserve("k", amount)
        except GatewayError:
            break
        bm.commit(res, actual)
        n += 1
    out.put(n)
    st.close()


def test_budget_is_exact_across_processes(redis_proc: RedisProc) -> None:
    """Three processes (three replicas' books) spend one key's budget: they stop at the budget,
    over by less than one reservation, and the admitted count is the budget over the cost."""
    _flush(redis_proc)
    budget, amount, actual = 0.3, 0.002, 0.001
    ctx = mp.get_context("spawn")
    out, start = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_spend, args=(redis_proc.url, budget, amount, actual, out, start))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    start.set()
    admitted = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    st = _state(redis_proc)
    use = BudgetManager([{"id": "k", "budget_usd_day": budget}], state=st).usage("k")
    st.close()
    assert use["day_reserved"] == pytest.approx(0.0, abs=1e-12)
    assert budget <= use["day_spent"] <= budget + amount
    assert sum(admitted) == pytest.approx(budget / actual, abs=1)


def test_month_budget_and_refusal_message(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    st = _state(redis_proc)
    bm = BudgetManager([{"id": "k", "budget_usd_day": 10.0, "budget_usd_month": 0.5}], state=st)
    bm.commit(bm.reserve("k", 0.4), 0.3)
    bm.commit(bm.reserve("k", 0.4), 0.15)  # 0.3 < 0.5: admitted
    other = _state(redis_proc)  # another replica sees the same books
    assert BudgetManager([{"id": "k"}], state=other).usage("k")["month_spent"] == pytest.approx(0.45)
    bm.commit(bm.reserve("k", 0.4), 0.06)  # 0.45 < 0.5: admitted; 0.51 spent now
    with pytest.raises(GatewayError, match="monthly budget") as e:
        bm.reserve("k", 0.01)
    assert e.value.status == 429
    st.close()
    other.close()


def _hold_and_die(url: str, ready: Any) -> None:
    st = RedisState(url, heartbeat_ttl_s=0.5)
    bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], state=st)
    bm.reserve("k", 0.9)
    ready.set()
    time.sleep(60)  # killed here, holding $0.90


def test_holds_of_a_killed_replica_are_given_back(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_and_die, args=(redis_proc.url, ready))
    p.start()
    assert ready.wait(60)
    st = _state(redis_proc, heartbeat_ttl_s=0.5, reclaim_interval_s=0.0)
    bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], state=st)
    assert bm.usage("k")["day_reserved"] == pytest.approx(0.9)
    bm.commit(bm.reserve("k", 0.2), 0.2)  # 0.9 held + 0 spent < 1: admitted
    with pytest.raises(GatewayError):  # alive: its hold counts (0.2 + 0.9 >= 1)
        bm.reserve("k", 0.2)
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    deadline = time.monotonic() + 30
    while True:  # its alive key expires within 0.5 s; the next refusal reclaims
        try:
            res = bm.reserve("k", 0.2)
            break
        except GatewayError:
            assert time.monotonic() < deadline, "the dead replica's hold was never given back"
            time.sleep(0.1)
    bm.commit(res, 0.1)
    use = bm.usage("k")
    assert use["day_reserved"] == pytest.approx(0.0, abs=1e-12)
    assert use["day_spent"] == pytest.approx(0.3)  # spend is never given back
    st.close()


def test_rate_limit_bucket_is_shared(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    states = [_state(redis_proc) for _ in range(3)]
    ledgers = [s.ledger(["k"]) for s in states]
    # 1 token per hour, 5 in the bucket: five takes over all replicas, then a wait of ~an hour
    waits = [ledgers[i % 3].take("k", 1 / 3600, 5.0) for i in range(8)]
    assert waits[:5] == [0.0] * 5
    assert all(3000 < w <= 3600 for w in waits[5:]), waits
    for s in states:
        s.close()


def test_rate_limit_leases_never_exceed_the_shared_bucket(redis_proc: RedisProc) -> None:
    """A large bucket is taken in leases (5% of it here): over all replicas no more than the
    bucket is granted, and at most one lease per replica goes unused."""
    _flush(redis_proc)
    states = [_state(redis_proc) for _ in range(3)]
    ledgers = [s.ledger(["k"]) for s in states]
    granted = sum(ledgers[i % 3].take("k", 1 / 3600, 100.0) == 0.0 for i in range(300))
    assert 100 - 3 * 5 <= granted <= 100
    assert ledgers[0].take("k", 1 / 3600, 100.0) > 3000  # the bucket is empty for everyone
    for s in states:
        s.close()


def test_breaker_opened_by_one_replica_opens_on_the_others(redis_proc: RedisProc) -> None:
    from llmroute.gateway.reliability import Executor

    _flush(redis_proc)

    class B:
        class cfg:
            max_concurrency = 4

    a, b = _state(redis_proc, breaker_refresh_s=0.0), _state(redis_proc, breaker_refresh_s=0.0)
    ex_a = Executor({"m1": B(), "m2": B()}, breaker_failures=2, breaker_cooldown_s=30, state=a)  # type: ignore[dict-item]
    seen: list[tuple[str, str]] = []
    ex_b = Executor({"m1": B(), "m2": B()}, breaker_cooldown_s=30, state=b, on_breaker=lambda m, s: seen.append((m, s)))  # type: ignore[dict-item]  # fmt: skip
    assert ex_b._order(["m1", "m2"]) == ["m1", "m2"]
    ex_a._fail("m1")
    assert ex_b._order(["m1", "m2"]) == ["m1", "m2"]  # one failure: still closed
    ex_a._fail("m1")  # opens on a, and so on b
    assert ex_a.breakers["m1"].state == "open"
    assert ex_b._order(["m1", "m2"]) == ["m2", "m1"]
    assert ex_b.breakers["m1"].state == "open" and seen == [("m1", "open")]
    assert 0 < a.breaker_open_for("m1") <= 30
    # a probe succeeds on a: closed there and the shared word is gone
    ex_a.breakers["m1"].opened_at -= 31
    assert ex_a._order(["m1", "m2"])[0] == "m1"
    ex_a._ok("m1")
    assert a.breaker_open_for("m1") == 0.0 and b.breaker_open_for("m1") == 0.0
    a.close()
    b.close()


# ---- unit: Redis outage, fail-open / fail-closed, recovery ----------------------------------------


def test_outage_fail_open_then_recovery_adds_the_queued_costs(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    st = _state(redis_proc, retry_s=0.2)
    bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], state=st)
    bm.commit(bm.reserve("k", 0.3), 0.25)
    redis_proc.stop()
    try:
        res = bm.reserve("k", 0.3)  # admitted without a hold
        assert res.amount == 0.0 and not res.settled
        assert st.health()["ok"] is False and st.degraded
        bm.commit(res, 0.5)  # queued for Redis's return
        bm.commit(bm.reserve("k", 0.3), 0.125)
    finally:
        redis_proc.start()  # the append-only file brings the books back
    time.sleep(0.25)
    assert st.health()["ok"] is True
    use = bm.usage("k")
    assert use["day_spent"] == pytest.approx(0.25 + 0.5 + 0.125)
    assert use["day_reserved"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(GatewayError, match="daily budget"):  # 0.875 + hold: the books are whole
        bm.commit(bm.reserve("k", 0.3), 0.2), bm.reserve("k", 0.3)
    st.close()


def test_outage_fail_closed_refuses_with_503(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    st = _state(redis_proc, on_error="fail_closed", retry_s=0.2)
    bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], state=st)
    redis_proc.stop()
    try:
        with pytest.raises(GatewayError) as e:
            bm.reserve("k", 0.1)
        assert e.value.status == 503 and e.value.code == "state_unavailable"
        assert "fail_closed" in e.value.message and "127.0.0.1" not in e.value.message
        assert bm.reserve(None, 0.1).settled  # no key: nothing to book, admitted
    finally:
        redis_proc.start()
    time.sleep(0.25)
    bm.commit(bm.reserve("k", 0.1), 0.1)  # recovered
    assert bm.usage("k")["day_spent"] == pytest.approx(0.1)
    st.close()


def test_config_state() -> None:
    base = {"models": [{"name": "m", "base_url": "http://127.0.0.1:1/v1"}]}
    cfg = parse_config(base)
    assert cfg.state is None and cfg.on_state_error == "fail_open"
    cfg = parse_config({**base, "state": "redis://r:6379/1", "cache": {"semantic": False}})
    assert cfg.cache == {"semantic": False, "backend": "redis", "url": "redis://r:6379/1"}
    cfg = parse_config({**base, "state": "redis://r:6379/1", "cache": {"backend": "sqlite"}})
    assert cfg.cache == {"backend": "sqlite"}  # an explicit cache backend stays
    with pytest.raises(ConfigError, match="state"):
        parse_config({**base, "state": "http://r:6379"})
    with pytest.raises(ConfigError, match="on_state_error"):
        parse_config({**base, "state": "redis://r:6379/1", "on_state_error": "maybe"})


def test_example_deployment_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmroute.gateway.config import load_config

    monkeypatch.setenv("TEAM_A_KEY", "sk-example")
    root = Path(__file__).resolve().parents[1] / "examples" / "replicas"
    cfg = load_config(root / "llmroute.yaml")
    assert cfg.state and cfg.state.startswith("redis://") and cfg.cache and cfg.cache["backend"] == "redis"
    compose = yaml.safe_load((root / "docker-compose.yaml").read_text())
    assert {"redis", "postgres", "gateway-1", "gateway-2", "gateway-3"} <= set(compose["services"])
