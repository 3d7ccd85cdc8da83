"""Local-first learning in the gateway (`llmroute.gateway.learning`, SQLite learner state): a
worker learns its own outcome at once and publishes it lazily (the periodic sync, 64 pending,
`drain`, `stop`); idempotency by request id holds across workers when both learned an outcome of
the same request before either published. Two gateways on one trace store and one learner state
(as `serve --workers 2`), the official openai client against the fake upstream, the stub router;
the periodic sync is made rare (1 h) so the tests decide when each worker publishes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import StubRouter, run_gateway
from llmroute.gateway.learning import Outcome, SQLiteLearnerState, learner_state_path
from llmroute.gateway.outcomes import record_outcome
from test_gateway_learning import _ask, _config, _feedback, _rows, _wait

ALIAS = "llmroute/auto"


def _on(gw: Any, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` on the gateway's event loop (where the learner lives); its result."""
    loop = gw.app.learning._task.get_loop()
    return asyncio.run_coroutine_threadsafe(coro, loop).result(30)


async def _stats(gw: Any) -> dict[str, Any]:
    return gw.app.learning.stats()[ALIAS]


async def _posterior(gw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lr = gw.app.learning.aliases[ALIAS].learner
    return lr.A_inv_.copy(), lr.b_.copy(), lr.n_.copy()


def _outcomes(gw: Any) -> float:
    return _on(gw, _stats(gw))["outcomes"]


def _state_rows(gw: Any) -> list[tuple[float, str]]:
    """(weight, request id) of every term in the shared learner state, in order."""
    st = SQLiteLearnerState(learner_state_path(gw.app.config))
    try:
        with st.lock:
            rows = st.db.execute("SELECT weight, request_id FROM learner_deltas ORDER BY seq").fetchall()
        return [(float(w), str(r)) for w, r in rows]
    finally:
        st.close()


@pytest.fixture
def cfg(fake_server: Any, tmp_path: Path) -> dict[str, Any]:
    return _config(fake_server, tmp_path, learner="greedy", sync_interval_s=3600.0)


def test_an_outcome_is_learned_at_once_and_published_by_the_sync(cfg: dict[str, Any]) -> None:
    with (
        run_gateway(cfg, routers={"default": StubRouter()}) as a,
        run_gateway(cfg, routers={"default": StubRouter()}) as b,
    ):
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])
        before = _on(a, _posterior(a))
        assert _feedback(a, rid, quality=0.0).status_code == 200
        after = _on(a, _posterior(a))  # no sync ran: the worker's own learner has it already
        assert after[2].sum() == 1 and not np.array_equal(before[1], after[1])
        assert _state_rows(a) == []  # not published yet
        assert not a.app.learning.idle()
        _on(b, b.app.learning.sync())
        assert _outcomes(b) == 0  # the other worker sees it only once published
        _on(a, a.app.learning.sync())  # the periodic sync publishes it
        assert _state_rows(a) == [(1.0, rid)] and a.app.learning.idle()
        assert _outcomes(a) == 1  # its own row is passed, not learned again
        _on(b, b.app.learning.sync())
        pa, pb = _on(a, _posterior(a)), _on(b, _posterior(b))
        for x, y in zip(pa, pb, strict=True):  # the same term by the same update
            assert np.array_equal(x, y)
        assert a.app.learning.outcomes == {(ALIAS, "feedback", "applied"): 1}


def test_pending_outcomes_are_published_at_drain_and_at_stop(cfg: dict[str, Any], tmp_path: Path) -> None:
    with run_gateway(cfg, routers={"default": StubRouter()}) as b:
        with run_gateway(cfg, routers={"default": StubRouter()}) as a:
            calls = _ask(a, 5)
            _rows(a, [c[0] for c in calls])
            for rid, _, _ in calls[:2]:
                assert _feedback(a, rid, quality=1.0).status_code == 200
            _on(a, a.app.learning.drain())  # publishes what is pending
            assert [w for w, _ in _state_rows(a)] == [1.0, 1.0]
            for rid, _, _ in calls[2:]:
                assert _feedback(a, rid, quality=0.0).status_code == 200
            assert len(_state_rows(a)) == 2 and _outcomes(a) == 5
        # a stopped gracefully: its 3 pending outcomes were published, nothing lost
        assert [r for _, r in _state_rows(b)] == [c[0] for c in calls]
        _on(b, b.app.learning.sync())
        assert _outcomes(b) == 5
    with run_gateway(cfg, routers={"default": StubRouter()}) as c:  # a new worker starts with them
        assert _outcomes(c) == 5


def test_many_pending_outcomes_are_published_without_waiting_for_the_sync(
    cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmroute.gateway import learning_outcomes

    monkeypatch.setattr(learning_outcomes, "_PUBLISH_AT", 8)  # 256 by default
    _PUBLISH_AT = 8
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        calls = _ask(a, _PUBLISH_AT)
        _rows(a, [c[0] for c in calls])
        for rid, _, _ in calls[:-1]:
            assert _feedback(a, rid, quality=1.0).status_code == 200
        assert _state_rows(a) == []
        assert _feedback(a, calls[-1][0], quality=1.0).status_code == 200  # the 64th starts a publication
        _wait(lambda: len(_state_rows(a)) == _PUBLISH_AT, "the pending outcomes to be published")
        assert a.app.learning.outcomes == {(ALIAS, "feedback", "applied"): _PUBLISH_AT}


def test_a_second_outcome_of_a_pending_request_is_settled_locally(cfg: dict[str, Any]) -> None:
    """An implicit outcome, a repeat of it and an explicit one of the same request, all before the
    worker publishes: one term is published (the explicit one), no undo row; the counts are those
    of one outcome at a time."""
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])
        _on(a, record_outcome(a.app, rid, 0.0, "regenerate"))
        _on(a, record_outcome(a.app, rid, 0.0, "length"))  # a second implicit one: ignored
        assert _outcomes(a) == 1
        assert _feedback(a, rid, quality=1.0).status_code == 200  # replaces the implicit one
        assert _outcomes(a) == 1
        _on(a, a.app.learning.sync())
        assert _state_rows(a) == [(1.0, rid)]
        st = SQLiteLearnerState(learner_state_path(a.app.config))
        try:
            (d,) = st.deltas(ALIAS, 0)
        finally:
            st.close()
        assert d.residual > 0  # the explicit score's term (quality 1 - q0), not the implicit one's
        assert a.app.learning.outcomes == {
            (ALIAS, "regenerate", "applied"): 1,
            (ALIAS, "length", "ignored"): 1,
            (ALIAS, "feedback", "replaced"): 1,
        }


@pytest.mark.parametrize("first", ["explicit", "implicit"])
def test_outcomes_of_one_request_at_two_workers_before_either_published(
    cfg: dict[str, Any], first: str
) -> None:
    """Worker a learns an implicit outcome and worker b an explicit one of the same request, each
    at once; then they publish in either order. Explicit first: a's implicit outcome is ignored by
    its publication and undone in a's learner. Implicit first: b's publication replaces it (a -1
    row) and b learns that undo. Either way both workers end with one outcome, the explicit one."""
    with (
        run_gateway(cfg, routers={"default": StubRouter()}) as a,
        run_gateway(cfg, routers={"default": StubRouter()}) as b,
    ):
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])
        _on(a, record_outcome(a.app, rid, 0.0, "regenerate"))
        assert _feedback(b, rid, quality=1.0).status_code == 200
        assert _outcomes(a) == 1 and _outcomes(b) == 1  # each learned its own at once
        order = (b, a) if first == "explicit" else (a, b)
        for gw in order:
            _on(gw, gw.app.learning.sync())
        for gw in order:  # the other's rows
            _on(gw, gw.app.learning.sync())
        assert _outcomes(a) == 1 and _outcomes(b) == 1
        pa, pb = _on(a, _posterior(a)), _on(b, _posterior(b))
        for x, y in zip(pa, pb, strict=True):
            assert np.allclose(x, y, rtol=1e-9, atol=1e-12)
        st = SQLiteLearnerState(learner_state_path(a.app.config))
        try:
            explicit = [d for d in st.deltas(ALIAS, 0) if d.weight > 0][-1]
        finally:
            st.close()
        assert explicit.residual > 0  # quality 1's term is the one that counts
        if first == "explicit":
            assert _state_rows(a) == [(1.0, rid)]
            assert a.app.learning.outcomes == {(ALIAS, "regenerate", "ignored"): 1}
            assert b.app.learning.outcomes == {(ALIAS, "feedback", "applied"): 1}
        else:
            assert [w for w, _ in _state_rows(a)] == [1.0, -1.0, 1.0]
            assert a.app.learning.outcomes == {(ALIAS, "regenerate", "applied"): 1}
            assert b.app.learning.outcomes == {(ALIAS, "feedback", "replaced"): 1}


def test_a_learned_publication_marks_only_the_outcomes_own_rows(tmp_path: Path) -> None:
    """`apply_and_pull(..., learned=True)`: the other writers' rows and the undo row of a replaced
    outcome come back to be learned; the publishing worker's own +1 rows come back marked
    `learned` (their seq passed, not learned again)."""
    st = SQLiteLearnerState(str(tmp_path / "s.sqlite"))
    x = np.array([0.5, -0.5, 1.0, 0.0])
    try:
        other = Outcome(ALIAS, "r1", "m1", x, -0.4, None, "regenerate", False)
        assert st.apply([other]) == ["applied"]
        mine = [
            Outcome(ALIAS, "r1", "m1", x, 0.6, None, "feedback", True),
            Outcome(ALIAS, "r2", "m2", x, 0.1, 0.01, "feedback", True),
            Outcome(ALIAS, "r3", "m2", x, 0.2, None, "length", False),
        ]
        for quick in (True, False):
            res, pulled = (
                st.try_apply_and_pull(mine, {ALIAS: 0}, learned=True)  # type: ignore[misc]
                if quick
                else st.apply_and_pull(mine, {ALIAS: 0}, learned=True)
            )
            got = [(d.seq, d.weight, d.residual, d.learned) for d in pulled[ALIAS][1]]
            if quick:
                assert res == ["replaced", "applied", "applied"]
                assert got == [
                    (1, 1.0, -0.4, False),  # the other writer's
                    (2, -1.0, -0.4, False),  # the undo of it: new to this worker
                    (3, 1.0, 0.6, True),
                    (4, 1.0, 0.1, True),
                    (5, 1.0, 0.2, True),
                ]
            else:  # the same outcomes again: repeats, ignored (for the caller to undo), nothing written
                assert res == ["ignored"] * 3 and [s for s, _, _, _ in got] == [1, 2, 3, 4, 5]
                assert not any(learned for _, _, _, learned in got)
    finally:
        st.close()


def test_a_reload_keeps_the_outcomes_not_yet_published(cfg: dict[str, Any]) -> None:
    """A worker that reloads its learner (a rollback by `llmroute learner rollback`, here on the
    state) learns again its own outcomes not yet published (in no snapshot nor delta row); the
    published one the rollback drops stays dropped."""
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        calls = _ask(a, 2)
        _rows(a, [c[0] for c in calls])
        assert _feedback(a, calls[0][0], quality=0.0).status_code == 200
        _on(a, a.app.learning.sync())  # published
        st = SQLiteLearnerState(learner_state_path(a.app.config))
        try:
            initial = next(s for s in st.snapshots(ALIAS) if s["kind"] == "initial")
            st.rollback(ALIAS, initial["id"])
        finally:
            st.close()
        assert _feedback(a, calls[1][0], quality=0.0).status_code == 200  # pending
        learning = a.app.learning
        al = learning.aliases[ALIAS]

        async def reload() -> None:
            learning._install(al, await asyncio.to_thread(learning._fetch, al))

        _on(a, reload())
        assert _outcomes(a) == 1  # the pending outcome, learned again; the rolled-back one gone
        _on(a, learning.sync())  # published after the rollback: it stays
        assert _outcomes(a) == 1 and _state_rows(a)[-1] == (1.0, calls[1][0])


def test_the_awaited_outcome_api_records_at_once_beside_pending_ones(cfg: dict[str, Any]) -> None:
    """`Learning.outcome` (awaited: its result) records through the state at once; an outcome of
    the same request pending here is published first, so the awaited one is settled against it."""
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        calls = _ask(a, 2)
        _rows(a, [c[0] for c in calls])
        learning = a.app.learning
        _on(a, record_outcome(a.app, calls[0][0], 0.0, "regenerate"))  # pending
        assert _on(a, learning.outcome(calls[0][0], 1.0, "feedback")) == "replaced"
        assert _on(a, learning.outcome(calls[1][0], 1.0, "feedback")) == "applied"
        assert _on(a, learning.outcome(calls[1][0], 1.0, "feedback")) == "ignored"
        assert [w for w, _ in _state_rows(a)] == [1.0, -1.0, 1.0, 1.0]
        assert _outcomes(a) == 2


def test_contexts_are_stored_exactly_and_older_list_traces_still_learn(cfg: dict[str, Any]) -> None:
    """The trace keeps each decision's context as base64 float32 (`encode_contexts`): decoded
    bit for bit; traces written before it (a JSON list of floats) give the same outcome; a
    malformed context is no outcome (never a guess)."""
    from llmroute.gateway.learning_traces import _trace_fields, decode_context, encode_contexts

    X = np.random.default_rng(0).standard_normal((3, 34)).astype(np.float32)
    enc = encode_contexts(X)
    assert len(enc) == 3 and all(isinstance(v, str) for v in enc)
    for row, v in zip(X, enc, strict=True):
        got = decode_context(v)
        assert got is not None and got.dtype == np.float64
        np.testing.assert_array_equal(got, row.astype(np.float64))
        np.testing.assert_array_equal(decode_context(row.tolist()), got)  # the older list form
    assert decode_context("not base64!") is None and decode_context("AAA=") is None  # 2 bytes
    assert decode_context(None) is None and decode_context(["a", "b"]) is None

    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        ((rid, _, _),) = _ask(gw)
        _rows(gw, [rid])
        row = gw.app.store.run(lambda b: _trace_fields(b, rid))
        learning = gw.app.learning
        new = learning._outcome(row, rid, 1.0, "feedback")
        x_list = decode_context(row["learner"]["x"]).tolist()
        old = learning._outcome({**row, "learner": {**row["learner"], "x": x_list}}, rid, 1.0, "feedback")
        assert new is not None and old is not None
        np.testing.assert_array_equal(new.x, old.x)
        assert (new.residual, new.cost_residual, new.model) == (old.residual, old.cost_residual, old.model)
        for bad in ("%%%", x_list[:-1], None):  # not a context of the learner's dim: no outcome
            assert (
                learning._outcome({**row, "learner": {**row["learner"], "x": bad}}, rid, 1.0, "feedback")
                is None
            )
