"""Gateway replicas on shared Redis state (`state: redis://...`, llmroute.gateway.state).

A real `redis-server` (Debian package `redis-server`; `make test` installs it) runs on a free
loopback port with an append-only file in a temporary folder; the module skips when the program
is not installed. The unit tests drive `RedisState` / `BudgetManager` / `Executor` directly (one
process stands in for several replicas with several `RedisState`s, or real processes where a
kill matters); the end-to-end tests run three `llmroute serve` processes (one worker each,
different ports, the same config) in front of the fake upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
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
from llmroute.gateway.auth import (
    BudgetManager,
    GatewayError,
    estimate_input_tokens,
    hash_key,
    max_request_cost,
)
from llmroute.gateway.config import ConfigError, parse_config
from llmroute.gateway.state import RedisState, redis_server_binary

pytestmark = pytest.mark.skipif(
    redis_server_binary() is None,
    reason="redis-server is not installed (Debian: apt-get install redis-server; `make test` does it)",
)

KEY_A = "sk-state-team-a-0123456789"
KEY_B = "sk-state-team-b-0123456789"
KEY_C = "sk-state-team-c-0123456789"
MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in one short paragraph, please."}]


def _state(rp: RedisProc, **kw: Any) -> RedisState:
    return RedisState(rp.url, **kw)


def _flush(rp: RedisProc) -> None:
    st = _state(rp)
    st.client.flushdb()
    st.close()


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


# ---- unit: the event loop's path (reserve_async / settle_async, auto-pipelined) -------------------


def _until(cond: Any, what: str) -> Any:
    """Poll `cond()` on the running loop until true (a hang guard of 20 s, not a speed bar)."""

    async def wait() -> None:
        for _ in range(2000):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    return wait()


def test_resp_reader_parses_replies_split_anywhere() -> None:
    from llmroute.gateway.state import _NOTHING, ReplyError, _RespReader

    wire = (
        b"+OK\r\n:42\r\n$7\r\nhel\r\nl!\r\n$-1\r\n*3\r\n$3\r\nday\r\n$4\r\n0.05\r\n*-1\r\n"
        b"-NOSCRIPT No matching script\r\n*0\r\n:-7\r\n"
    )
    want = ["OK", 42, b"hel\r\nl!", None, [b"day", b"0.05", None], "NOSCRIPT No matching script", [], -7]

    def read(chunks: list[bytes]) -> list[Any]:
        r, out = _RespReader(), []
        for c in chunks:
            r.feed(c)
            while (v := r.gets()) is not _NOTHING:
                out.append(str(v) if isinstance(v, ReplyError) else v)
        return out

    assert read([wire]) == want
    assert read([wire[i : i + 1] for i in range(len(wire))]) == want  # a byte at a time
    assert read([wire[:7], wire[7:30], wire[30:]]) == want


def test_async_commands_of_one_loop_pass_go_out_in_one_write(redis_proc: RedisProc) -> None:
    """Auto-pipelining: 100 requests reserving at once cost one write to Redis (and 100 settles
    another), and every reserve and settle is applied."""
    _flush(redis_proc)
    st = _state(redis_proc)
    led = st.ledger(["k"])

    async def go() -> list[Any]:
        # connects and loads the scripts
        assert await led.reserve_async("k", 1, 1, 1.0, None, 0.001) is None
        await led.settle_async("k", 1, 1, 0.001, 0.0005)
        assert st._pipe is not None
        w = st._pipe.writes
        outs = await asyncio.gather(*(led.reserve_async("k", 1, 1, 1.0, None, 0.001) for _ in range(100)))
        assert st._pipe.writes == w + 1
        await asyncio.gather(*(led.settle_async("k", 1, 1, 0.001, 0.0005) for _ in range(100)))
        assert st._pipe.writes == w + 2
        return outs

    assert asyncio.run(go()) == [None] * 100
    ds, dr, ms, mr = led.usage("k", 1, 1)
    assert ds == pytest.approx(101 * 0.0005) and ms == pytest.approx(101 * 0.0005)
    assert dr == pytest.approx(0.0, abs=1e-12) and mr == pytest.approx(0.0, abs=1e-12)
    st.close()


def test_async_budget_is_exact_across_replicas(redis_proc: RedisProc) -> None:
    """Three replicas' BudgetManagers on one loop, waves of 100 concurrent requests until all
    refuse: the spend ends at the budget, over by less than one hold, equal to the committed
    costs, no holds left."""
    _flush(redis_proc)
    states = [_state(redis_proc) for _ in range(3)]
    bms = [BudgetManager([{"id": "k", "budget_usd_day": 0.05}], state=s) for s in states]

    async def one(i: int) -> float:
        try:
            res = await bms[i % 3].reserve_async("k", 0.003)
        except GatewayError as e:
            assert e.status == 429
            return -1.0
        await asyncio.sleep(0)
        await bms[i % 3].commit_async(res, 0.002)
        return 0.002

    async def go() -> float:
        total = 0.0
        for _ in range(100):
            costs = await asyncio.gather(*(one(i) for i in range(100)))
            total += sum(c for c in costs if c > 0)
            if all(c < 0 for c in costs):
                return total
        raise AssertionError("the budget never refused")

    committed = asyncio.run(go())
    use = bms[0].usage("k")
    assert 0.05 <= use["day_spent"] < 0.05 + 0.003
    assert use["day_spent"] == pytest.approx(committed)
    assert use["day_reserved"] == pytest.approx(0.0, abs=1e-12)
    for s in states:
        s.close()


def test_a_cancelled_reserve_gives_its_hold_back(redis_proc: RedisProc) -> None:
    """A request cancelled while its reservation is on the wire: the hold, granted by Redis
    once the command arrives, is given back."""
    _flush(redis_proc)
    st = _state(redis_proc)
    led = st.ledger(["k"])

    async def go() -> None:
        await led.settle_async("k", 1, 1, 0.0, 0.0)  # connected, the settle script loaded
        await led.settle_async("k", 1, 1, 0.0, 0.0)
        assert await led.reserve_async("k", 1, 1, 1.0, None, 0.001) is None
        await led.settle_async("k", 1, 1, 0.001, 0.0)
        t = asyncio.ensure_future(led.reserve_async("k", 1, 1, 1.0, None, 0.25))
        await asyncio.sleep(0)  # t has queued its command
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await _until(
            lambda: not led._background and st._pipe is not None and not st._pipe._waiting, "the give-back"
        )

    asyncio.run(go())
    ds, dr, _, _ = led.usage("k", 1, 1)
    assert dr == pytest.approx(0.0, abs=1e-12) and ds == 0.0
    st.close()


def test_a_cancelled_settle_is_kept_through_an_outage(redis_proc: RedisProc) -> None:
    """A request cancelled while its settle is on the wire and Redis goes away: the cost is
    queued and added when Redis is back (not lost)."""
    _flush(redis_proc)
    st = _state(redis_proc, retry_s=0.2)
    led = st.ledger(["k"])

    async def go() -> None:
        assert await led.reserve_async("k", 1, 1, 1.0, None, 0.25) is None  # connected, scripts loaded
        await led.settle_async("k", 1, 1, 0.25, 0.125)
        redis_proc.stop()
        try:
            t = asyncio.ensure_future(led.settle_async("k", 1, 1, 0.0, 0.5))
            await asyncio.sleep(0)
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
            await _until(lambda: st.degraded and st._pending, "the failed settle to be queued")
        finally:
            redis_proc.start()
        await _until(lambda: st.health()["ok"], "recovery")

    asyncio.run(go())
    assert led.usage("k", 1, 1)[0] == pytest.approx(0.625)
    st.close()


def test_async_outage_fail_open_fail_closed_and_recovery(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    st = _state(redis_proc, retry_s=0.2)
    st_closed = _state(redis_proc, on_error="fail_closed", retry_s=0.2)
    bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], state=st)
    closed = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], state=st_closed)

    async def go() -> None:
        await bm.commit_async(await bm.reserve_async("k", 0.3), 0.25)
        await closed.commit_async(await closed.reserve_async("k", 0.1), 0.0)
        redis_proc.stop()
        try:
            res = await bm.reserve_async("k", 0.3)  # fail_open: admitted without a hold
            assert res.amount == 0.0 and not res.settled and st.degraded
            await bm.commit_async(res, 0.5)  # queued for Redis's return
            with pytest.raises(GatewayError) as e:
                await closed.reserve_async("k", 0.1)
            assert e.value.status == 503 and e.value.code == "state_unavailable"
        finally:
            redis_proc.start()
        await _until(lambda: st.health()["ok"], "recovery")
        await bm.commit_async(await bm.reserve_async("k", 0.1), 0.125)  # the loop's path works again

    asyncio.run(go())
    use = bm.usage("k")
    assert use["day_spent"] == pytest.approx(0.25 + 0.5 + 0.125)
    assert use["day_reserved"] == pytest.approx(0.0, abs=1e-12)
    st.close()
    st_closed.close()


def test_async_call_to_a_silent_server_times_out() -> None:
    """A Redis that accepts but never answers: the call fails after `timeout_s` (StateUnavailable,
    degraded), it does not hang."""
    import socket

    from llmroute.gateway.state import StateUnavailable

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        st = RedisState(f"redis://127.0.0.1:{srv.getsockname()[1]}/0", timeout_s=0.2)

        async def go() -> None:
            with pytest.raises(StateUnavailable):
                await asyncio.wait_for(st.eval_async("return 1", [], []), 30)

        asyncio.run(go())
        assert st.degraded and st.errors == 1
        st.close()


def test_async_path_uses_the_database_of_the_url(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    st = RedisState(redis_proc.url[: -len("/0")] + "/3")
    led = st.ledger(["k"])

    async def go() -> None:
        assert await led.reserve_async("k", 1, 1, 1.0, None, 0.5) is None

    asyncio.run(go())
    assert float(st.client.hget(st.key("b", "k"), "dr")) == pytest.approx(0.5)  # db 3
    st0 = _state(redis_proc)
    assert not st0.client.exists(st0.key("b", "k"))  # not in db 0
    st.client.flushdb()
    st.close()
    st0.close()


def test_rate_limit_leases_are_topped_up_on_the_loop_and_never_exceed_the_bucket(
    redis_proc: RedisProc,
) -> None:
    """On an event loop a lease down to half is topped up in the background (auto-pipelined):
    still never more than the shared bucket, at most a lease and a top-up unused per replica."""
    _flush(redis_proc)
    states = [_state(redis_proc) for _ in range(3)]
    ledgers = [s.ledger(["k"]) for s in states]

    async def go() -> int:
        granted = 0
        for i in range(300):
            granted += ledgers[i % 3].take("k", 1 / 3600, 100.0) == 0.0
            await asyncio.sleep(0)
        await _until(lambda: not any(led._background for led in ledgers), "the top-ups")
        return granted

    granted = asyncio.run(go())
    assert 100 - 3 * 2 * 5 <= granted <= 100
    assert all(s._pipe is not None and s._pipe.writes > 0 for s in states)  # topped up on the loop
    assert ledgers[0].take("k", 1 / 3600, 100.0) > 3000  # the bucket is empty for everyone
    for s in states:
        s.close()


def test_breaker_word_is_read_in_the_background_on_the_loop(redis_proc: RedisProc) -> None:
    """On an event loop `breaker_open_for` never waits for Redis: a stale entry is refreshed in
    the background (auto-pipelined) and the next call sees another replica's open breaker."""
    _flush(redis_proc)
    a, b = _state(redis_proc), _state(redis_proc, breaker_refresh_s=0.0)
    a.open_breaker("m1", 30)

    async def go() -> float:
        first = b.breaker_open_for("m1")  # nothing read yet: not open, a read is under way
        await _until(lambda: not b._tasks, "the background read")
        assert b._pipe is not None and b._pipe.writes >= 1
        return first

    assert asyncio.run(go()) == 0.0
    assert 0 < b._breakers["m1"][1] - time.monotonic() <= 30  # what the background read found
    a.close_breaker("m1")
    a.close()
    b.close()


def test_keys_spend_reads_the_replicas_books_in_redis(redis_proc: RedisProc, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from llmroute.gateway.traces_cli import keys_app

    _flush(redis_proc)
    st = _state(redis_proc)
    bm = BudgetManager([{"id": "team-a", "budget_usd_day": 1.0}], state=st)
    bm.commit(bm.reserve("team-a", 0.3), 0.125)
    st.close()
    cfg = loopback_config("http://127.0.0.1:1/v1", tmp_path)
    cfg["state"] = redis_proc.url
    cfg["keys"] = [
        {"id": "team-a", "key_sha256": hash_key(KEY_A)},
        {"id": "team-z", "key_sha256": hash_key(KEY_B)},
    ]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from llmroute.gateway.store import open_store

    with open_store(cfg["store"]["url"]):  # an empty trace store: the books are in Redis
        pass
    res = CliRunner().invoke(keys_app, ["spend", "--config", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"team-a": {"day_usd": 0.125, "month_usd": 0.125}}
    redis_proc.stop()
    try:
        res = CliRunner().invoke(keys_app, ["spend", "--config", str(path), "--json"])
        assert res.exit_code == 1 and "start Redis" in res.output
    finally:
        redis_proc.start()


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


# ---- end to end: three `llmroute serve` replicas on one Redis --------------------------------------


BUDGET_A = 0.05
PRICE_IN, PRICE_OUT = 10.0, 30.0  # fake-strong, USD per 1M tokens


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


def _spent(rp: RedisProc, kid: str) -> tuple[float, float]:
    """(day spent, day reserved) of key `kid` as Redis has it."""
    st = _state(rp)
    v = st.client.hmget(st.key("b", kid), "ds", "dr")
    st.close()
    return float(v[0] or 0), float(v[1] or 0)


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
    refused, i = 0, 0
    while refused < 6 and i < 300:
        r = httpx.post(
            f"{roots[i % 3]}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY_A}"},
            json={"model": "fake-strong", "messages": MESSAGES, "max_tokens": 50},
            timeout=60,
        )
        i += 1
        if r.status_code == 200:
            u = r.json()["usage"]
            acknowledged += (u["prompt_tokens"] * PRICE_IN + u["completion_tokens"] * PRICE_OUT) / 1e6
            refused = 0
        else:
            assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
            refused += 1
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


def test_example_deployment_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmroute.gateway.config import load_config

    monkeypatch.setenv("TEAM_A_KEY", "sk-example")
    root = Path(__file__).resolve().parents[1] / "examples" / "replicas"
    cfg = load_config(root / "llmroute.yaml")
    assert cfg.state and cfg.state.startswith("redis://") and cfg.cache and cfg.cache["backend"] == "redis"
    compose = yaml.safe_load((root / "docker-compose.yaml").read_text())
    assert {"redis", "postgres", "gateway-1", "gateway-2", "gateway-3"} <= set(compose["services"])
