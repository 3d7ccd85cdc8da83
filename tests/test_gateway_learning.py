"""The online learner inside the gateway (`llmroute.gateway.learning`): exploration with logged
propensities, only on plain trade-off decisions; outcomes from /v1/feedback update the learner
(idempotent, delayed, at another worker); snapshots and rollback. e2e with the official openai
client against the fake upstream, the stub router (quality: 'weak' wins short prompts at
lambda 0). The tests taking `shared` run on both learner-state backends: SQLite beside the trace
store (one host's workers) and Redis (`state: redis://...`, replicas on several hosts)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from conftest import RedisProc, StubRouter, loopback_config, run_gateway
from llmroute.gateway.learning import SQLiteLearnerState
from llmroute.gateway.learning_redis import RedisLearnerState
from llmroute.gateway.learning_traces import decode_context
from llmroute.gateway.outcomes import record_outcome
from llmroute.gateway.store import TRACE_FIELDS, open_store

PROMPT = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["sqlite", "redis"])
def shared(request: pytest.FixtureRequest) -> str | None:
    """The learner state's backend: None (SQLite beside the trace store) or an emptied Redis's URL."""
    if request.param == "sqlite":
        return None
    rp: RedisProc = request.getfixturevalue("redis_proc")
    st = RedisLearnerState(rp.url)
    st.st.client.flushdb()
    st.close()
    return rp.url


def _config(fake: Any, tmp_path: Path, shared: str | None = None, **learning: Any) -> dict[str, Any]:
    cfg = loopback_config(fake.base_url, tmp_path)
    cfg["aliases"]["llmroute/auto"]["learning"] = {"enabled": True, "sync_interval_s": 0.05, **learning}
    if shared is not None:
        cfg["state"] = shared  # budgets, breakers and the learner state on Redis
    return cfg


def _ask(gw: str, n: int = 1, **extra: Any) -> list[tuple[str, str, str]]:
    """n chat calls: (request id, served model, reason) each."""
    client = openai.OpenAI(base_url=gw, api_key="x", max_retries=0)
    out = []
    for _ in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=PROMPT, extra_body=extra or None
        )
        h = raw.headers
        out.append((h["x-llmroute-request-id"], h["x-llmroute-model"], h["x-llmroute-reason"]))
    return out


def _rows(gw: Any, rids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The gateway's trace rows by request id, once those of `rids` are written (a trace is
    queued right after its response goes out)."""
    end = time.monotonic() + 30
    while True:
        gw.app.store.flush_sync()
        rows = {r["request_id"]: r for r in gw.app.store.query(limit=None)}
        if all(r in rows for r in rids or ()) or time.monotonic() > end:
            return rows
        time.sleep(0.02)


def _feedback(gw: str, rid: str, **body: Any) -> httpx.Response:
    """POST /v1/feedback, again while the request's trace is not written yet (404)."""
    end = time.monotonic() + 30
    while True:
        r = httpx.post(f"{gw}/feedback", json={"request_id": rid, **body}, timeout=30)
        if r.status_code != 404 or time.monotonic() > end:
            return r
        time.sleep(0.02)


def _learned(gw: Any) -> Any:
    """The gateway's `Learning` once the outcomes given so far are learned and published (/v1/feedback
    answers once the outcome is in the trace; SQLite: learned at once, published with the next sync,
    which settles a repeat; Redis: learned with the next batch, ~20 ms)."""
    lr = gw.app.learning
    _wait(lr.idle, "the outcomes to be learned and published")
    return lr


def test_learning_is_off_by_default(fake_server: Any, tmp_path: Path) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        assert gw.app.learning is None
        ((rid, model, reason),) = _ask(gw)
        assert model == "fake-weak" and "learner=" not in reason
        row = _rows(gw, [rid])[rid]
        assert row["propensity"] is None and row["explored"] is None and row["learner"] is None
    assert not (tmp_path / "traces.sqlite.learner").exists()


def test_exploration_is_bounded_and_its_propensity_logged(fake_server: Any, tmp_path: Path) -> None:
    cfg = _config(fake_server, tmp_path, max_explore=0.5, confidence=0)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        calls = _ask(gw, 40)
        rows = _rows(gw, [c[0] for c in calls])
        text = httpx.get(f"{gw.root}/metrics").text
        stats = gw.app.learning.stats()["llmroute/auto"]
    explored = [rows[rid] for rid, _, _ in calls if rows[rid]["explored"]]
    greedy = [rows[rid] for rid, _, _ in calls if not rows[rid]["explored"]]
    assert explored and greedy  # thompson deviates on some requests, not on all
    for r in explored:  # the deviation is the other model, chosen with its exact probability
        assert r["model"] == "fake-strong" and r["learner"]["greedy"] == "fake-weak"
        assert 0 < r["propensity"] <= 0.5  # max_explore bounds the deviation's probability
    assert stats["explored"] == len(explored) and stats["explored_share"] == len(explored) / 40
    assert (
        f'llmroute_learning_decisions_total{{alias="llmroute/auto",explored="true"}} {float(len(explored))}'
        in text
    )
    for r in greedy:  # 1 - the probability of exploring (Thompson's share, capped at max_explore)
        assert 0.5 <= r["propensity"] < 1
    for rid, model, reason in calls:
        r = rows[rid]
        assert r["model"] == model and r["learner"]["chosen"] == model
        assert f"learner=thompson p={r['propensity']:.3g}" in reason
        assert set(r["learner"]["q0"]) == {"fake-strong", "fake-weak"}
        x = decode_context(r["learner"]["x"])  # the context, then the base column and the bias
        assert x is not None and x.shape == (34,) and list(x[32:]) == [0.0, 1.0]


@pytest.mark.parametrize(
    "policy",
    [{"max_cost": 1.0}, {"min_quality": 0.1}],
)
def test_no_exploration_with_a_pinning_policy(
    fake_server: Any, tmp_path: Path, policy: dict[str, Any]
) -> None:
    cfg = _config(fake_server, tmp_path, max_explore=1.0, confidence=0)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        calls = _ask(gw, 15, llmroute=policy)
        rows = _rows(gw, [c[0] for c in calls])
        for rid, model, _ in calls:
            assert model == "fake-weak" and rows[rid]["propensity"] == 1.0 and rows[rid]["explored"] == 0
        # a per-request trade-off may explore: each such request explores with a probability
        # below 1, so ask in rounds until one does (bounded) rather than expecting it in a fixed few
        for _ in range(20):
            free = _ask(gw, 15, llmroute={"tradeoff": 0})
            rows = _rows(gw, [c[0] for c in free])
            if any(rows[rid]["explored"] for rid, _, _ in free):
                break
        else:
            pytest.fail("300 requests with a per-request trade-off never explored")


def test_feedback_teaches_the_learner_and_is_idempotent(
    fake_server: Any, tmp_path: Path, shared: str | None
) -> None:
    cfg = _config(fake_server, tmp_path, shared, learner="greedy")
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        learning = gw.app.learning
        first = None
        for _ in range(40):
            ((rid, model, _),) = _ask(gw)
            if model == "fake-strong":
                break
            first = first or rid
            assert _feedback(gw, rid, thumbs="down").status_code == 200  # the router's pick is bad
        else:
            pytest.fail("40 bad outcomes of fake-weak did not move the greedy choice")
        n = _learned(gw).stats()["llmroute/auto"]["outcomes"]
        assert 5 <= n < 40
        assert rows_model(gw, rid) == "fake-strong"
        # the same feedback again: nothing more is learned; a different explicit score replaces it
        assert _feedback(gw, first, thumbs="down").status_code == 200
        assert _learned(gw).stats()["llmroute/auto"]["outcomes"] == n
        assert _feedback(gw, first, quality=0.2).status_code == 200
        assert _learned(gw).stats()["llmroute/auto"]["outcomes"] == n
        assert learning.outcomes[("llmroute/auto", "feedback", "replaced")] == 1
        assert learning.outcomes[("llmroute/auto", "feedback", "ignored")] == 1
        text = httpx.get(f"{gw.root}/metrics").text
        for result, count in (("applied", n), ("replaced", 1), ("ignored", 1)):
            lab = f'alias="llmroute/auto",result="{result}",source="feedback"'
            assert f"llmroute_learning_outcomes_total{{{lab}}} {float(count)}" in text
        decided = learning.stats()["llmroute/auto"]["decisions"]
        assert (
            f'llmroute_learning_decisions_total{{alias="llmroute/auto",explored="false"}} {float(decided)}'
            in text
        )


def rows_model(gw: Any, rid: str) -> str:
    return _rows(gw, [rid])[rid]["model"]


def test_implicit_then_explicit_outcome(fake_server: Any, tmp_path: Path, shared: str | None) -> None:
    cfg = _config(fake_server, tmp_path, shared, learner="greedy")
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        ((rid, _, _),) = _ask(gw)
        loops: list[asyncio.AbstractEventLoop] = []

        async def hook(request_id: str, outcome: dict[str, Any]) -> None:
            loops.append(asyncio.get_running_loop())

        gw.app.feedback_hooks.append(hook)
        ((other, _, _),) = _ask(gw)
        assert _feedback(gw, other, quality=1.0).status_code == 200
        loop = loops[0]

        def implicit(source: str, score: float) -> None:
            asyncio.run_coroutine_threadsafe(record_outcome(gw.app, rid, score, source), loop).result(10)

        implicit("regenerate", 0.0)
        implicit("length", 0.0)  # a second implicit outcome of the same request is not learned
        assert _feedback(gw, rid, quality=1.0).status_code == 200  # the explicit one replaces it
        learning = _learned(gw)
        assert learning.stats()["llmroute/auto"]["outcomes"] == 2
        key = "llmroute/auto"
        assert learning.outcomes[(key, "regenerate", "applied")] == 1
        assert learning.outcomes[(key, "length", "ignored")] == 1
        assert learning.outcomes[(key, "feedback", "replaced")] == 1


def test_workers_share_the_learner_state(fake_server: Any, tmp_path: Path, shared: str | None) -> None:
    """Two gateways on one trace store and one learner state (as `serve --workers 2`): an outcome
    given at one reaches the other's learner, also for a request the other one routed."""
    cfg = _config(fake_server, tmp_path, shared, learner="greedy")
    with (
        run_gateway(cfg, routers={"default": StubRouter()}) as a,
        run_gateway(cfg, routers={"default": StubRouter()}) as b,
    ):
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])  # a's trace is written (it is queued just after the answer goes out)
        assert _feedback(b, rid, quality=0.0).status_code == 200  # delayed, at the other worker
        assert _learned(b).stats()["llmroute/auto"]["outcomes"] == 1
        end = time.monotonic() + 30
        while a.app.learning.stats()["llmroute/auto"]["outcomes"] < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert a.app.learning.stats()["llmroute/auto"]["outcomes"] == 1
        la, lb = (
            a.app.learning.aliases["llmroute/auto"].learner,
            b.app.learning.aliases["llmroute/auto"].learner,
        )
        assert (la.b_ == lb.b_).all() and (la.A_inv_ == lb.A_inv_).all()


def test_snapshots_and_rollback_cli(fake_server: Any, tmp_path: Path, shared: str | None) -> None:
    import yaml

    from llmroute.cli import app as cli

    cfg = _config(fake_server, tmp_path, shared, learner="greedy", snapshot_every=3)
    path = tmp_path / "llmroute.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        for rid, _, _ in _ask(gw, 4):
            assert _feedback(gw, rid, quality=0.0).status_code == 200
        learning = _learned(gw)
        assert learning.stats()["llmroute/auto"]["outcomes"] == 4
        res = runner.invoke(cli, ["learner", "snapshots", "--config", str(path), "--alias", "llmroute/auto"])
        assert res.exit_code == 0, res.output
        assert "initial" in res.output and "periodic" in res.output
        res = runner.invoke(cli, ["learner", "snapshot", "--config", str(path), "--alias", "llmroute/auto"])
        assert res.exit_code == 0 and "at seq 4" in res.output, res.output
        manual = next(s for s in _snapshots(tmp_path, shared) if s["kind"] == "manual")
        assert manual["outcomes"] == 4 and manual["seq"] == 4
        initial = next(s for s in _snapshots(tmp_path, shared) if s["kind"] == "initial")
        res = runner.invoke(
            cli,
            [
                "learner",
                "rollback",
                "--config",
                str(path),
                "--alias",
                "llmroute/auto",
                "--to",
                str(initial["id"]),
            ],
        )
        assert res.exit_code == 0, res.output
        end = time.monotonic() + 30
        while learning.stats()["llmroute/auto"]["outcomes"] > 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert learning.stats()["llmroute/auto"]["outcomes"] == 0  # every worker reloaded it
        ((rid, _, _),) = _ask(gw)
        assert _feedback(gw, rid, quality=0.0).status_code == 200  # outcomes after it still apply
        assert _learned(gw).stats()["llmroute/auto"]["outcomes"] == 1
        bad = runner.invoke(
            cli, ["learner", "rollback", "--config", str(path), "--alias", "llmroute/auto", "--to", "999"]
        )
        assert bad.exit_code != 0 and "999" in bad.output


def _snapshots(tmp_path: Path, shared: str | None = None) -> list[dict[str, Any]]:
    st: Any = (
        RedisLearnerState(shared) if shared else SQLiteLearnerState(str(tmp_path / "traces.sqlite.learner"))
    )
    try:
        return st.snapshots("llmroute/auto")
    finally:
        st.close()


def test_an_older_trace_store_gets_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    old = [c for c in TRACE_FIELDS if c not in ("propensity", "explored", "learner")]
    con.execute(f"CREATE TABLE traces ({', '.join(old)}, PRIMARY KEY (request_id))")
    con.execute("INSERT INTO traces (request_id, ts, model) VALUES ('old', 1.0, 'm')")
    con.commit()
    con.close()
    with open_store(f"sqlite:///{db}") as st:
        st.write(
            {"request_id": "new", "model": "m", "propensity": 0.25, "explored": True, "learner": {"x": [1]}}
        )
        st.flush_sync()
        assert st.get("new")["propensity"] == 0.25 and st.get("new")["explored"] is True
        assert st.get("old")["propensity"] is None


def test_whatif_reads_the_gateways_traces(fake_server: Any, tmp_path: Path) -> None:
    """A real router file (knn on the synthetic table) behind a learning alias: the traces the
    gateway writes (propensity, learner features, feedback) are a log `llmroute whatif --traces`
    reads; model names map onto the router's columns through the config."""
    import json

    import yaml

    from llmroute.cli import app as cli
    from llmroute.data.synthetic import make_synthetic_table
    from llmroute.online.whatif import read_traces

    table = make_synthetic_table(120, seed=0, binary=True)
    data = tmp_path / "syn.parquet"
    table.df.to_parquet(data)
    rpath = tmp_path / "r.safetensors"
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--data", str(data), "--router", "knn", "--out", str(rpath)])
    assert res.exit_code == 0, res.output
    models = [
        {"name": f"gw-{m}", "base_url": fake_server.base_url, "router_model": m, "timeout_s": 10}
        for m in table.models
    ]
    cfg = {
        "models": models,
        "routers": {"r": str(rpath)},
        "aliases": {
            "auto": {
                "router": "r",
                "tradeoff": 0,
                "learning": {"enabled": True, "max_explore": 0.5, "confidence": 0},
            }
        },
        "store": {"url": f"sqlite:///{tmp_path}/traces.sqlite", "flush_interval_s": 0.05},
        "trace": {"store_prompts": True},
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prompts = list(dict.fromkeys(table.df["prompt"]))[:30]
    with run_gateway(cfg) as gw:
        client = openai.OpenAI(base_url=gw, api_key="x", max_retries=0)
        for p in prompts:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": p}]
            )
            rid = raw.headers["x-llmroute-request-id"]
            assert _feedback(gw, rid, quality=1.0 if len(p) % 2 else 0.0).status_code == 200
        assert _learned(gw).stats()["auto"]["outcomes"] == len(prompts)
    log = read_traces(str(tmp_path / "traces.sqlite"), columns={f"gw-{m}": m for m in table.models})
    assert len(log) == len(prompts) and set(log["model"]) <= set(table.models)
    assert log["propensity"].between(0, 1, inclusive="right").all() and (log["tradeoff"] == 0).all()
    out = tmp_path / "whatif.json"
    res = runner.invoke(
        cli, ["whatif", "--config", str(path), "--router", str(rpath), "--tradeoff", "0", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["n"] == len(prompts)


def _wait(pred: Any, what: str) -> None:
    end = time.monotonic() + 30
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_feedback_at_another_worker_before_its_trace_is_committed(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers sharing a store (`serve --workers 2` sets LLMROUTE_SHARED_DIR): feedback sent to a
    worker that has not seen the request's trace yet (the other worker's commit window, 3 s
    here) is answered 202 pending, not 404, and recorded and learned once the trace lands; an id
    that never lands expires (counted in /healthz)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("LLMROUTE_SHARED_DIR", str(shared))
    cfg = _config(fake_server, tmp_path, learner="greedy")
    cfg["store"]["commit_interval_s"] = 3.0  # the trace stays in a's journal, not in the database
    with (
        run_gateway(cfg, routers={"default": StubRouter()}) as a,
        run_gateway(cfg, routers={"default": StubRouter()}) as b,
    ):
        ((rid, _, _),) = _ask(a)
        r = httpx.post(f"{b}/feedback", json={"request_id": rid, "quality": 0.0}, timeout=30)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "pending" and "commit window" in r.json()["message"]
        gone = httpx.post(f"{b}/feedback", json={"request_id": "0" * 32, "quality": 1.0}, timeout=30)
        assert gone.status_code == 202
        health = httpx.get(f"{b.root}/healthz").json()
        assert health["pending_feedback"]["waiting"] == 2

        def learned() -> bool:
            return b.app.learning.stats()["llmroute/auto"]["outcomes"] == 1

        _wait(learned, "the pending outcome to be learned at b")
        assert a.app.store.get(rid)["outcome"] == {"quality": 0.0}  # stored with the trace
        _wait(lambda: a.app.learning.stats()["llmroute/auto"]["outcomes"] == 1, "a to sync")

        def expired() -> bool:
            return httpx.get(f"{b.root}/healthz").json()["pending_feedback"]["expired"] == 1

        _wait(expired, "the unknown id to expire")
        stats = httpx.get(f"{b.root}/healthz").json()["pending_feedback"]
        assert stats == {"waiting": 0, "resolved": 1, "expired": 1, "refused": 0}
        assert b.app.learning.stats()["llmroute/auto"]["outcomes"] == 1  # the unknown one taught nothing


def test_one_process_still_answers_404_for_an_unknown_id(fake_server: Any, tmp_path: Path) -> None:
    cfg = _config(fake_server, tmp_path, learner="greedy")
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        r = httpx.post(f"{gw}/feedback", json={"request_id": "0" * 32, "quality": 1.0}, timeout=30)
        assert r.status_code == 404 and "pending_feedback" not in httpx.get(f"{gw.root}/healthz").json()


def test_healthz_reports_learning_per_alias(fake_server: Any, tmp_path: Path, shared: str | None) -> None:
    cfg = _config(fake_server, tmp_path, shared, learner="greedy")
    cfg["aliases"]["plain"] = {"router": "default", "candidates": ["fake-strong", "fake-weak"]}
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        h = httpx.get(f"{gw.root}/healthz").json()["learning"]
        assert h["plain"] == {"enabled": False}
        on = h["llmroute/auto"]
        assert on["enabled"] is True and on["method"] == "greedy" and on["outcomes"] == 0
        assert on["snapshot"] > 0 and on["sync_error"] is None
        ((rid, _, _),) = _ask(gw)
        assert _feedback(gw, rid, quality=1.0).status_code == 200
        _learned(gw)
        on = httpx.get(f"{gw.root}/healthz").json()["learning"]["llmroute/auto"]
        assert on["outcomes"] == 1 and on["seq"] >= 1
        assert on["last_sync"] is not None and on["sync_age_s"] >= 0
        if shared:  # Redis: answering, nothing queued
            assert on["state"] == {"backend": "redis", "ok": True, "queued": 0, "dropped": 0, "recovered": 0}
        else:
            assert "state" not in on


def test_explore_loss_reaches_the_learner(fake_server: Any, tmp_path: Path) -> None:
    """The alias's conservative-exploration budget is its learner's, fresh or restored."""
    with run_gateway(
        _config(fake_server, tmp_path, explore_loss=0.0), routers={"default": StubRouter()}
    ) as gw:
        al = gw.app.learning.aliases["llmroute/auto"]
        assert al.learner.explore_loss == 0.0
        al.learner.explore_loss = 0.5
        assert al.configure(al.learner).explore_loss == 0.0
    with run_gateway(_config(fake_server, tmp_path / "b"), routers={"default": StubRouter()}) as gw:
        assert gw.app.learning.aliases["llmroute/auto"].learner.explore_loss == 0.002


def test_explore_decay_reaches_the_learner(fake_server: Any, tmp_path: Path) -> None:
    """`learning.explore_decay` is the alias's learner's, fresh or restored; off by default;
    a negative value is a config error."""
    from pydantic import ValidationError

    from llmroute.gateway.config_sections import LearningConfig

    with run_gateway(
        _config(fake_server, tmp_path, explore_decay=500.0), routers={"default": StubRouter()}
    ) as gw:
        al = gw.app.learning.aliases["llmroute/auto"]
        assert al.learner.explore_decay == 500.0
        al.learner.explore_decay = 0.0
        assert al.configure(al.learner).explore_decay == 500.0
    assert LearningConfig().explore_decay == 0.0
    with pytest.raises(ValidationError, match="explore_decay"):
        LearningConfig(explore_decay=-1)
