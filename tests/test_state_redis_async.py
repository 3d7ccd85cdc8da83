"""Redis shared state on the event loop's path (`RedisLedger.reserve_async` / `settle_async`,
auto-pipelined on one asyncio connection per process): one write per loop pass, exact budgets over
replicas, cancelled reserves and settles, an outage, a silent server, rate-limit leases and breakers
read in the background, and `llmroute keys spend` reading the books in Redis. A real `redis-server`
per module (see `test_state_redis.py`; shared helpers in `state_redis_fixtures.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import RedisProc, loopback_config
from llmroute.gateway.auth import BudgetManager, GatewayError, hash_key
from llmroute.gateway.state import RedisState
from state_redis_fixtures import KEY_A, KEY_B, _flush, _state, needs_redis

pytestmark = needs_redis


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
