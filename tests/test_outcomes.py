"""`llmroute.gateway.outcomes`: the scores a feedback body gives, and `record_outcome` storing
explicit and implicit outcomes apart (e2e: the official openai client against the fake upstream)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.gateway.outcomes import record_outcome, score_from_feedback


@pytest.mark.parametrize(
    ("body", "score"),
    [
        ({"quality": 0.25}, 0.25),
        ({"score": 1}, 1.0),
        ({"thumbs": "up"}, 1.0),
        ({"thumbs": "Down"}, 0.0),
        ({"thumbs": True}, 1.0),
        ({"thumbs": False}, 0.0),
        ({"label": "partial"}, 0.5),
        ({"label": "WRONG"}, 0.0),
        ({"comment": "no score"}, None),
    ],
)
def test_score_from_feedback(body: dict[str, Any], score: float | None) -> None:
    assert score_from_feedback(body) == score


@pytest.mark.parametrize(
    ("body", "what"),
    [({"quality": 1.5}, "quality"), ({"thumbs": "sideways"}, "thumbs"), ({"label": "meh"}, "label")],
)
def test_score_from_feedback_rejects_bad_values(body: dict[str, Any], what: str) -> None:
    with pytest.raises(ValueError, match=what):
        score_from_feedback(body)


def test_explicit_and_implicit_outcomes_are_stored_apart(fake_server: Any, tmp_path: Path) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        client = openai.OpenAI(base_url=gw, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "hi"}]
        )
        rid = raw.headers["x-llmroute-request-id"]
        app = gw.app
        seen: list[tuple[str, dict[str, Any]]] = []
        loops: list[asyncio.AbstractEventLoop] = []

        async def hook(request_id: str, outcome: dict[str, Any]) -> None:
            loops.append(asyncio.get_running_loop())
            seen.append((request_id, outcome))

        app.feedback_hooks.append(hook)
        r = httpx.post(f"{gw}/feedback", json={"request_id": rid, "thumbs": "down", "note": "meh"})
        assert r.status_code == 200, r.text
        loop = loops[0]  # the gateway's event loop: record_outcome runs there
        fut = asyncio.run_coroutine_threadsafe(record_outcome(app, rid, 1.0, "regenerate"), loop)
        assert fut.result(10) is True
        unknown = asyncio.run_coroutine_threadsafe(record_outcome(app, "0" * 32, 1.0, "length"), loop)
        assert unknown.result(10) is False
        assert seen == [
            (rid, {"quality": 0.0, "thumbs": "down", "note": "meh"}),
            (rid, {"regenerate": 1.0}),
        ]
        bad = httpx.post(f"{gw}/feedback", json={"request_id": rid, "thumbs": "sideways"})
        assert bad.status_code == 400
        app.store.flush_sync()
        out = app.store.get(rid)["outcome"]
        assert out == {"quality": 0.0, "thumbs": "down", "note": "meh", "regenerate": 1.0}


def test_pending_outcomes_are_bounded_and_expire() -> None:
    """`PendingOutcomes` keeps at most `max_items` outcomes (a full queue refuses: /v1/feedback
    then answers 404) and drops one whose trace never lands after `wait_s`."""
    from types import SimpleNamespace

    from llmroute.gateway.outcomes import PendingOutcomes

    class Store:
        async def aattach_feedback(self, request_id: str, outcome: dict[str, Any], owner: Any) -> bool:
            return False  # the trace never lands

    gw = SimpleNamespace(
        config=SimpleNamespace(store=SimpleNamespace(commit_interval_s=0.5)),
        store=Store(),
        learning=None,
        feedback_hooks=[],
    )

    async def scenario() -> dict[str, int]:
        p = PendingOutcomes(gw, wait_s=0.05, max_items=1, retry_s=0.01)  # type: ignore[arg-type]
        assert p.add("a", 1.0, "feedback", None, None)
        assert p.add("a", 0.0, "feedback", None, None)  # the same request and source: replaced
        assert not p.add("b", 1.0, "feedback", None, None)  # full
        assert PendingOutcomes(gw).wait_s == 3.0  # type: ignore[arg-type]  # 2 x commit + 2 s
        for _ in range(500):
            if not p.stats()["waiting"]:
                break
            await asyncio.sleep(0.01)
        return p.stats()

    assert asyncio.run(scenario()) == {"waiting": 0, "resolved": 0, "expired": 1, "refused": 1}


def test_pending_outcomes_are_kept_per_owner() -> None:
    """Feedback from a key that does not own the request cannot replace the owner's pending
    outcome, and one key can hold at most `max_per_owner` places in the queue."""
    from types import SimpleNamespace

    from llmroute.gateway.outcomes import PendingOutcomes

    landed: dict[str, Any] = {}

    class Store:
        async def aattach_feedback(self, request_id: str, outcome: dict[str, Any], owner: Any) -> bool:
            if owner != "key-a":  # the trace belongs to key A
                return False
            landed[request_id] = outcome
            return True

    gw = SimpleNamespace(
        config=SimpleNamespace(store=SimpleNamespace(commit_interval_s=0.5)),
        store=Store(),
        learning=None,
        feedback_hooks=[],
    )

    async def scenario() -> dict[str, int]:
        p = PendingOutcomes(gw, wait_s=0.2, max_items=100, retry_s=0.01, max_per_owner=2)  # type: ignore[arg-type]
        assert p.add("r1", 1.0, "feedback", "key-a", None)
        assert p.add("r1", 0.0, "feedback", "key-b", None)  # B's does not replace A's
        assert p.add("r2", 0.0, "feedback", "key-b", None)
        assert not p.add("r3", 0.0, "feedback", "key-b", None)  # B's share is full
        assert p.add("r3", 1.0, "feedback", "key-a", None)  # A still gets a place
        for _ in range(500):
            if not p.stats()["waiting"]:
                break
            await asyncio.sleep(0.01)
        assert p.add("r4", 0.0, "feedback", "key-b", None)  # places are given back
        return p.stats()

    stats = asyncio.run(scenario())
    assert set(landed) == {"r1", "r3"}
    assert stats["resolved"] == 2 and stats["expired"] == 2 and stats["refused"] == 1


def test_a_batch_of_first_outcomes_is_recorded_like_one_by_one(tmp_path: Path) -> None:
    """The learner state's usual batch (requests graded for the first time) is written in two
    multi-row inserts: the same deltas, sequence numbers and per-request bookkeeping as one
    outcome at a time, so later outcomes of those requests are ignored or replace as usual; a
    batch with a request graded before, or twice, is recorded one by one."""
    import numpy as np

    from llmroute.gateway.learning import Outcome, SQLiteLearnerState

    def o(rid: str, r: float, source: str = "feedback", model: str = "m1") -> Outcome:
        x = np.array([r, 1.0 - r, 0.0, 1.0])
        return Outcome("a", rid, model, x, r, None if r > 0.5 else 0.01, source, source == "feedback")

    batch = [o(f"r{i}", i / 10) for i in range(8)] + [o("i1", 0.4, "regenerate")]
    fast, slow = (
        SQLiteLearnerState(str(tmp_path / "f.sqlite")),
        SQLiteLearnerState(str(tmp_path / "s.sqlite")),
    )
    try:
        assert fast.apply(batch) == ["applied"] * 9
        assert [slow.apply([b])[0] for b in batch] == ["applied"] * 9
        df, ds = fast.deltas("a", 0), slow.deltas("a", 0)
        assert [d.seq for d in df] == [d.seq for d in ds] == list(range(1, 10))
        for a, b in zip(df, ds, strict=True):
            assert (a.model, a.residual, a.cost_residual, a.weight) == (
                b.model,
                b.residual,
                b.cost_residual,
                b.weight,
            )
            assert np.array_equal(a.x, b.x)
        # the bookkeeping points at those deltas: repeats are ignored, explicit ones replace
        later = [o("r1", 0.1), o("i1", 0.9), o("r2", 0.7, "length"), o("new", 0.3)]
        for st in (fast, slow):
            assert st.apply(later) == ["ignored", "replaced", "ignored", "applied"]
            assert st.apply([o("n1", 0.2), o("n1", 0.6)]) == ["applied", "replaced"]  # twice in one batch
        tail = [(d.seq, d.weight, d.residual) for d in fast.deltas("a", 9)]
        assert tail == [(d.seq, d.weight, d.residual) for d in slow.deltas("a", 9)]
        assert [w for _, w, _ in tail] == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]
    finally:
        fast.close()
        slow.close()


def test_the_loop_records_a_small_batch_only_when_nobody_else_writes(tmp_path: Path) -> None:
    """`try_apply_and_pull` (a small batch recorded on the event loop) never waits: with the
    state held by another process (or another thread of this one) it writes nothing and says
    so (None), and the same batch then goes through `apply_and_pull` once the holder is done."""
    import sqlite3

    import numpy as np

    from llmroute.gateway.learning import Outcome, SQLiteLearnerState

    path = tmp_path / "state.sqlite"
    st = SQLiteLearnerState(str(path))
    o = Outcome("a", "r1", "m1", np.array([0.6, -0.8, 0.0, 1.0]), 0.2, None, "feedback", True)
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another worker's transaction
        assert st.try_apply_and_pull([o], {"a": 0}) is None
        other.execute("COMMIT")
        other.close()
        with st.lock:  # this process's thread is using the state
            assert st.try_apply_and_pull([o], {"a": 0}) is None
        assert st.head("a") == 0  # nothing was written by the refused tries
        res, pulled = st.try_apply_and_pull([o], {"a": 0})  # type: ignore[misc]
        assert res == ["applied"] and [d.residual for d in pulled["a"][1]] == [0.2]
        assert st.apply_and_pull([o], {"a": 1}) == (["ignored"], {"a": (0, [])})
        st.checkpoint()
    finally:
        st.close()


def test_feedback_is_learned_while_another_worker_holds_the_learner_state(
    fake_server: Any, tmp_path: Path
) -> None:
    """/v1/feedback answers at once while another process holds the learner state's write lock;
    the outcome is learned at once by this worker (local-first) and published when the lock is
    released (the loop's non-waiting write is refused, the batch goes to a thread that waits)."""
    import sqlite3
    import time

    from llmroute.gateway.learning import learner_state_path

    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["aliases"]["llmroute/auto"]["learning"] = {"enabled": True, "sync_interval_s": 0.05}
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        client = openai.OpenAI(base_url=gw, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "hi"}]
        )
        rid = raw.headers["x-llmroute-request-id"]
        app = gw.app
        app.store.flush_sync()
        learning = app.learning
        other = sqlite3.connect(learner_state_path(app.config), isolation_level=None, timeout=30)
        other.execute("BEGIN IMMEDIATE")
        try:
            r = httpx.post(f"{gw}/feedback", json={"request_id": rid, "quality": 0.0}, timeout=30)
            assert r.status_code == 200, r.text
            time.sleep(0.3)  # hold it past a few syncs: the publication meets the lock
            assert learning.stats()["llmroute/auto"]["outcomes"] == 1  # learned at once
            assert not learning.outcomes and not learning.idle()  # not recorded while held
        finally:
            other.execute("COMMIT")
            other.close()
        end = time.monotonic() + 30
        while not learning.outcomes and time.monotonic() < end:
            time.sleep(0.02)
        assert learning.stats()["llmroute/auto"]["outcomes"] == 1
        assert learning.outcomes[("llmroute/auto", "feedback", "applied")] == 1


def test_attach_and_read_stores_the_outcome_and_reads_the_learner_fields(tmp_path: Path) -> None:
    """SQLite: the outcome is attached and the learner's trace fields read in one query
    (`attach_read`): the same fields `_trace_fields` reads, the outcome merged as `attach` merges
    it, nothing attached (None) for another key's or an unknown request."""
    from llmroute.gateway.learning import _FIELDS, _fields, _trace_fields
    from llmroute.gateway.store import open_store

    feat = {"x": [0.5, 1.0], "q0": {"m1": 0.7}, "c0": {"m1": 0.001}}
    row = {"alias": "a", "model": "m1", "status": 200, "cost_usd": 0.002}
    with open_store(f"sqlite:///{tmp_path}/t.sqlite") as st:
        st.write({"request_id": "r1", **row, "key_id": "k1", "learner": feat, "outcome": {"regenerate": 0.0}})
        st.flush_sync()

        def attach(b: Any) -> tuple[Any, ...]:
            before = _trace_fields(b, "r1")
            got = b.attach_read("r1", {"quality": 1.0}, "k1", _FIELDS)
            return before, got, b.attach_read("r1", {"quality": 0.0}, "k2", _FIELDS), b.attach_read("no", {})

        before, got, other, missing = st.run(attach)
        assert got is not None and _fields(got) == before == {**row, "learner": feat}
        assert other is None and missing is None
        rec = st.get("r1")
        assert rec is not None and rec["outcome"] == {"regenerate": 0.0, "quality": 1.0}
