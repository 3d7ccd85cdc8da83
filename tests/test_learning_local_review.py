"""Review of local-first learning (`llmroute.gateway.learning`, SQLite learner state): the
publication's failure and in-flight paths. A publication is made to run on a thread (the quick
path on the loop answers busy) and to wait there until the test lets it go, so that outcomes can
arrive, `drain` can be called, while it is in flight; deterministic (no wall-clock assertions).
Same setup as tests/test_learning_local.py: the gateway on the fake upstream, the stub router,
the official openai client, the periodic sync made rare (1 h)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import StubRouter, run_gateway
from llmroute.gateway.learning import SQLiteLearnerState, learner_state_path
from llmroute.gateway.outcomes import record_outcome
from test_gateway_learning import _ask, _config, _rows
from test_learning_local import ALIAS, _on, _posterior, _state_rows

#: (first outcome, in the publication that fails; second, learned while it is in flight) as
#: (source, score); and which of the two counts (the state's rule: the first implicit one, or the
#: last explicit one) with the counts of the two
CASES = {
    "explicit_then_implicit": (
        ("feedback", 1.0),
        ("regenerate", 0.0),
        0,
        {"feedback": "applied", "regenerate": "ignored"},
    ),
    "implicit_then_implicit": (
        ("regenerate", 0.0),
        ("length", 1.0),
        0,
        {"regenerate": "applied", "length": "ignored"},
    ),
    "implicit_then_explicit": (
        ("regenerate", 0.0),
        ("feedback", 1.0),
        1,
        {"regenerate": "applied", "feedback": "replaced"},
    ),
}


class _HeldPublication:
    """Make `st`'s publications (outcomes given) run on a thread and wait there for `go`; then
    raise `error` (None: publish). The pull alone (no outcomes) is left alone."""

    def __init__(self, st: SQLiteLearnerState, error: Exception | None) -> None:
        self.st, self.error = st, error
        self.entered, self.go = threading.Event(), threading.Event()
        self._quick, self._full = st.try_apply_and_pull, st.apply_and_pull
        st.try_apply_and_pull = self.quick  # type: ignore[method-assign]
        st.apply_and_pull = self.full  # type: ignore[method-assign]

    def quick(self, outcomes: Any, after: Any, **kw: Any) -> Any:
        return None if outcomes else self._quick(outcomes, after, **kw)  # busy: go to a thread

    def full(self, outcomes: Any, after: Any, **kw: Any) -> Any:
        if outcomes:
            self.entered.set()
            assert self.go.wait(60), "the test never let the publication go"
            if self.error is not None:
                raise self.error
        return self._full(outcomes, after, **kw)

    def restore(self) -> None:
        self.st.try_apply_and_pull = self._quick  # type: ignore[method-assign]
        self.st.apply_and_pull = self._full  # type: ignore[method-assign]


@pytest.fixture
def cfg(fake_server: Any, tmp_path: Path) -> dict[str, Any]:
    return _config(fake_server, tmp_path, learner="greedy", sync_interval_s=3600.0)


@pytest.mark.parametrize("case", list(CASES))
def test_a_failed_publication_keeps_the_outcome_that_counts(cfg: dict[str, Any], case: str) -> None:
    """A publication fails while a second outcome of the same request is learned (pending): the
    failed batch's outcome and the new one are settled as if both were pending here (the
    state's rule), not by arrival alone: an explicit outcome is not lost to a later implicit
    one. The outcome published next is the one that counts; the learner holds it alone (the
    same posterior as a worker that pulls it), and the counts are those of one at a time."""
    (s1, q1), (s2, q2), keep, counts = CASES[case]
    with (
        run_gateway(cfg, routers={"default": StubRouter()}) as a,
        run_gateway(cfg, routers={"default": StubRouter()}) as b,
    ):
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])
        learning = a.app.learning
        held = _HeldPublication(learning.state, sqlite3.OperationalError("database is locked"))

        async def scenario() -> None:
            assert await record_outcome(a.app, rid, q1, s1)  # pending
            sync = asyncio.ensure_future(learning.sync())
            await asyncio.to_thread(held.entered.wait, 60)  # the publication is on its thread
            assert await record_outcome(a.app, rid, q2, s2)  # learned meanwhile, pending
            held.go.set()
            with pytest.raises(sqlite3.OperationalError):
                await sync
            held.restore()
            await learning.sync()  # published now

        _on(a, scenario())
        rows = _state_rows(a)
        assert [w for w, _ in rows] == [1.0] and rows[0][1] == rid
        st = SQLiteLearnerState(learner_state_path(a.app.config))
        try:
            with st.lock:
                sources = [r[0] for r in st.db.execute("SELECT source FROM learner_deltas").fetchall()]
        finally:
            st.close()
        assert sources == [(s1, s2)[keep]]  # the outcome that counts is the one published
        pa = _on(a, _posterior(a))
        assert pa[2].sum() == 1
        _on(b, b.app.learning.sync())
        pb = _on(b, _posterior(b))
        for x, y in zip(pa, pb, strict=True):
            assert np.allclose(x, y, rtol=1e-9, atol=1e-12)
        assert learning.outcomes == {(ALIAS, s, r): 1 for s, r in counts.items()}
        assert learning.idle()


def test_drain_waits_for_a_publication_in_flight(cfg: dict[str, Any]) -> None:
    """`drain` while another sync (the periodic one) publishes on a thread: nothing is pending
    here any more, but `drain` returns only once that publication is done (its row in the
    state, counted)."""
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])
        learning = a.app.learning
        held = _HeldPublication(learning.state, None)

        async def scenario() -> bool:
            assert await record_outcome(a.app, rid, 1.0, "feedback")
            sync = asyncio.ensure_future(learning.sync())  # as the periodic sync does
            await asyncio.to_thread(held.entered.wait, 60)
            drain = asyncio.ensure_future(learning.drain())
            for _ in range(10):
                await asyncio.sleep(0)
            early = drain.done()
            held.go.set()
            await drain
            published = learning.outcomes == {(ALIAS, "feedback", "applied"): 1}
            await sync
            return not early and published

        assert _on(a, scenario())
        assert _state_rows(a) == [(1.0, rid)]


def test_stop_waits_for_the_periodic_publication_in_flight(cfg: dict[str, Any]) -> None:
    """`stop` while the periodic sync publishes on a thread: the publication finishes (not
    cancelled half-way, which put its outcomes back as pending though the thread committed
    them): its row is in the state once, counted, nothing left pending."""
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])
        learning = a.app.learning
        held = _HeldPublication(learning.state, None)

        async def scenario() -> None:
            assert await record_outcome(a.app, rid, 1.0, "feedback")
            periodic = learning._task
            periodic.cancel()  # its place is taken by a sync held in its publication
            learning._task = asyncio.ensure_future(learning.sync())
            await asyncio.to_thread(held.entered.wait, 60)
            stop = asyncio.ensure_future(learning.stop())
            for _ in range(10):
                await asyncio.sleep(0)
            held.go.set()
            await stop

        _on(a, scenario())
        assert _state_rows(a) == [(1.0, rid)]
        assert learning._pending == {}
        assert learning.outcomes == {(ALIAS, "feedback", "applied"): 1}


def test_a_failed_snapshot_of_one_alias_does_not_make_another_learn_its_outcome_twice(
    cfg: dict[str, Any],
) -> None:
    """Two learning aliases publish in one sync; the periodic snapshot of the first fails (the
    state busy). The second alias's pulled terms (its own outcome, marked learned) are applied
    all the same: the next sync does not learn that outcome a second time."""
    import openai

    other = "llmroute/other"
    cfg["aliases"][ALIAS]["learning"]["snapshot_every"] = 1
    cfg["aliases"][other] = {**cfg["aliases"][ALIAS], "learning": dict(cfg["aliases"][ALIAS]["learning"])}
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        client = openai.OpenAI(base_url=a, api_key="x", max_retries=0)
        rids = []
        for alias in (ALIAS, other):
            raw = client.chat.completions.with_raw_response.create(
                model=alias, messages=[{"role": "user", "content": "hi"}]
            )
            rids.append(raw.headers["x-llmroute-request-id"])
        _rows(a, rids)
        learning = a.app.learning
        st = learning.state
        snapshot = st.snapshot

        def busy(*args: Any, **kw: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        async def scenario() -> None:
            for rid in rids:
                assert await record_outcome(a.app, rid, 1.0, "feedback")
            st.snapshot = busy  # type: ignore[method-assign]
            with pytest.raises(sqlite3.OperationalError):
                await learning.sync()  # published; the first alias's snapshot fails
            st.snapshot = snapshot  # type: ignore[method-assign]
            await learning.sync()

        _on(a, scenario())
        assert [r for _, r in _state_rows(a)] == rids
        counts = _on(a, _all_outcomes(a))
        assert counts == {ALIAS: 1.0, other: 1.0}


async def _all_outcomes(gw: Any) -> dict[str, float]:
    return {name: s["outcomes"] for name, s in gw.app.learning.stats().items()}


def test_an_outcome_learned_while_stop_ends_the_periodic_sync_is_published(cfg: dict[str, Any]) -> None:
    """An outcome that reaches the learner while `stop` waits for the periodic sync task to end
    (e.g. queued feedback retried at shutdown) is still published before the state closes: the
    other workers get it."""
    with run_gateway(cfg, routers={"default": StubRouter()}) as a:
        ((rid, _, _),) = _ask(a)
        _rows(a, [rid])
        learning = a.app.learning

        async def periodic_then_late_outcome() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                assert await record_outcome(a.app, rid, 1.0, "feedback")  # arrives during stop
                raise

        async def scenario() -> None:
            learning._task.cancel()
            learning._task = asyncio.ensure_future(periodic_then_late_outcome())
            await asyncio.sleep(0)
            assert learning._pending == {}  # nothing pending when stop starts
            await learning.stop()

        _on(a, scenario())
        assert _state_rows(a) == [(1.0, rid)]
        assert learning._pending == {}
