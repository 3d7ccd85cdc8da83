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
    cfg["store"] = {"url": postgres_url, "flush_interval_s": 0.05}
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
