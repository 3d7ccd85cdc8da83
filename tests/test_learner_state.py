"""The online learner's shared state (`LearnerState`): the same semantics on SQLite (one host's
workers, `SQLiteLearnerState`) and Redis (replicas on several hosts, `RedisLearnerState`, a real
redis-server): per-request idempotence (explicit replaces implicit), incremental deltas, snapshots
and rollback; Redis only: bounded memory (terms folded into a snapshot are trimmed) and an outage
(outcomes queued, bounded, recorded when Redis returns). End to end: three `llmroute serve`
processes on one Redis learn each other's outcomes, take up a rollback, and ride out an outage."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml
from typer.testing import CliRunner

from conftest import RedisProc, Replica, loopback_config
from llmroute.gateway.learning import Outcome, SQLiteLearnerState
from llmroute.gateway.learning_redis import RedisLearnerState

ALIAS = "llmroute/auto"
X = np.array([0.6, -0.8, 0.0, 1.0])


def _o(rid: str, residual: float, source: str = "feedback", model: str = "m1", alias: str = ALIAS) -> Outcome:
    return Outcome(alias, rid, model, X.copy(), residual, 0.001, source, source == "feedback")


def _flush(rp: RedisProc) -> None:
    st = RedisLearnerState(rp.url)
    st.st.client.flushdb()
    st.close()


@pytest.fixture(params=["sqlite", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh learner state of each backend."""
    if request.param == "sqlite":
        st: Any = SQLiteLearnerState(str(tmp_path / "learner.sqlite"))
    else:
        rp = request.getfixturevalue("redis_proc")
        _flush(rp)
        st = RedisLearnerState(rp.url)
    try:
        yield st
    finally:
        st.close()


def test_explicit_replaces_implicit_and_repeats_are_ignored(state: Any) -> None:
    res = state.apply(
        [
            _o("r1", 0.5, "regenerate"),
            _o("r1", 0.1, "length"),  # a second implicit outcome: ignored
            _o("r1", 0.9),  # explicit: undoes the implicit one
            _o("r1", 0.9),  # the same explicit one again: ignored
            _o("r1", 0.2),  # a different explicit score: replaces
            _o("r2", 0.3),
            _o("r2", 0.3, alias="other"),  # another alias: its own request ids and sequence
        ]
    )
    assert res == ["applied", "ignored", "replaced", "ignored", "replaced", "applied", "applied"]
    d = state.deltas(ALIAS, 0)
    assert [(x.weight, x.residual) for x in d] == [
        (1.0, 0.5),
        (-1.0, 0.5),
        (1.0, 0.9),
        (-1.0, 0.9),
        (1.0, 0.2),
        (1.0, 0.3),
    ]
    assert [x.seq for x in d] == sorted(x.seq for x in d) and state.head(ALIAS) == d[-1].seq
    assert all(np.array_equal(x.x, X) and x.model == "m1" and x.cost_residual == 0.001 for x in d)
    assert len(state.deltas("other", 0)) == 1
    # an explicit outcome for another model of the same request replaces too
    assert state.apply([_o("r2", 0.3, model="m2")]) == ["replaced"]


def test_deltas_are_pulled_incrementally(state: Any) -> None:
    state.apply([_o("a", 0.1), _o("b", 0.2)])
    head = state.head(ALIAS)
    res, pulled = state.apply_and_pull([_o("c", 0.3)], {ALIAS: head})
    assert res == ["applied"]
    base, new = pulled[ALIAS]
    assert base == 0 and [d.residual for d in new] == [0.3] and new[0].seq > head


def _twin(state: Any, url: str | None) -> Any:
    """A second writer (another worker or replica) on the same shared state."""
    return SQLiteLearnerState(state.path) if url is None else RedisLearnerState(url)


def _terms(ds: Any) -> list[tuple[Any, ...]]:
    return [(d.seq, d.model, d.residual, d.cost_residual, d.weight, d.x.dtype, d.x.tolist()) for d in ds]


def test_a_writers_own_deltas_are_pulled_once_as_stored(state: Any, request: pytest.FixtureRequest) -> None:
    """`apply_and_pull` hands back the batch's own terms without reading them back: they come
    exactly once, after the other writers' new terms, in sequence order, with the values a read
    of the shared state returns (an undo term of a replaced outcome included; a batch of one
    and of several)."""
    url = None if isinstance(state, SQLiteLearnerState) else request.getfixturevalue("redis_proc").url
    other = _twin(state, url)
    try:
        other.apply([_o("a", 0.1, "regenerate")])
        res, pulled = state.apply_and_pull([_o("b", 0.2), _o("c", 0.3)], {ALIAS: 0})
        assert res == ["applied", "applied"]
        assert _terms(pulled[ALIAS][1]) == _terms(state.deltas(ALIAS, 0)) and len(pulled[ALIAS][1]) == 3
        head = state.head(ALIAS)
        other.apply([_o("d", 0.4)])
        # "a" replaced (an undo term, then the new one), "e" new; "b" again: ignored, no term
        res, pulled = state.apply_and_pull([_o("a", 0.5), _o("e", 0.6), _o("b", 0.2)], {ALIAS: head})
        assert res == ["replaced", "applied", "ignored"]
        new = pulled[ALIAS][1]
        assert _terms(new) == _terms(state.deltas(ALIAS, head))
        assert [(d.residual, d.weight) for d in new] == [(0.4, 1.0), (0.1, -1.0), (0.5, 1.0), (0.6, 1.0)]
        head = state.head(ALIAS)
        res, pulled = state.apply_and_pull([_o("f", 0.7)], {ALIAS: head})  # a batch of one
        assert res == ["applied"] and _terms(pulled[ALIAS][1]) == _terms(state.deltas(ALIAS, head))
        head = state.head(ALIAS)
        res, pulled = state.apply_and_pull([_o("f", 0.8)], {ALIAS: head})  # one, graded before
        assert res == ["replaced"] and _terms(pulled[ALIAS][1]) == _terms(state.deltas(ALIAS, head))
        assert [(d.residual, d.weight) for d in pulled[ALIAS][1]] == [(0.7, -1.0), (0.8, 1.0)]
        assert state.apply_and_pull([_o("f", 0.8)], {ALIAS: head + 2}) == (["ignored"], {ALIAS: (0, [])})
        # a worker behind sees every term once, its own included
        _, pulled = other.apply_and_pull([], {ALIAS: 0})
        assert _terms(pulled[ALIAS][1]) == _terms(state.deltas(ALIAS, 0))
        assert [d.seq for d in pulled[ALIAS][1]] == sorted({d.seq for d in pulled[ALIAS][1]})
    finally:
        other.close()


def test_a_rollback_by_another_writer_is_seen_at_the_next_pull(
    state: Any, request: pytest.FixtureRequest
) -> None:
    """The base snapshot id each pull reports follows a rollback written by another worker,
    with and without outcomes in the pull (no stale base kept between pulls)."""
    url = None if isinstance(state, SQLiteLearnerState) else request.getfixturevalue("redis_proc").url
    other = _twin(state, url)
    try:
        first = state.snapshot(ALIAS, 0, b"initial", "initial")
        _, pulled = state.apply_and_pull([_o("a", 0.1)], {ALIAS: 0})
        assert pulled[ALIAS][0] == first
        _, pulled = state.apply_and_pull([], {ALIAS: 0})
        assert pulled[ALIAS][0] == first
        rb = other.rollback(ALIAS, first)
        assert rb != first
        _, pulled = state.apply_and_pull([_o("b", 0.2)], {ALIAS: state.head(ALIAS)})
        assert pulled[ALIAS][0] == rb
        # "a" was learned before the rollback: no longer in the posterior, so it applies again
        res, pulled = state.apply_and_pull([_o("a", 0.1)], {ALIAS: state.head(ALIAS)})
        assert res == ["applied"] and [(d.residual, d.weight) for d in pulled[ALIAS][1]] == [(0.1, 1.0)]
        rb2 = other.rollback(ALIAS, first)
        _, pulled = state.apply_and_pull([], {ALIAS: state.head(ALIAS)})
        assert pulled[ALIAS][0] == rb2
    finally:
        other.close()


def test_the_periodic_pull_reads_on_the_loop_unless_the_state_is_busy(tmp_path: Path) -> None:
    """SQLite: `try_apply_and_pull` with no outcomes is the periodic sync's pull, run on the
    event loop: the other workers' new terms, nothing when none came; None (then a thread
    pulls) while this process's other thread holds the state."""
    path = str(tmp_path / "learner.sqlite")
    st, other = SQLiteLearnerState(path), SQLiteLearnerState(path)
    try:
        other.apply([_o("a", 0.1), _o("b", 0.2)])
        got = st.try_apply_and_pull([], {ALIAS: 1})
        assert (
            got is not None and got[0] == [] and [(d.seq, d.residual) for d in got[1][ALIAS][1]] == [(2, 0.2)]
        )
        assert st.try_apply_and_pull([], {ALIAS: 2}) == ([], {ALIAS: (0, [])})
        with st.lock:
            assert st.try_apply_and_pull([], {ALIAS: 0}) is None
    finally:
        st.close()
        other.close()


def test_snapshots_and_rollback(state: Any) -> None:
    first = state.snapshot(ALIAS, 0, b"initial", "initial")
    assert first is not None and state.snapshot(ALIAS, 0, b"again", "initial") is None  # one per kind and seq
    assert state.latest_base(ALIAS) == first
    state.apply([_o("a", 0.1), _o("b", 0.2, "regenerate")])
    head = state.head(ALIAS)
    periodic = state.snapshot(ALIAS, head, b"periodic", "periodic", 2.0)
    assert periodic is not None and state.latest_base(ALIAS) == first  # a periodic one is no new base
    assert state.load(ALIAS) == (periodic, head, b"periodic", "periodic")
    assert state.load(ALIAS, first) == (first, 0, b"initial", "initial")
    rb = state.rollback(ALIAS, first)
    assert state.latest_base(ALIAS) == rb and state.load(ALIAS) == (rb, head, b"initial", "rollback")
    kinds = [(s["kind"], s["seq"]) for s in state.snapshots(ALIAS)]
    assert kinds == [("rollback", head), ("periodic", head), ("initial", 0)]
    assert state.snapshots(ALIAS)[1]["outcomes"] == 2.0
    # outcomes learned before the rollback no longer count: the same ones apply again
    assert state.apply([_o("a", 0.1), _o("b", 0.9)]) == ["applied", "applied"]
    with pytest.raises(KeyError):
        state.rollback(ALIAS, 9999)


# ---- Redis only ------------------------------------------------------------------------------------


def test_redis_trims_terms_folded_into_a_snapshot(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    st = RedisLearnerState(redis_proc.url, max_snapshots=3)
    try:
        base = st.snapshot(ALIAS, 0, b"s0", "initial")
        st.apply([_o(f"r{i}", 0.1) for i in range(4)])
        st.snapshot(ALIAS, 4, b"s4", "periodic", 4.0)
        assert len(st.deltas(ALIAS, 0)) == 4  # the snapshot before (seq 0) held nothing
        st.apply([_o(f"r{i}", 0.1) for i in range(4, 8)])
        st.snapshot(ALIAS, 8, b"s8", "periodic", 8.0)
        # terms up to the previous snapshot's seq 4 are trimmed; a worker at seq 2 must reload
        assert [d.seq for d in st.deltas(ALIAS, 0)] == [5, 6, 7, 8]
        _, pulled = st.apply_and_pull([], {ALIAS: 2})
        assert pulled[ALIAS][1] is None
        _, pulled = st.apply_and_pull([], {ALIAS: 4})
        assert [d.seq for d in pulled[ALIAS][1]] == [5, 6, 7, 8]
        # a trimmed outcome can still be replaced (its term is kept with the request)
        assert st.apply([_o("r1", 0.7)]) == ["replaced"]
        assert [(d.weight, d.residual) for d in st.deltas(ALIAS, 8)] == [(-1.0, 0.1), (1.0, 0.7)]
        # at most 3 snapshots: the oldest periodic one went, the base stays
        st.snapshot(ALIAS, 9, b"s9", "manual", 9.0)
        assert [s["kind"] for s in st.snapshots(ALIAS)] == ["manual", "periodic", "initial"]
        assert st.latest_base(ALIAS) == base
    finally:
        st.close()


def test_a_redis_that_lost_its_data_makes_workers_reload(redis_proc: RedisProc) -> None:
    """A worker ahead of the alias's head (Redis restarted without its data) reloads instead of
    waiting for sequence numbers it has already seen."""
    _flush(redis_proc)
    st = RedisLearnerState(redis_proc.url)
    try:
        st.apply([_o("a", 0.1), _o("b", 0.2)])
        _, pulled = st.apply_and_pull([], {ALIAS: 2})
        assert pulled[ALIAS] == (0, [])
        st.st.client.flushdb()
        st.apply([_o("c", 0.3)])
        _, pulled = st.apply_and_pull([], {ALIAS: 2})
        assert pulled[ALIAS][1] is None
    finally:
        st.close()


def test_one_metrics_collector_per_registry_taken_over_by_the_newest_state() -> None:
    """A config reload starts new learners (a new state) while the old runtime drains: the
    registry keeps one set of learner-state series, the newest state's."""
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    old, new = RedisLearnerState("redis://127.0.0.1:1/0"), RedisLearnerState("redis://127.0.0.1:1/0")
    old.register_metrics(reg)
    new.register_metrics(reg)
    new._queue.append(_o("q", 0.1))
    text = generate_latest(reg).decode()
    assert text.count("llmroute_learning_queued_outcomes 1.0") == 1
    assert text.count("# TYPE llmroute_learning_state_degraded gauge") == 1
    old.close()  # the old runtime closes: the series stay (the new state's)
    assert "llmroute_learning_queued_outcomes 1.0" in generate_latest(reg).decode()
    new.close()
    assert "llmroute_learning" not in generate_latest(reg).decode()


def test_redis_outage_queues_outcomes_then_records_them(redis_proc: RedisProc) -> None:
    _flush(redis_proc)
    st = RedisLearnerState(redis_proc.url, retry_s=0.05, max_queued=2)
    other = RedisLearnerState(redis_proc.url)
    try:
        st.apply([_o("a", 0.1)])
        redis_proc.stop()
        res, pulled = st.apply_and_pull([_o("b", 0.2), _o("c", 0.3), _o("d", 0.4)], {ALIAS: 1})
        assert res == ["queued", "queued", "dropped"] and pulled == {}
        assert st.sync_error == "StateUnavailable"
        h = st.health()
        assert h["ok"] is False and h["queued"] == 2 and h["dropped"] == 1
    finally:
        redis_proc.start()
    try:
        end = time.monotonic() + 30
        while True:  # the next call after retry_s reaches Redis again
            res, pulled = st.apply_and_pull([], {ALIAS: 1})
            if st.sync_error is None or time.monotonic() > end:
                break
            time.sleep(0.05)
        assert st.sync_error is None
        # the queued outcomes were recorded first, then pulled like any other replica's
        assert [d.residual for d in pulled[ALIAS][1]] == [0.2, 0.3]
        assert [d.residual for d in other.deltas(ALIAS, 0)] == [0.1, 0.2, 0.3]
        assert st.health() == {"backend": "redis", "ok": True, "queued": 0, "dropped": 1, "recovered": 2}
    finally:
        st.close()
        other.close()


# ---- end to end: three `llmroute serve` processes on one Redis --------------------------------------


def _learning(root: str) -> dict[str, Any]:
    return httpx.get(f"{root}/healthz", timeout=30).json()["learning"][ALIAS]


def _until(roots: list[str], ok: Any, what: str) -> list[dict[str, Any]]:
    """Each replica's /healthz learning block once `ok(block)` holds for all (60 s at most)."""
    end = time.monotonic() + 60
    while True:
        hs = [_learning(r) for r in roots]
        if all(ok(h) for h in hs):
            return hs
        assert time.monotonic() < end, f"waited for {what}: {hs}"
        time.sleep(0.1)


def _served_and_graded(root: str, quality: float) -> str:
    """One chat request through `root`'s learning alias, then its feedback there; the request id."""
    client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(model=ALIAS, messages=MESSAGES)
    rid = raw.headers["x-llmroute-request-id"]
    end = time.monotonic() + 30
    while True:  # the trace is written just after the answer: 404 until then
        r = httpx.post(f"{root}/v1/feedback", json={"request_id": rid, "quality": quality}, timeout=30)
        if r.status_code != 404 or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text
    return rid


MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in one short paragraph."}]


@pytest.fixture
def learning_replicas(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path
) -> Iterator[tuple[list[Replica], Path]]:
    """Three `llmroute serve` processes (one worker each, their own SQLite trace store: as on three
    hosts) whose alias learns online, on one Redis."""
    _flush(redis_proc)
    paths = []
    for i in range(3):
        folder = tmp_path / f"host{i}"
        folder.mkdir()
        cfg = loopback_config(fake_server.base_url, folder)
        cfg["models"][0]["router_model"] = "gpt-4-1106-preview"
        cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
        cfg["models"][0]["timeout_s"] = 30.0
        cfg["state"] = redis_proc.url
        cfg["aliases"][ALIAS]["learning"] = {"enabled": True, "learner": "greedy", "sync_interval_s": 0.1}
        path = folder / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths.append(path)
    reps = [Replica(p, p.parent) for p in paths]
    try:
        for r in reps:
            if not r.ready.wait(120):
                raise RuntimeError("replica did not start:\n" + "".join(r.lines[-30:]))
        yield reps, paths[0]
    finally:
        for r in reps:
            r.stop()


def test_replicas_learn_from_each_others_outcomes_roll_back_and_ride_out_an_outage(
    learning_replicas: tuple[list[Replica], Path], redis_proc: RedisProc
) -> None:
    from llmroute.cli import app as cli

    reps, config = learning_replicas
    roots = [r.root for r in reps]
    start = _until(roots, lambda h: h["state"]["ok"], "the replicas to reach Redis")
    initial = start[0]["snapshot"]
    assert initial > 0 and all(h["snapshot"] == initial and h["outcomes"] == 0 for h in start)
    # an outcome given at one replica reaches the others' learners at their next sync
    _served_and_graded(roots[0], 0.0)
    _until(roots, lambda h: h["outcomes"] == 1 and h["seq"] == 1, "the outcome at every replica")
    # a rollback (here by the CLI on the shared state) is taken up by every replica
    res = CliRunner().invoke(
        cli, ["learner", "rollback", "--config", str(config), "--alias", ALIAS, "--to", str(initial)]
    )
    assert res.exit_code == 0, res.output
    hs = _until(roots, lambda h: h["outcomes"] == 0 and h["snapshot"] > initial, "the rollback everywhere")
    assert len({h["snapshot"] for h in hs}) == 1
    # Redis down: the replicas route on (their local learners), the feedback is stored and its
    # outcome queued; /healthz and /metrics say so
    redis_proc.stop()
    try:
        _served_and_graded(roots[1], 1.0)
        h = _until(roots[1:2], lambda h: h["state"]["queued"] == 1, "the outcome to be queued")[0]
        assert h["state"]["ok"] is False and h["sync_error"] == "StateUnavailable" and h["outcomes"] == 0
        metrics = httpx.get(f"{roots[1]}/metrics", timeout=30).text
        assert "llmroute_learning_state_degraded 1.0" in metrics
        assert "llmroute_learning_queued_outcomes 1.0" in metrics
        bad = CliRunner().invoke(cli, ["learner", "snapshots", "--config", str(config), "--alias", ALIAS])
        assert bad.exit_code == 1 and "does not answer" in bad.output
    finally:
        redis_proc.start()
    # Redis back: the queued outcome is recorded and every replica learns it
    hs = _until(
        roots,
        lambda h: h["outcomes"] == 1 and h["state"]["ok"] and h["sync_error"] is None,
        "the queued outcome at every replica after the outage",
    )
    assert hs[1]["state"]["queued"] == 0 and hs[1]["state"]["recovered"] == 1
    assert "llmroute_learning_state_degraded 0.0" in httpx.get(f"{roots[1]}/metrics", timeout=30).text


# ---- one gateway on Redis: a worker that fell behind, a start while Redis is down -----------------------


def _gateway_config(fake: Any, rp: RedisProc, tmp_path: Path, **learning: Any) -> dict[str, Any]:
    cfg = loopback_config(fake.base_url, tmp_path)
    cfg["state"] = rp.url
    cfg["aliases"][ALIAS]["learning"] = {
        "enabled": True,
        "learner": "greedy",
        "sync_interval_s": 0.05,
        **learning,
    }
    return cfg


def _wait(cond: Any, what: str) -> None:
    end = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < end, f"waited for {what}"
        time.sleep(0.05)


def test_a_worker_behind_the_trimmed_terms_reloads_from_the_snapshot(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path
) -> None:
    from conftest import StubRouter, run_gateway

    _flush(redis_proc)
    cfg = _gateway_config(fake_server, redis_proc, tmp_path, snapshot_every=2)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        learning = gw.app.learning
        for _ in range(8):
            _served_and_graded(gw.root, 0.0)
        _wait(lambda: learning.stats()[ALIAS]["outcomes"] == 8, "8 outcomes learned")
        st = RedisLearnerState(redis_proc.url)
        try:
            assert int(st.st.client.get(st._k("floor", ALIAS)) or 0) > 0  # periodic snapshots trimmed
        finally:
            st.close()
        al = learning.aliases[ALIAS]

        async def fall_behind() -> None:  # on the gateway's loop, between two syncs
            assert learning._sync_lock is not None
            async with learning._sync_lock:
                al.learner, al.seq = al.fresh(), 0

        loop = learning._task.get_loop()
        asyncio.run_coroutine_threadsafe(fall_behind(), loop).result(30)
        # its terms up to the floor are gone: the next sync reloads the newest snapshot + the rest
        _wait(lambda: learning.stats()[ALIAS]["outcomes"] == 8 and al.seq >= 8, "the reload")
        assert learning.sync_error is None


def test_a_gateway_started_while_redis_is_down_takes_up_the_shared_state(
    fake_server: Any, redis_proc: RedisProc, tmp_path: Path
) -> None:
    from conftest import StubRouter, run_gateway

    _flush(redis_proc)
    cfg = _gateway_config(fake_server, redis_proc, tmp_path)
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        _served_and_graded(a.root, 0.0)
        _wait(lambda: a.app.learning.stats()[ALIAS]["outcomes"] == 1, "the outcome learned")
        shared_snapshot = a.app.learning.stats()[ALIAS]["snapshot"]
        redis_proc.stop()
        try:
            with run_gateway(cfg, routers={"default": StubRouter()}) as b:  # starts anyway, fresh
                h = _learning(b.root)
                assert h["outcomes"] == 0 and h["snapshot"] == 0 and h["state"]["ok"] is False
                assert h["sync_error"] == "StateUnavailable"
                client = openai.OpenAI(base_url=b, api_key="x", max_retries=0, timeout=60)
                assert client.chat.completions.create(model=ALIAS, messages=MESSAGES).choices  # routes
                redis_proc.start()
                _wait(
                    lambda: (h := _learning(b.root))["outcomes"] == 1 and h["snapshot"] == shared_snapshot,
                    "the shared learner state once Redis answers",
                )
        finally:
            if redis_proc.proc is None:
                redis_proc.start()


class _FailingCommit:
    """A SQLite connection whose next COMMIT fails as a full disk would, after SQLite ran it
    (it stays in the transaction, holding the write lock)."""

    def __init__(self, db: Any) -> None:
        self.db, self.armed = db, True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


@pytest.mark.parametrize("path", ["thread", "loop"])
def test_a_failed_commit_releases_the_write_lock(tmp_path: Path, path: str) -> None:
    """SQLite: when COMMIT itself fails, the transaction is rolled back (the error still
    raises), so the state's write lock is free and the next writer, here another worker,
    records its outcome instead of waiting out the busy timeout."""
    file = str(tmp_path / "learner.sqlite")
    st, other = SQLiteLearnerState(file), SQLiteLearnerState(file)
    try:
        if path == "thread":
            real = st.db
            st.db = _FailingCommit(real)
            with pytest.raises(Exception, match="disk is full"):
                st.apply([_o("a", 0.1)])
            assert not real.in_transaction
        else:
            real = st._quick_db()
            st._quick = _FailingCommit(real)
            with pytest.raises(Exception, match="disk is full"):
                st.try_apply_and_pull([_o("a", 0.1)], {ALIAS: 0})
            assert not real.in_transaction
        other.db.execute("PRAGMA busy_timeout=0")  # waiting for a held lock would fail at once
        other.apply([_o("b", 0.2)])
        assert [d.residual for d in other.deltas(ALIAS, 0)] == [0.2]
    finally:
        st.close()
        other.close()
