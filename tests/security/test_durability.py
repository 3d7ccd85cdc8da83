"""Durable spend and traces (issue 11, item 11): kill -9 loses no spend and a bounded window of traces.

End to end: a real `llmroute serve` (1 and 2 workers) in front of the project's fake server, driven
with the official `openai` client (plain and streamed answers), then, with more requests in flight
(held at the upstream), SIGKILL to the whole process group. Restarted on the same config (same
trace store, same ledger file):

- the key's spend read back from the ledger equals the sum of the costs of the acknowledged
  responses (prices x the usage the client saw), and nothing is held in flight any more;
- the restarted gateway enforces that spend: with the day budget set just below it, the key is
  refused at once (a gateway that had lost a single request's cost would admit it);
- every acknowledged response older than the trace writer's window (`store.flush_interval_s`,
  10 ms; the test waits 50 windows) has its trace row (from the database, or from the killed
  process's journal, stored by the restart);
- the workers' temporary folder of the killed `serve` is gone after the restart.

Unit level: the journal of a killed writer stored at the next open (not a live writer's),
retention (rows older than `retention_days` deleted, the newest `max_rows` kept, at
start and periodically by the writer), the ledger path a config resolves to, a ledger entry whose
pid was reused by another process, and the removal of stale workers folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from conftest import free_port, loopback_config, start_fake_server
from llmroute.gateway.auth import BudgetManager, GatewayError, hash_key
from llmroute.gateway.config import parse_config
from llmroute.gateway.ledger import SharedLedger, process_start, read_spend
from llmroute.gateway.serve import remove_stale_worker_dirs, worker_dir_prefix
from llmroute.gateway.store import open_store, spend_ledger_path

KEY_A = "sk-durability-team-a-0123456789"
KEY_B = "sk-durability-team-b-0123456789"
PRICES = {"fake-strong": (10.0, 30.0), "fake-weak": (0.2, 0.2)}


# ---- helpers: a real `llmroute serve` in its own process group ---------------------------------


class Served:
    def __init__(self, proc: subprocess.Popen[str], root: str, lines: list[str]) -> None:
        self.proc, self.root, self.lines = proc, root, lines

    def kill9(self) -> None:
        """SIGKILL the supervisor and every worker at once (the whole process group)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


@contextlib.contextmanager
def _serve(cfg: dict[str, Any], tmp_path: Path, workers: int) -> Iterator[Served]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("LLMROUTE_SHARED_DIR", None)
    cmd = [sys.executable, "-c", "from llmroute.cli import app; app()", "serve", "--config", str(path),
           "--port", str(port), "--workers", str(workers), "--log-level", "info"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    ready = threading.Semaphore(0)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Application startup complete" in line:
                ready.release()
        ready.release(workers)  # exited: stop waiting

    threading.Thread(target=read, daemon=True).start()
    try:
        for _ in range(workers):
            if not ready.acquire(timeout=90) or proc.poll() is not None:
                raise RuntimeError("gateway did not start:\n" + "".join(lines[-30:]))
        yield Served(proc, f"http://127.0.0.1:{port}", lines)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _cost(model: str, usage: Any) -> float:
    """What the gateway bills for a response: the client-visible usage at the model's prices."""
    pin, pout = PRICES[model]
    return usage.prompt_tokens * (pin / 1e6) + usage.completion_tokens * (pout / 1e6)


async def _one(client: openai.AsyncOpenAI, i: int) -> tuple[str, float]:
    """One acknowledged request (every 4th streamed): (request id, its cost)."""
    messages = [{"role": "user", "content": f"Question {i}: why is the sky blue? " * (1 + i % 5)}]
    if i % 4 == 3:
        async with client.chat.completions.with_streaming_response.create(
            model="llmroute/auto",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        ) as r:
            usage = None
            async for chunk in await r.parse():
                if chunk.usage is not None:
                    usage = chunk.usage
            assert usage is not None
            return r.headers["x-llmroute-request-id"], _cost(r.headers["x-llmroute-model"], usage)
    raw = await client.chat.completions.with_raw_response.create(
        model="llmroute/auto",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=40,
    )
    resp = raw.parse()
    return raw.headers["x-llmroute-request-id"], _cost(raw.headers["x-llmroute-model"], resp.usage)


async def _acknowledged(root: str, n: int) -> list[tuple[str, float]]:
    client = openai.AsyncOpenAI(base_url=f"{root}/v1", api_key=KEY_A, max_retries=0, timeout=60)
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[str, float]:
        async with sem:
            return await _one(client, i)

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        await client.close()


def _in_flight(root: str, n: int) -> list[threading.Thread]:
    """`n` requests that the upstream holds (they have their budget holds, no answer yet)."""

    def go() -> None:
        c = openai.OpenAI(base_url=f"{root}/v1", api_key=KEY_A, max_retries=0, timeout=120)
        with contextlib.suppress(Exception):  # the gateway dies under them
            c.chat.completions.create(
                model="llmroute/auto", messages=[{"role": "user", "content": "held"}], max_tokens=40
            )

    threads = [threading.Thread(target=go, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def _config(backend_url: str, tmp_path: Path, budget_day: float = 1000.0) -> dict[str, Any]:
    cfg = loopback_config(backend_url, tmp_path, request_timeout_s=120)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"  # columns of the built-in router
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    for m in cfg["models"]:
        m["timeout_s"] = 120  # the held requests must still be in flight when the gateway is killed
    del cfg["store"]["flush_interval_s"]  # the documented default window (10 ms)
    cfg["keys"] = [
        {"id": "team-a", "key_sha256": hash_key(KEY_A), "budget_usd_day": budget_day},
        {"id": "team-b", "key_sha256": hash_key(KEY_B)},
    ]
    return cfg


@pytest.mark.parametrize("workers", [1, 2])
def test_kill9_loses_no_spend_and_only_the_trace_window(tmp_path: Path, workers: int) -> None:
    # an upstream of its own: the requests it holds are dropped with it at the end of the test
    with start_fake_server() as fake_server:
        _kill9_run(fake_server, tmp_path, workers)


def _kill9_run(fake_server: Any, tmp_path: Path, workers: int) -> None:
    cfg = _config(fake_server.base_url, tmp_path)
    gw = parse_config(cfg)
    ledger = spend_ledger_path(gw.store.url, gw.store.ledger, gw.base_dir)
    assert ledger == f"{tmp_path}/traces.sqlite.ledger"
    held = 6
    try:
        with _serve(cfg, tmp_path, workers) as served:
            old_dirs = sorted(tmp_path.glob("llmroute-workers-*"))
            assert len(old_dirs) == (1 if workers > 1 else 0)
            acked = asyncio.run(_acknowledged(served.root, 48))
            # older than the trace window: the writer commits at least every 10 ms; wait 50 windows
            time.sleep(0.5)
            before = sum(fake_server.state.counts.values())
            fake_server.state.faults["*"] = {"fault": "timeout", "delay": 300.0, "count": held}
            threads = _in_flight(served.root, held)
            end = time.monotonic() + 60
            while sum(fake_server.state.counts.values()) < before + held and time.monotonic() < end:
                time.sleep(0.02)
            assert sum(fake_server.state.counts.values()) == before + held  # all held upstream
            # then more answers, acknowledged just before the kill: their traces may be in the window,
            # their spend must not be lost
            last = asyncio.run(_acknowledged(served.root, 12))
            served.kill9()
            for t in threads:
                t.join(30)
    finally:
        fake_server.state.faults.clear()
    assert Path(ledger).exists()
    spent = sum(cost for _, cost in acked + last)
    assert spent > 0

    # restart on the same store and ledger, with the day budget just below what was spent: a
    # gateway that lost any acknowledged request's cost would admit team-a again
    cfg2 = _config(fake_server.base_url, tmp_path, budget_day=spent * (1 - 1e-9))
    with _serve(cfg2, tmp_path, workers) as served:
        client = openai.OpenAI(base_url=f"{served.root}/v1", api_key=KEY_A, max_retries=0, timeout=60)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(
                model="llmroute/auto", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        assert e.value.body["code"] == "insufficient_quota"  # type: ignore[index]
        ok = openai.OpenAI(base_url=f"{served.root}/v1", api_key=KEY_B, max_retries=0, timeout=60)
        ok.chat.completions.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )

        # what `llmroute keys spend` reports (read from the ledger, as the budgets count it)
        shown = subprocess.run(
            [sys.executable, "-c", "from llmroute.cli import app; app()", "keys", "spend", "--config",
             str(tmp_path / "gateway.yaml"), "--json"],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        team_a = json.loads(shown.stdout)["team-a"]
        assert team_a["day_usd"] == pytest.approx(spent, rel=1e-12, abs=1e-15)
        assert team_a["month_usd"] == pytest.approx(spent, rel=1e-12, abs=1e-15)
        books = BudgetManager(gw.keys, ledger_path=ledger)
        try:
            use = books.usage("team-a")
        finally:
            books.close()
        assert use["day_spent"] == pytest.approx(spent, rel=1e-12, abs=1e-15)
        assert use["month_spent"] == pytest.approx(spent, rel=1e-12, abs=1e-15)
        # the killed processes' holds for the requests in flight were given back
        assert use["day_reserved"] == pytest.approx(0.0, abs=1e-12)
        assert use["month_reserved"] == pytest.approx(0.0, abs=1e-12)

        new_dirs = sorted(tmp_path.glob("llmroute-workers-*"))
        assert not set(old_dirs) & set(new_dirs)  # the killed serve's folder was removed at start
        assert len(new_dirs) == (1 if workers > 1 else 0)

    with open_store(cfg["store"]["url"]) as st:
        rows = {r["request_id"]: r for r in st.query(key_id="team-a", limit=None)}
    missing = [rid for rid, _ in acked if rid not in rows]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged traces older than the window lost"
    assert sum(rows[rid]["cost_usd"] for rid, _ in acked) == pytest.approx(
        sum(c for _, c in acked), rel=1e-12
    )
    # the last answers' traces may be lost (at most the window), never duplicated or mis-costed
    for rid, cost in last:
        if rid in rows:
            assert rows[rid]["cost_usd"] == pytest.approx(cost, rel=1e-12)


# ---- unit level -----------------------------------------------------------------------------------


def _rows(st: Any, stamps: list[float]) -> None:
    for i, ts in enumerate(stamps):
        st.write({"request_id": f"r{i:04d}", "ts": ts, "model": "m", "status": 200})
    st.flush_sync()


_WRITER = """
import os, sys, time
from llmroute.gateway.store import open_store
st = open_store(sys.argv[1], commit_interval_s=3600, batch_size=10_000)
for i in range(int(sys.argv[2])):
    st.write({"request_id": f"j{i:04d}", "model": "m", "status": 200, "cost_usd": 0.001 * i})
print("written", flush=True)
time.sleep(600)
"""


def _journal_lines(folder: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("*.jsonl"))


def test_journal_of_a_killed_process_is_stored_at_the_next_open(tmp_path: Path) -> None:
    # a writer that commits to the database only hourly: its records are only in its journal,
    # appended within the flush window; SIGKILL it, and the next store of that database keeps them
    url = f"sqlite:///{tmp_path}/t.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, url, "40"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
        journal = tmp_path / "t.sqlite.journal"
        end = time.monotonic() + 30
        while _journal_lines(journal) < 40 and time.monotonic() < end:
            time.sleep(0.01)
        assert _journal_lines(journal) == 40
        with open_store(url) as live:  # the writer is alive: its journal is not touched
            assert live.count() == 0 and live.replayed == 0
        assert _journal_lines(journal) == 40
    finally:
        child.kill()
        child.wait(30)
    with open_store(url) as st:
        assert st.replayed == 40
        rows = {r["request_id"]: r for r in st.query(limit=None)}
    assert sorted(rows) == [f"j{i:04d}" for i in range(40)]
    assert rows["j0007"]["cost_usd"] == pytest.approx(0.007)
    assert not list(journal.glob("*.jsonl"))  # stored, then removed (and this store's own on close)


def test_journal_group_commit_then_database_commit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.sqlite"
    with open_store(url, commit_interval_s=3600, batch_size=10_000) as st:
        for i in range(5):
            st.write({"request_id": f"g{i}", "model": "m", "status": 200})
        end = time.monotonic() + 30
        while _journal_lines(tmp_path / "t.sqlite.journal") < 5 and time.monotonic() < end:
            time.sleep(0.01)
        assert st.queued == 5  # journaled, not yet in the database
        assert st.count() == 5  # a read commits what was queued before it
        assert st.queued == 0 and _journal_lines(tmp_path / "t.sqlite.journal") == 0
    with open_store(url, journal=False) as st:
        assert st.journal_dir is None and st.count() == 5


def test_retention_days_deletes_old_rows_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.sqlite"
    now = time.time()
    days = [45, 31, 30.5, 29.9, 10, 0]
    with open_store(url) as st:
        _rows(st, [now - d * 86400 for d in days])
        assert st.count() == len(days)
    with open_store(url, retention_days=30) as st:
        kept = sorted(r["request_id"] for r in st.query(limit=None))
        assert kept == ["r0003", "r0004", "r0005"]
        assert st.pruned == 3


def test_max_rows_keeps_the_newest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.sqlite"
    now = time.time()
    with open_store(url) as st:
        _rows(st, [now - 100 + i for i in range(100)])
    with open_store(url, max_rows=30, retention_days=None) as st:
        kept = sorted(r["request_id"] for r in st.query(limit=None))
    assert kept == [f"r{i:04d}" for i in range(70, 100)]


def test_retention_is_enforced_periodically_by_the_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.sqlite"
    now = time.time()
    with open_store(url, retention_days=1, max_rows=5, prune_interval_s=0.05) as st:
        _rows(st, [now - 3 * 86400, now - 2 * 86400] + [now - 60 + i for i in range(8)])
        end = time.monotonic() + 30
        while st.count() > 5 and time.monotonic() < end:
            time.sleep(0.05)
        kept = sorted(r["request_id"] for r in st.query(limit=None))
    assert kept == [f"r{i:04d}" for i in range(5, 10)]


def test_retention_defaults_and_config() -> None:
    cfg = parse_config({"models": [{"name": "m", "base_url": "http://127.0.0.1:9/v1"}]})
    assert cfg.store.retention_days == 30 and cfg.store.max_rows is None
    assert cfg.store.flush_interval_s == 0.01
    with pytest.raises(Exception, match="retention_days"):
        parse_config({"models": [{"name": "m", "base_url": "http://x/v1"}], "store": {"retention_days": 0}})


def test_spend_ledger_path(tmp_path: Path) -> None:
    assert spend_ledger_path("sqlite:///t.sqlite", None, tmp_path) == f"{tmp_path}/t.sqlite.ledger"
    assert spend_ledger_path("sqlite:////abs/t.db", None, tmp_path) == "/abs/t.db.ledger"
    assert spend_ledger_path("memory://", None, tmp_path) is None
    assert spend_ledger_path("postgresql://u:p@h/db", None, tmp_path) == f"{tmp_path}/llmroute-spend.ledger"
    assert spend_ledger_path("memory://", "books/spend.ledger", tmp_path) == f"{tmp_path}/books/spend.ledger"
    assert spend_ledger_path("sqlite:///t.sqlite", "off", tmp_path) is None


def test_budget_manager_with_a_ledger_keeps_spend_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "spend.ledger"
    keys = [{"id": "k", "budget_usd_day": 1.0}]
    a = BudgetManager(keys, ledger_path=path)
    a.commit(a.reserve("k", 0.3), 0.25)
    a.reserve("k", 0.3)  # left in flight by this (live) process
    # no close: as after a kill. A new instance in the same process shares its worker entry.
    b = BudgetManager(keys, ledger_path=path)
    assert b.usage("k") == pytest.approx(
        {"day_spent": 0.25, "day_reserved": 0.3, "month_spent": 0.25, "month_reserved": 0.3}
    )
    a.close()
    b.close()


def test_keys_spend_reads_the_ledger(tmp_path: Path) -> None:
    # the store's copy of the spend lags (a kill -9 before its commit); the CLI shows the ledger's
    from llmroute.gateway.auth import _day_span, period_ids

    url = f"sqlite:///{tmp_path}/t.sqlite"
    day, month = period_ids(time.time())
    with open_store(url) as st:
        st.add_spend("team-a", day, 0.1)
        st.add_spend("team-a", month, 0.1)
        st.add_spend("team-b", month, 0.5)  # no ledger slot: the store's figure stands
    bm = BudgetManager([{"id": "team-a"}], ledger_path=spend_ledger_path(url))
    for _ in range(5):
        bm.commit(bm.reserve("team-a", 0.2), 0.05)
    span = _day_span(time.time())
    assert read_spend(spend_ledger_path(url) or "", ["team-a", "x"], span[4], span[5]) == {
        "team-a": (pytest.approx(0.25), pytest.approx(0.25))
    }
    bm.close()
    res = subprocess.run(
        [sys.executable, "-c", "from llmroute.cli import app; app()", "keys", "spend", "--store", url, "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert out["team-a"] == {"day_usd": pytest.approx(0.25), "month_usd": pytest.approx(0.25)}
    assert out["team-b"] == {"day_usd": 0.0, "month_usd": 0.5}


class _LaggingStore:
    """A trace store that persists no spend (as when a kill -9 beat its writer), but seeds 0.07."""

    def __init__(self) -> None:
        self.seeded = 0

    def load_spend(self, periods: list[str]) -> dict[tuple[str, str], float]:
        self.seeded += 1
        return {("k", p): 0.07 for p in periods}

    def add_spend(self, key_id: str, period: str, usd: float) -> None:
        pass


def test_restart_reads_spend_from_the_ledger_not_the_store(tmp_path: Path) -> None:
    path = tmp_path / "spend.ledger"
    keys = [{"id": "k", "budget_usd_day": 1.0}]
    store = _LaggingStore()
    a = BudgetManager(keys, store=store, ledger_path=path)  # a new ledger: seeded from the store
    assert store.seeded == 1 and a.usage("k")["day_spent"] == pytest.approx(0.07)
    for _ in range(3):
        a.commit(a.reserve("k", 0.3), 0.25)
    a.close()
    b = BudgetManager(keys, store=_LaggingStore(), ledger_path=path)  # the restart
    assert b.usage("k")["day_spent"] == pytest.approx(0.82)
    assert b.usage("k")["month_spent"] == pytest.approx(0.82)
    b.commit(b.reserve("k", 0.3), 0.2)  # 0.82 < 1.0: admitted; now 1.02
    with pytest.raises(GatewayError):
        b.reserve("k", 0.01)
    b.close()


def test_ledger_entry_of_a_reused_pid_is_given_back(tmp_path: Path) -> None:
    # a restarted gateway may get the pid of the killed one (pid 1 in a container): its entry is
    # told apart by the process start time, so the dead process's holds are given back
    path = tmp_path / "b.ledger"
    a = SharedLedger(path, ["k"])
    a.reserve("k", 100, 10, 1.0, None, 0.8)
    base = a._slots["k"][1] - 2  # this process's worker entry: pid, start time, then per key
    assert int(a._v[base]) == os.getpid() and a._v[base + 1] == process_start(os.getpid())
    a._v[base + 1] = a._v[base + 1] + 1.0  # as if an earlier process with this pid wrote it
    b = SharedLedger(path, ["k"])
    assert b.usage("k", 100, 10) == (0.0, 0.0, 0.0, 0.0)
    assert b.reserve("k", 100, 10, 1.0, None, 0.5) is None
    a.close()
    b.close()


def test_stale_worker_dirs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / (worker_dir_prefix() + "live")
    stale = tmp_path / f"llmroute-workers-{dead.pid}-{12345}-x"
    reused = tmp_path / f"llmroute-workers-{os.getpid()}-{int(process_start(os.getpid())) + 1}-y"
    other = tmp_path / "llmroute-workers-abc"  # not ours to judge (no pid in the name)
    for d in (mine, stale, reused, other):
        d.mkdir()
        (d / "budgets.ledger").write_bytes(b"x")
    removed = remove_stale_worker_dirs(tmp_path)
    assert sorted(removed) == sorted([str(stale), str(reused)])
    assert mine.exists() and other.exists() and not stale.exists() and not reused.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_killed_worker_not_yet_reaped_counts_as_gone() -> None:
    """A restart right after kill -9 finds the workers as zombies (their parent has not reaped them
    yet): their ledger holds must be given back then, not at some later refused request."""
    from llmroute.gateway.ledger import process_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(child.pid, process_start(child.pid))
        start = process_start(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(500):  # not reaped: wait until the kernel shows it exited
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if b") Z" in f.read():
                    break
            time.sleep(0.01)
        assert not process_alive(child.pid, start)
        assert not process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)
