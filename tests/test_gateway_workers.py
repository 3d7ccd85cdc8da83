"""Several gateway worker processes share budgets, rate limits and metrics.

Unit level: the file-locked `SharedLedger` under real concurrent processes, `BudgetManager` /
`Authenticator` with a shared folder, and metrics snapshots merged across processes. End to end:
a real `llmroute serve --workers 2` on 127.0.0.1 in front of the project's fake server, driven with
the official `openai` client: under 200 concurrent requests a key's total spend stays within its
budget plus one request's maximum cost, a per-key rate limit holds across both workers, and
/metrics (answered by either worker) counts every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import StubRouter, free_port, loopback_config
from llmroute.gateway.app import Gateway
from llmroute.gateway.auth import (
    Authenticator,
    BudgetManager,
    GatewayError,
    estimate_input_tokens,
    hash_key,
    max_request_cost,
    period_ids,
)
from llmroute.gateway.config import parse_config
from llmroute.gateway.ledger import SHARED_DIR_ENV, SharedLedger
from llmroute.gateway.metrics import GatewayMetrics
from llmroute.gateway.store import open_store

KEY_A = "sk-workers-team-a-0123456789"
KEY_C = "sk-workers-team-c-0123456789"
KEY_D = "sk-workers-team-d-0123456789"
LONG = "Explain, step by step and with care, why the sky looks blue at noon but red at sunset. " * 3


# ---- the ledger across real processes ----------------------------------------------------------


def _spend_worker(
    folder: str, budget: float, amount: float, actual: float, out: Any, start: Any, tries: int
) -> None:
    bm = BudgetManager([{"id": "k", "budget_usd_day": budget}], shared_dir=folder)
    admitted = 0
    start.wait(60)  # every worker has opened the ledger: they spend at the same time
    for _ in range(tries):
        try:
            res = bm.reserve("k", amount)
        except GatewayError:
            continue
        admitted += 1
        bm.commit(res, actual)
    out.put(admitted)


def test_budget_ledger_holds_across_processes(tmp_path: Path) -> None:
    # ~60,000 admissions raced for by 3 processes released together by a barrier: without the
    # ledger's file lock, read-modify-writes overlap and reservations/spend are lost or doubled
    budget, amount, actual = 60.0, 0.002, 0.001
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_spend_worker, args=(str(tmp_path), budget, amount, actual, out, start, 30000))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    admitted = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    bm = BudgetManager([{"id": "k", "budget_usd_day": budget}], shared_dir=tmp_path)
    use = bm.usage("k")
    assert use["day_reserved"] == pytest.approx(0.0, abs=1e-12)
    assert use["day_spent"] == pytest.approx(sum(admitted) * actual)
    # admitted while spent < budget: ends at or above the budget, by less than one request
    assert budget <= use["day_spent"] <= budget + amount
    assert sum(admitted) == pytest.approx(budget / actual, abs=1)
    with pytest.raises(GatewayError) as e:
        bm.reserve("k", amount)
    assert e.value.status == 429 and e.value.code == "insufficient_quota"


def _holding_worker(folder: str, out: Any) -> None:
    bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], shared_dir=folder)
    bm.reserve("k", 0.6)
    bm.reserve("k", 0.6)  # 0.6 < 1.0 still admits; now 1.2 is held in flight
    out.put("holding")
    time.sleep(120)  # killed by the test mid-"request"


def test_reservations_of_a_killed_worker_are_given_back(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_holding_worker, args=(str(tmp_path), out))
    child.start()
    try:
        assert out.get(timeout=60) == "holding"
        bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], shared_dir=tmp_path)
        assert bm.usage("k")["day_reserved"] == pytest.approx(1.2)
        with pytest.raises(GatewayError):  # the live worker's reservations count
            bm.reserve("k", 0.1)
    finally:
        child.kill()
        child.join(30)
    bm._ledger.reclaim_interval_s = 0.0  # type: ignore[union-attr]
    res = bm.reserve("k", 0.1)  # refused at first, then the dead worker's 1.2 is given back
    assert bm.usage("k")["day_reserved"] == pytest.approx(0.1)
    bm.commit(res, 0.05)
    # a process opening the ledger (a restarted worker) also gives back dead workers' holds
    out = ctx.Queue()  # a new queue: the killed child may have died holding the old one's lock
    child = ctx.Process(target=_holding_worker, args=(str(tmp_path), out))
    child.start()
    try:
        assert out.get(timeout=60) == "holding"
    finally:
        child.kill()
        child.join(30)
    again = BudgetManager([{"id": "k", "budget_usd_day": 1.0}], shared_dir=tmp_path)
    assert again.usage("k") == pytest.approx(
        {"day_spent": 0.05, "day_reserved": 0.0, "month_spent": 0.05, "month_reserved": 0.0}
    )


def _rate_worker(folder: str, now: float, out: Any) -> None:
    auth = Authenticator(
        [{"id": "c", "key_sha256": hash_key("kc"), "rpm": 60}], shared_dir=folder, clock=lambda: now
    )
    ok = 0
    for _ in range(20):
        try:
            auth.admit({"authorization": "Bearer kc"})
            ok += 1
        except GatewayError as e:
            assert e.status == 429 and e.code == "rate_limit_exceeded"
    out.put(ok)


def test_rate_limit_ledger_holds_across_processes(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    now = time.monotonic()  # a frozen clock: no refill, the bucket holds rpm/60 x 10 s = 10
    procs = [ctx.Process(target=_rate_worker, args=(str(tmp_path), now, out)) for _ in range(2)]
    for p in procs:
        p.start()
    oks = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(oks) == 10, oks


def test_ledger_seeds_persisted_spend_once_and_rolls_over(tmp_path: Path) -> None:
    class Store:
        def __init__(self) -> None:
            self.loads = 0
            self.added: list[tuple[str, str, float]] = []

        def load_spend(self, periods: list[str]) -> dict[tuple[str, str], float]:
            self.loads += 1
            day, month = periods
            return {("k", day): 0.7, ("k", month): 2.0}

        def add_spend(self, kid: str, period: str, usd: float) -> None:
            self.added.append((kid, period, usd))

    t = [1_790_000_000.0]  # 2026-09-21 UTC
    store = Store()
    keys = [{"id": "k", "budget_usd_day": 1.0, "budget_usd_month": 2.5}]
    a = BudgetManager(keys, store=store, shared_dir=tmp_path, clock=lambda: t[0])
    b = BudgetManager(keys, store=store, shared_dir=tmp_path, clock=lambda: t[0])
    assert store.loads == 1  # the first process seeds the ledger, the second finds it
    assert b.usage("k")["day_spent"] == pytest.approx(0.7)
    res = a.reserve("k", 0.2)
    assert b.usage("k")["day_reserved"] == pytest.approx(0.2)
    b.commit(res, 0.25)  # settled by another manager of the same ledger
    assert a.usage("k") == pytest.approx(
        {"day_spent": 0.95, "day_reserved": 0.0, "month_spent": 2.25, "month_reserved": 0.0}
    )
    assert [x[2] for x in store.added] == [0.25, 0.25]
    b.reserve("k", 0.2)  # 0.95 < 1.0: admitted
    with pytest.raises(GatewayError, match="daily budget"):
        a.reserve("k", 0.2)
    t[0] += 86400  # next UTC day: the day books restart, the month's go on
    r2 = a.reserve("k", 0.1)
    a.commit(r2, 0.1)
    use = b.usage("k")
    assert use["day_spent"] == pytest.approx(0.1)
    assert use["month_spent"] == pytest.approx(2.35)
    with pytest.raises(GatewayError, match="monthly budget"):
        for _ in range(10):
            b.commit(b.reserve("k", 0.1), 0.1)


def test_ledger_file_checks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ledger"
    bad.write_bytes(b"not a ledger" * 10)
    with pytest.raises(ValueError, match="not an llmroute ledger"):
        SharedLedger(bad, ["k"])
    with pytest.raises(ValueError, match="no free slot"):
        SharedLedger(tmp_path / "small.ledger", ["a", "b", "c"], capacity=2)
    led = SharedLedger(tmp_path / "ok.ledger", ["a"])
    assert "a" in led and "b" not in led
    led.close()
    led.close()  # idempotent


def test_a_full_ledger_gives_quiet_keys_slots_to_new_ones(tmp_path: Path) -> None:
    """A ledger file outlives keys (rotated, revoked): when it is full, a new key takes the slot
    of a key not in use that had no activity in the latest month any key spent in; the others'
    books are untouched. Nothing is taken while another process maps the file."""
    from llmroute.gateway.ledger import read_spend

    path = tmp_path / "small.ledger"
    led = SharedLedger(path, ["active", "quiet"], capacity=2)
    for kid, month in (("active", 5), ("quiet", 4)):  # month numbers: 'quiet' spent a month earlier
        assert led.reserve(kid, 10 * month, month, None, None, 1.0) is None
        led.settle(kid, 10 * month, month, 1.0, 1.0)
    led.close()
    new = SharedLedger(path, ["new"])  # was "no free slot"
    assert "new" in new and new.free_slots() == 0
    assert read_spend(path, ["active", "quiet", "new"], 50, 5) == {"active": (1.0, 1.0), "new": (0.0, 0.0)}
    assert new.reserve("new", 50, 5, None, None, 0.5) is None
    new.settle("new", 50, 5, 0.5, 0.5)
    new.close()
    # both keys spent in the latest month: none is given up
    with pytest.raises(ValueError, match="no free slot"):
        SharedLedger(path, ["third"])
    assert read_spend(path, ["active", "new"], 50, 5) == {"active": (1.0, 1.0), "new": (0.5, 0.5)}
    # a quiet slot is not taken while another live process maps the file (it may hold its index)
    other = tmp_path / "other.ledger"
    SharedLedger(other, ["a", "b"], capacity=2).close()  # never active: both quiet
    code = (
        "import sys; from llmroute.gateway.ledger import SharedLedger; "
        f"led = SharedLedger({str(other)!r}, ['a']); print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(ValueError, match="no free slot"):
            SharedLedger(other, ["c"])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(60)
    later = SharedLedger(other, ["c"])  # that process is gone: 'b' (not 'c''s) is quiet
    assert "c" in later
    later.close()


def test_single_process_path_needs_no_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMROUTE_SHARED_DIR", raising=False)
    bm = BudgetManager([{"id": "k", "budget_usd_day": 1.0}])
    auth = Authenticator([{"id": "c", "key_sha256": hash_key("kc"), "rpm": 60}])
    assert bm._ledger is None and auth._ledger is None
    assert GatewayMetrics().shared_dir is None


# ---- metrics across processes -------------------------------------------------------------------


def _requests_total(text: str, status: str | None = None) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "llmroute_requests_total" and (status is None or s.labels["status"] == status):
                total += s.value
    return total


def test_metrics_merge_worker_snapshots(tmp_path: Path) -> None:
    a = GatewayMetrics(shared_dir=tmp_path, publish_interval_s=0.02)
    b = GatewayMetrics(shared_dir=tmp_path, publish_interval_s=0.02)
    b._pid = a._pid + 1  # stands in for a second worker process
    try:
        for i in range(30):
            a.observe_request(model="m", alias="x", status=200, overhead_s=0.0004, total_s=0.01, tokens_in=3)
            if i % 3 == 0:
                b.observe_request(
                    model="m", alias="x", status=200, overhead_s=0.002, total_s=0.02, tokens_in=2
                )
        b.observe_rejection(429, "insufficient_quota", "team-a")
        b.set_breaker("m", "open")
        a.set_breaker("m", "closed")
        # b's publisher thread writes its snapshot without any scrape of b
        end = time.monotonic() + 10
        while time.monotonic() < end and _requests_total(a.render()[0].decode()) < 40:
            time.sleep(0.02)
        text = a.render()[0].decode()
        assert _requests_total(text) == 40
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        hist = {
            (s.name, s.labels.get("le")): s.value for s in fams["llmroute_gateway_overhead_seconds"].samples
        }
        assert hist[("llmroute_gateway_overhead_seconds_count", None)] == 40
        assert hist[("llmroute_gateway_overhead_seconds_bucket", "0.0005")] == 30
        assert hist[("llmroute_gateway_overhead_seconds_bucket", "+Inf")] == 40
        tok = [s.value for s in fams["llmroute_tokens"].samples if s.name == "llmroute_tokens_total"]
        assert tok == [30 * 3 + 10 * 2]
        assert [s.value for s in fams["llmroute_breaker_state"].samples] == [2.0]  # the most open
        rej = [s for s in fams["llmroute_rejections"].samples if s.name == "llmroute_rejections_total"]
        assert [(s.labels["key_id"], s.value) for s in rej] == [("team-a", 1.0)]
        assert _requests_total(b.render()[0].decode()) == 40  # either process answers the same
        assert len(list(tmp_path.glob("metrics-*.json"))) == 2
    finally:
        a.close()
        b.close()


def test_gateway_shutdown_publishes_last_metrics_and_closes_ledgers(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopping worker publishes its last counts (even between publisher ticks) and releases the
    budget and rate-limit ledgers."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(SHARED_DIR_ENV, str(shared))
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["keys"] = [{"id": "team-a", "key_sha256": hash_key(KEY_A), "budget_usd_day": 5.0, "rpm": 600}]
    metrics = GatewayMetrics(publish_interval_s=3600)  # no publisher tick during the test
    gw = Gateway(parse_config(cfg), routers={"default": StubRouter()}, metrics=metrics)

    async def run() -> None:
        await gw.startup()
        transport = httpx.ASGITransport(app=gw)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            for _ in range(3):
                r = await c.post(
                    "/v1/chat/completions",
                    headers={"authorization": f"Bearer {KEY_A}"},
                    json={"model": "llmroute/auto", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert r.status_code == 200, r.text
        assert not list(shared.glob("metrics-*.json"))  # nothing published yet
        await gw.shutdown()

    asyncio.run(run())
    assert metrics._thread is None
    assert len(list(shared.glob("metrics-*.json"))) == 1
    other = GatewayMetrics(shared_dir=shared, publish_interval_s=3600)
    other._pid += 1  # stands in for a worker that keeps running
    try:
        assert _requests_total(other.render()[0].decode(), "200") == 3
    finally:
        other.close()
    assert gw.budgets is not None and gw.budgets._ledger is not None and gw.budgets._ledger._fd == -1
    assert gw.auth._ledger is not None and gw.auth._ledger._fd == -1
    assert gw.store.stats()["written"] == 3


# ---- end to end: llmroute serve --workers 2 -----------------------------------------------------


@contextlib.contextmanager
def _serve_workers(cfg: dict[str, Any], tmp_path: Path, workers: int = 2) -> Iterator[str]:
    """Run `llmroute serve --workers N` in a subprocess; yield its root URL once every worker is up."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("LLMROUTE_SHARED_DIR", None)
    cmd = [sys.executable, "-c", "from llmroute.cli import app; app()", "serve", "--config", str(path),
           "--port", str(port), "--workers", str(workers), "--log-level", "info"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready = threading.Semaphore(0)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Application startup complete" in line:
                ready.release()

    threading.Thread(target=read, daemon=True).start()
    try:
        for _ in range(workers):
            if not ready.acquire(timeout=60):
                raise RuntimeError("workers did not start:\n" + "".join(lines[-30:]))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(10)


def test_serve_two_workers_share_budget_rate_limit_and_metrics(fake_server: Any, tmp_path: Path) -> None:
    budget = 0.02
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    # every request goes to fake-strong (best quality), so the budget runs out within the test
    cfg["aliases"]["llmroute/auto"]["tradeoff"] = 0
    cfg["keys"] = [
        {"id": "team-a", "key_sha256": hash_key(KEY_A), "budget_usd_day": budget},
        {"id": "team-c", "key_sha256": hash_key(KEY_C), "rpm": 60},  # bucket of 10, +1 per second
        {"id": "team-d", "key_sha256": hash_key(KEY_D)},  # no limits
    ]
    messages = [{"role": "user", "content": LONG}]
    # the gateway reserves the dearest candidate's max cost (fake-strong: $10 in / $30 out per 1M)
    one_request_max = max_request_cost(10.0, 30.0, estimate_input_tokens(messages), 50)

    with _serve_workers(cfg, tmp_path) as root:
        shared = list(tmp_path.glob("llmroute-workers-*"))
        assert len(shared) == 1

        async def burst(key: str, n: int) -> tuple[list[str], float]:
            client = openai.AsyncOpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0, timeout=60)

            async def one() -> str:
                try:
                    await client.chat.completions.create(
                        model="llmroute/auto", messages=messages, max_tokens=50
                    )
                    return "ok"
                except openai.RateLimitError as e:
                    return str(e.body["code"])  # type: ignore[index]

            t0 = time.monotonic()
            try:
                got = await asyncio.gather(*(one() for _ in range(n)))
            finally:
                await client.close()
            return list(got), time.monotonic() - t0

        results, _ = asyncio.run(burst(KEY_A, 200))
        n_ok = results.count("ok")
        assert n_ok >= 3, results
        assert results.count("insufficient_quota") == 200 - n_ok
        # reservations were for the worst case: spend what is left one request at a time, each on a
        # new connection (either worker), until both workers refuse. Books kept per worker would
        # let this go on to about twice the budget.
        n_more, refused = 0, 0
        while refused < 8 and n_more < 100:
            r = httpx.post(
                f"{root}/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY_A}", "connection": "close"},
                json={"model": "llmroute/auto", "messages": messages, "max_tokens": 50},
                timeout=30,
            )
            if r.status_code == 200:
                n_more, refused = n_more + 1, 0
            else:
                assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
                assert int(r.headers["retry-after"]) >= 1
                refused += 1

        # which worker accepts a connection is the kernel's choice: one worker may have served all
        # of the above. Requests on new connections until both have published a metrics snapshot.
        d_ok = 0
        end = time.monotonic() + 60
        while len(list(shared[0].glob("metrics-*.json"))) < 2 and time.monotonic() < end:
            r = httpx.post(
                f"{root}/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY_D}", "connection": "close"},
                json={"model": "llmroute/auto", "messages": messages, "max_tokens": 50},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            d_ok += 1
            time.sleep(0.05)
        assert len(list(shared[0].glob("metrics-*.json"))) == 2  # both workers served requests

        rate, elapsed = asyncio.run(burst(KEY_C, 30))
        # one bucket for both workers: 10 up front plus what refilled meanwhile (1/s)
        assert rate.count("ok") <= 10 + int(elapsed) + 1, (rate.count("ok"), elapsed)
        assert rate.count("ok") + rate.count("rate_limit_exceeded") == 30

        # /metrics from whichever worker answers counts every request of both workers
        want_ok = n_ok + n_more + d_ok + rate.count("ok")
        end = time.monotonic() + 15
        seen: list[float] = []
        while time.monotonic() < end:
            seen = [_requests_total(httpx.get(f"{root}/metrics").text, "200") for _ in range(6)]
            if all(v == want_ok for v in seen):
                break
            time.sleep(0.1)
        assert seen and all(v == want_ok for v in seen), (seen, want_ok)
        text = httpx.get(f"{root}/metrics").text
        rej = {
            s.labels["reason"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "llmroute_rejections_total"
        }
        assert rej.get("insufficient_quota") == 200 - n_ok + 8
        assert rej.get("rate_limit_exceeded") == rate.count("rate_limit_exceeded")

    assert not list(tmp_path.glob("llmroute-workers-*"))  # serve removed its shared folder
    # the books: what both workers spent for team-a, from their trace records
    with open_store(cfg["store"]["url"]) as st:
        rows = [r for r in st.query(key_id="team-a", limit=None) if r["status"] == 200]
        persisted = st.load_spend([period_ids(time.time())[0]])
    assert len(rows) == n_ok + n_more
    spent = sum(r["cost_usd"] for r in rows)
    assert budget <= spent <= budget + one_request_max, (spent, budget, one_request_max)
    assert persisted[("team-a", period_ids(time.time())[0])] == pytest.approx(spent)
