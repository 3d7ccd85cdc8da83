"""The Postgres trace store against a real server: the test session's throwaway Postgres
(`postgres_url` in conftest.py: `pgserver`, or `LLMROUTE_TEST_POSTGRES_URL`); the tests skip with
the reason when neither works."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.gateway.auth import hash_key, period_ids
from llmroute.gateway.store import open_store


def _rec(tag: str, i: int, **kw: Any) -> dict[str, Any]:
    base = {
        "request_id": f"{tag}-{i}",
        "ts": 1_700_000_000.0 + i,
        "key_id": tag,
        "alias": "llmroute/auto",
        "model": "fake-strong" if i % 4 == 0 else "fake-weak",
        "status": 200,
        "candidates": [
            {"model": "fake-weak", "quality": 0.61, "cost": 1e-5},
            {"model": "fake-strong", "quality": 0.83, "cost": 4e-4},
        ],
        "fallbacks": [],
        "overhead_ms": 0.4,
        "upstream_ms": 12.0,
        "total_ms": 12.4,
        "tokens_in": 20,
        "tokens_out": 7,
        "cost_usd": 2.1e-5,
        "stream": i % 2 == 0,
        "guards": {"pii": []},  # unknown keys land in `extra`
    }
    base.update(kw)
    return base


def test_postgres_roundtrip(postgres_url: str) -> None:
    tag = f"pg-{time.time_ns()}"
    st = open_store(postgres_url)
    for i in range(50):
        st.write(_rec(tag, i))
    st.add_spend(tag, "d:2026-01-31", 0.5)
    st.add_spend(tag, "d:2026-01-31", 0.25)
    st.close_sync()
    st = open_store(postgres_url)  # reopened: everything written before close is there
    try:
        rows = st.query(key_id=tag, limit=None)
        assert len(rows) == 50
        assert [r["ts"] for r in rows] == sorted((r["ts"] for r in rows), reverse=True)
        assert st.attach_feedback(f"{tag}-3", {"quality": 1.0})
        assert st.attach_feedback(f"{tag}-3", {"comment": "ok"})
        assert not st.attach_feedback(f"{tag}-none", {"quality": 1.0})
        got = st.get(f"{tag}-3")
        assert got is not None and got["outcome"] == {"quality": 1.0, "comment": "ok"}
        assert got["candidates"][0]["model"] == "fake-weak"
        assert got["extra"] == {"guards": {"pii": []}}
        assert got["stream"] is False and st.get(f"{tag}-4")["stream"] is True  # type: ignore[index]
        assert len(st.query(key_id=tag, model="fake-strong", limit=None)) == 13
        assert len(st.query(key_id=tag, since=1_700_000_000.0 + 40, limit=None)) == 10
        assert st.load_spend(["d:2026-01-31"])[(tag, "d:2026-01-31")] == pytest.approx(0.75)
        assert st.prune(1_700_000_000.0 + 10) >= 10
        assert len(st.query(key_id=tag, limit=None)) == 40
        assert st.count() >= 40
    finally:
        st.close_sync()


def test_gateway_on_postgres_keeps_traces_and_budget_across_restart(
    postgres_url: str, fake_server: Any, tmp_path: Path
) -> None:
    key = f"sk-pg-{time.time_ns()}"
    kid = f"pg-key-{time.time_ns()}"  # unique: the database may outlive this test run
    cfg = loopback_config(fake_server.base_url, tmp_path)
    # the budget ledger in this test's folder (a dict config has no folder: it would go to the cwd)
    cfg["store"] = {"url": postgres_url, "flush_interval_s": 0.05, "ledger": str(tmp_path / "spend.ledger")}
    cfg["keys"] = [{"id": kid, "key_sha256": hash_key(key), "budget_usd_day": 0.003}]
    long = "Explain with care why the sky looks blue at noon but red at sunset. " * 4
    ids: list[str] = []
    with run_gateway(cfg, routers={"default": StubRouter()}) as base:
        c = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=20)
        with pytest.raises(openai.RateLimitError) as e:
            for _ in range(50):
                raw = c.chat.completions.with_raw_response.create(
                    model="llmroute/auto", messages=[{"role": "user", "content": long}], max_tokens=50
                )
                ids.append(raw.headers["x-llmroute-request-id"])
        assert e.value.body["code"] == "insufficient_quota"  # type: ignore[index]
        assert len(ids) >= 2
    # a restarted gateway reads the spend back from Postgres: the key is still out of budget
    with run_gateway(cfg, routers={"default": StubRouter()}) as base:
        c = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=20)
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="llmroute/auto", messages=[{"role": "user", "content": "hi"}])
    with open_store(postgres_url) as st:
        rows = {r["request_id"]: r for r in st.query(key_id=kid, limit=None)}
        day = period_ids(time.time())[0]
        spent = st.load_spend([day])[(kid, day)]
    assert set(ids) <= set(rows)
    ok = [r for r in rows.values() if r["status"] == 200]
    assert len(ok) == len(ids)
    assert sum(r["cost_usd"] for r in ok) == pytest.approx(spent)
    assert spent >= 0.003
    assert all(r["candidates"] and r["reason"] for r in ok)
    assert sum(r["status"] == 429 for r in rows.values()) == 2


# ---- row numbers (seq): what the dashboard reads incrementally -------------------------------------


def _pg(url: str, fn: Any) -> Any:
    """`fn(conn)` on a connection of its own (asyncpg), run to completion."""
    import asyncio

    import asyncpg  # type: ignore[import-not-found]

    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_rows_are_numbered_in_commit_order_across_writers(postgres_db: str) -> None:
    """A batch is numbered under the row-numbering lock: while another writer (here, this test's
    open transaction) holds it, the store's batch waits, then gets numbers above that writer's.
    Without the lock it would take numbers while the other transaction is uncommitted, and a
    reader that saw the store's rows first would skip the other's for good."""
    import asyncio
    import threading

    import asyncpg  # type: ignore[import-not-found]

    from llmroute.gateway.store_postgres import _SEQ_LOCK

    st = open_store(postgres_db)
    st.write(_rec("seq", 0))
    st.flush_sync(60)

    async def other_writer() -> None:
        conn = await asyncpg.connect(postgres_db)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEQ_LOCK)
                done = threading.Event()
                threading.Thread(
                    target=lambda: (st.write(_rec("seq", 2)), st.flush_sync(120), done.set()), daemon=True
                ).start()
                waits = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                for _ in range(1200):  # until the store's batch waits for the lock
                    if await conn.fetchval(waits):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the store's batch did not wait for the row-numbering lock")
                assert not done.is_set()
                await conn.execute(
                    "INSERT INTO llmroute_traces (request_id, ts) VALUES ('seq-1', 1700000001.0)"
                )
        finally:
            await conn.close()
        for _ in range(1200):
            if done.wait(0.1):
                break

    asyncio.run(other_writer())
    rows = _pg(postgres_db, lambda c: c.fetch("SELECT request_id FROM llmroute_traces ORDER BY seq"))
    assert [r[0] for r in rows] == ["seq-0", "seq-1", "seq-2"]
    st.close_sync()


def test_an_older_table_gets_row_numbers_and_the_dashboard_reads_it(postgres_db: str) -> None:
    from llmroute.gateway.ui.data import DashboardData

    with open_store(postgres_db) as st:
        for i in range(5):
            st.write(_rec("old", i))
    _pg(postgres_db, lambda c: c.execute("ALTER TABLE llmroute_traces DROP COLUMN seq"))
    st = open_store(postgres_db)  # migrates: the existing rows are numbered once
    try:
        n = _pg(postgres_db, lambda c: c.fetchval("SELECT count(DISTINCT seq) FROM llmroute_traces"))
        assert n == 5
        st.write(_rec("old", 5))
        st.flush_sync(60)
        data = DashboardData(st, postgres_db, None)
        t = data.refresh().select()[None]
        assert t.requests == 6 and t.cost_usd == pytest.approx(6 * 2.1e-5)
        assert [d["request_id"] for d in data.decisions(limit=2)] == ["old-5", "old-4"]
        # the dashboard's connection cut by the server: that read fails, the next connects again
        kill = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'llmroute-dashboard' AND datname = current_database()"
        )
        assert _pg(postgres_db, lambda c: c.fetchval(kill)) == 1
        alive = kill.replace("count(pg_terminate_backend(pid))", "count(*)")
        for _ in range(600):  # until the server process is gone (its socket closed)
            if not _pg(postgres_db, lambda c: c.fetchval(alive)):
                break
            time.sleep(0.05)
        with pytest.raises(Exception):  # noqa: B017  (asyncpg's error for a cut connection)
            data.decisions(limit=1)
        assert [d["request_id"] for d in data.decisions(limit=1)] == ["old-5"]
        data.close()
    finally:
        st.close_sync()
