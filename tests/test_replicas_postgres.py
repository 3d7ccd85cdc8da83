"""Three `llmroute serve` replicas on one Redis (`state:`) AND one Postgres trace store
(`store.url: postgresql://...`), the deployment of examples/replicas: budgets exact across the
replicas under concurrent load, every request's trace row in Postgres once, the store's spend
history equal to the Redis ledger's settled spend, feedback given at one replica for a request
another served, and the dashboard of any replica counting every replica's requests.

Needs `redis-server` (OS package) and a Postgres (`postgres_url` in conftest.py: pgserver or
`LLMROUTE_TEST_POSTGRES_URL`); skips without either. Sized for a loaded 2-core CI box (150
concurrent requests, not the 500 of benchmarks/replicas.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import RedisProc, Replica, loopback_config, new_postgres_database
from llmroute.gateway.auth import estimate_input_tokens, hash_key, max_request_cost, period_ids
from llmroute.gateway.state import redis_server_binary
from state_redis_fixtures import KEY_A, KEY_B, MESSAGES, PRICE_IN, PRICE_OUT, _flush, _spent, spend_rest
from ui_fixtures import trace_rows

pytestmark = pytest.mark.skipif(
    redis_server_binary() is None,
    reason="redis-server is not installed (Debian: apt-get install redis-server; `make test` does it)",
)

BUDGET_A = 0.05
N = 150  # concurrent requests in the burst


@pytest.fixture(scope="module")
def pg(postgres_url: str) -> str:
    """A new database on the session's Postgres: the replicas' trace store (every row is counted)."""
    return new_postgres_database(postgres_url)


@pytest.fixture(scope="module")
def replicas(
    fake_server: Any, redis_proc: RedisProc, pg: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    tmp = tmp_path_factory.mktemp("replicas-pg")
    _flush(redis_proc)
    cfg = loopback_config(fake_server.base_url, tmp)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    cfg["models"][0]["timeout_s"] = 30.0
    cfg["store"] = {"url": pg, "flush_interval_s": 0.02}
    cfg["state"] = redis_proc.url
    cfg["admin"] = {"demo": True}  # the dashboard without a key on loopback
    cfg["keys"] = [
        {"id": "team-a", "key_sha256": hash_key(KEY_A), "budget_usd_day": BUDGET_A},
        {"id": "team-b", "key_sha256": hash_key(KEY_B), "budget_usd_day": 1000.0},
    ]
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reps = [Replica(path, tmp) for _ in range(3)]  # started at once: one creates the tables
    try:
        for r in reps:
            if not r.ready.wait(120):
                raise RuntimeError("replica did not start:\n" + "".join(r.lines[-30:]))
        yield reps
    finally:
        for r in reps:
            r.stop()


async def _burst(roots: list[str], key: str, n: int) -> list[tuple[str, float, str]]:
    """`n` concurrent chat requests round-robin over `roots`: (outcome, cost from usage, request id)."""
    clients = [openai.AsyncOpenAI(base_url=f"{r}/v1", api_key=key, max_retries=0, timeout=120) for r in roots]

    async def one(i: int) -> tuple[str, float, str]:
        try:
            raw = await clients[i % len(clients)].chat.completions.with_raw_response.create(
                model="fake-strong",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=50,
            )
        except openai.APIStatusError as e:
            code = str((e.body or {}).get("code") or e.status_code)  # type: ignore[union-attr]
            return code, 0.0, e.response.headers.get("x-llmroute-request-id", "")
        u = raw.parse().usage
        assert u is not None
        cost = (u.prompt_tokens * PRICE_IN + u.completion_tokens * PRICE_OUT) / 1e6
        return "ok", cost, raw.headers["x-llmroute-request-id"]

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()


def _wait_for(fn: Any, want: Any, what: str, timeout: float = 120.0) -> Any:
    """`fn()` once it equals `want` (the replicas' writer threads store asynchronously), else
    its last value (the caller's assert shows the difference)."""
    deadline = time.monotonic() + timeout
    got = fn()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = fn()
    return got


def _store_spend(pg: str, key_id: str, period: str) -> float:
    import asyncpg  # type: ignore[import-not-found]

    async def go() -> float:
        conn = await asyncpg.connect(pg)
        try:
            v = await conn.fetchval(
                "SELECT spent_usd FROM llmroute_key_spend WHERE key_id = $1 AND period = $2", key_id, period
            )
            return float(v or 0.0)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_budget_traces_and_spend_history_across_replicas_on_postgres(
    replicas: list[Replica], redis_proc: RedisProc, pg: str
) -> None:
    roots = [r.root for r in replicas]
    day, _month = period_ids(time.time())
    one_max = max_request_cost(PRICE_IN, PRICE_OUT, estimate_input_tokens(MESSAGES), 50)
    results = asyncio.run(_burst(roots, KEY_A, N))
    outcomes = [o for o, _, _ in results]
    assert outcomes.count("ok") >= 3
    assert outcomes.count("ok") + outcomes.count("insufficient_quota") == N, set(outcomes)
    acknowledged = sum(c for _, c, _ in results)
    ids = [rid for _, _, rid in results]
    # holds were for the worst case: spend the rest one request at a time on each replica in turn
    rest, rest_ids, refused = spend_rest(roots)
    acknowledged += rest
    ids += rest_ids
    spent, reserved = _spent(redis_proc, "team-a")
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert spent == pytest.approx(acknowledged, rel=1e-9)  # every answered cost, once
    assert BUDGET_A <= spent <= BUDGET_A + one_max, (spent, BUDGET_A, one_max)

    # every request (answered or refused) has its one trace row in Postgres, whichever replica served it
    assert len(set(ids)) == len(ids) and all(ids)
    count = lambda: len(trace_rows(pg, "request_id"))  # noqa: E731
    assert _wait_for(count, len(ids), "trace rows") == len(ids)
    rows = {rid: (status, cost) for rid, status, cost in trace_rows(pg, "request_id, status, cost_usd")}
    assert set(rows) == set(ids)
    assert sum(1 for s, _ in rows.values() if s == 200) == outcomes.count("ok") + (len(ids) - N - refused)
    assert sum(c or 0.0 for _, c in rows.values()) == pytest.approx(acknowledged, rel=1e-9)

    # the spend history in Postgres (the ledgers' seed) equals what Redis settled
    stored = _wait_for(lambda: round(_store_spend(pg, "team-a", day), 12), round(spent, 12), "spend")
    assert stored == pytest.approx(spent, rel=1e-9)


def test_feedback_at_another_replica_and_the_dashboard_counts_every_replica(
    replicas: list[Replica], pg: str
) -> None:
    roots = [r.root for r in replicas]
    served = [
        openai.OpenAI(base_url=f"{roots[i]}/v1", api_key=KEY_B, max_retries=0, timeout=60)
        .chat.completions.with_raw_response.create(model="fake-weak", messages=MESSAGES, max_tokens=20)  # type: ignore[arg-type]
        .headers["x-llmroute-request-id"]
        for i in range(3)
    ]
    count = lambda: len(trace_rows(pg, "request_id", "WHERE key_id = 'team-b'"))  # noqa: E731
    assert _wait_for(count, 3, "team-b's traces") == 3
    # each request's feedback is given at the next replica, which did not serve it
    for i, rid in enumerate(served):
        r = httpx.post(
            f"{roots[(i + 1) % 3]}/v1/feedback",
            headers={"authorization": f"Bearer {KEY_B}"},
            json={"request_id": rid, "quality": 0.1 * (i + 1)},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    import json

    def outcomes() -> dict[str, Any]:
        rows = trace_rows(pg, "request_id, outcome", "WHERE key_id = 'team-b' AND outcome IS NOT NULL")
        return {rid: json.loads(o).get("quality") for rid, o in rows}

    want = {rid: pytest.approx(0.1 * (i + 1)) for i, rid in enumerate(served)}
    got = _wait_for(outcomes, want, "feedback")
    assert got == want
    # the dashboard at any replica reads the shared store: every replica's requests
    total = len(trace_rows(pg, "request_id"))
    for root in roots:
        html = httpx.get(f"{root}/ui", timeout=60).text
        assert f'id="requests">{total:,}<' in html, root
