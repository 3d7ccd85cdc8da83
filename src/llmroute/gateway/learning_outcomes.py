"""The outcome side of the gateway's online learning (`llmroute.gateway.learning`, see its
docstring for the design): an outcome from `record_outcome` learned local-first (`learn`,
`_learn_now`) or queued for Redis's batches (`_enqueue`, `_flush`); the sync with the shared
state (`sync`: this worker's pending outcomes published with the pull, `_publish`; graded
outcomes recorded, `_record`; the pulled deltas learned and the periodic snapshots, `_absorb`);
`outcome`, `submit`, `drain`, `idle` and `snapshot_now`.

The seam: this runs per outcome and per sync, not per request (the decision side is
`llmroute.gateway.learning_decide`; the lifecycle, `start` / `stop` and the periodic sync loop,
stays in `llmroute.gateway.learning`). `OutcomeMixin` is a base class of `Learning` (not used
alone): its methods are the gateway's `Learning` methods, so `record_outcome` calls them as
before, with no extra indirection. It logs as llmroute.gateway.learning.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmroute.gateway.learning_state import Delta, LearnerState, Outcome, SQLiteLearnerState
from llmroute.gateway.learning_traces import _FIELDS, _fields, _trace_fields, _trace_rows, decode_context
from llmroute.gateway.outcomes import EXPLICIT  # at module level: per outcome, an import costs ~3 us

if TYPE_CHECKING:
    from llmroute.gateway.config import GatewayConfig
    from llmroute.gateway.learning_decide import _AliasLearner

__all__ = ["OutcomeMixin"]

log = logging.getLogger("llmroute.gateway.learning")

#: the largest batch of outcomes recorded on the event loop (`SQLiteLearnerState.try_apply_and_pull`)
_QUICK_MAX = 64
#: local-first: this many pending outcomes are published at once (on a thread: more than
#: `_QUICK_MAX`), without waiting for the sync. Back to back in process (benchmarks/online_gateway.py's
#: pattern alone, blocks of 150, 20 rounds, load ~6.8), learning's CPU per outcome: 47-49 us at 64
#: (on the loop), 39-42 at 128, 37-41 at 256: the fixed cost per publication (transaction, pull,
#: one rank-k update per model) dominates
_PUBLISH_AT = 256


def _replaces(p: Outcome, o: Outcome) -> bool:
    """Whether outcome `o`, of the same request as `p` and after it, counts instead of `p` (the
    state's rule, `SQLiteLearnerState._apply`): an explicit one that is not a repeat of `p`."""
    return o.explicit and not (p.model == o.model and p.residual == o.residual and p.source == o.source)


class OutcomeMixin:
    """`Learning`'s outcome side (see the module docstring); the attributes below are the
    `Learning`'s (`Learning.__init__`), and so are `_fetch` and `_install` (its lifecycle), which
    `_absorb` calls to reload an alias after a rollback."""

    config: GatewayConfig
    aliases: dict[str, _AliasLearner]
    state: LearnerState | None
    store: Any
    metrics: Any
    outcomes: dict[tuple[str, str, str], int]
    last_sync: float | None
    sync_error: str | None
    _sync_lock: asyncio.Lock | None
    _queue: list[tuple[tuple[str, float, str] | Outcome, asyncio.Future[tuple[str, str] | None] | None]]
    _flushing: asyncio.Task[None] | None
    _pending: dict[tuple[str, str], tuple[Outcome, bool]]
    _publishing: asyncio.Task[None] | None
    _local: bool

    async def outcome(self, request_id: str, score: float, source: str) -> str | None:
        """Learn one outcome of request `request_id` (see the module docstring): "applied",
        "replaced", "ignored", or None when the request is not a learning decision."""
        if self.state is None or self.store is None:
            return None
        fut = self._enqueue((request_id, float(score), source))
        assert fut is not None
        done = await fut
        return None if done is None else done[1]

    def learns(self) -> bool:
        """Whether outcomes are learned now (started, with a trace store)."""
        return self.state is not None and self.store is not None

    def attach_and_read(
        self, backend: Any, request_id: str, outcome: dict[str, Any], owner: str | None
    ) -> tuple[bool, dict[str, Any] | None]:
        """On the trace store's writer thread: store an outcome in its request's trace
        (`attach`) and read what the learner needs of that trace in the same hop (SQLite: in
        the same query, `attach_read`); (stored, the row's fields or None)."""
        attach_read = getattr(backend, "attach_read", None)
        if attach_read is not None:
            row = attach_read(request_id, outcome, owner, _FIELDS)
            return (False, None) if row is None else (True, _fields(row))
        if not backend.attach(request_id, outcome, owner):
            return False, None
        return True, _trace_fields(backend, request_id)

    def learn(self, request_id: str, row: dict[str, Any] | None, score: float, source: str) -> None:
        """Learn the outcome of a request whose trace `row` was read already (`attach_and_read`):
        local-first (SQLite state) into this worker's learner at once, published with the next
        sync; else (Redis) queued for the next batch. Nothing when the request is not a
        learning decision."""
        o = self._outcome(row, request_id, float(score), source)
        if o is None or not self.learns():
            return
        if self._local:
            self._learn_now(o)
        else:
            self._enqueue(o, wait=False)

    def _learn_now(self, o: Outcome) -> None:
        """Local-first: learn this worker's own outcome into its learner at once (one rank-1
        update) and keep it for the next publication (`_publish`). A pending outcome of the same
        request is resolved here as the state would: a repeat or a later implicit one is
        ignored, a different explicit one replaces it (undone locally, never published)."""
        key = (o.alias, o.request_id)
        al = self.aliases[o.alias]
        prev = self._pending.get(key)
        replaced = False
        if prev is not None:
            p, p_replaced = prev
            if not _replaces(p, o):
                self._count(o.alias, o.source, "ignored")
                return
            al.learn(p, -1.0)
            del self._pending[key]
            self._count(p.alias, p.source, "replaced" if p_replaced else "applied")
            replaced = True
        al.learn(o)
        self._pending[key] = (o, replaced)
        if len(self._pending) >= _PUBLISH_AT and (self._publishing is None or self._publishing.done()):
            self._publishing = asyncio.create_task(self._publish_soon())

    def submit(self, request_id: str, score: float, source: str) -> None:
        """`outcome` without waiting for it: queued for the next batch (learned within about
        `batch_window_s`; `/v1/feedback` answers once the outcome is in the trace)."""
        if self.state is not None and self.store is not None:
            self._enqueue((request_id, float(score), source), wait=False)

    async def sync(
        self, graded: Sequence[tuple[str, float, str] | Outcome] = ()
    ) -> list[tuple[str, str] | None]:
        """Publish this worker's pending outcomes (local-first, a SQLite state: learned already,
        `_publish`), learn `graded` outcomes ((request id, score, source) each: the trace row
        read, the `Outcome` recorded, see `LearnerState.apply`; or an `Outcome` built already)
        and apply every outcome recorded since the last sync, by any worker; one hop to the trace
        store's writer thread for all of it, none for built outcomes alone on a SQLite state
        nobody else is writing (`SQLiteLearnerState.try_apply_and_pull`, on the loop). Then
        reload after a rollback and take a periodic snapshot every `snapshot_every` outcomes.
        The periodic sync (nothing graded) reads on the loop too when nobody is writing, one
        query when no worker wrote since (`try_apply_and_pull`). Returns per graded outcome
        (alias, result), None when it is not a learning decision."""
        st = self.state
        if st is None or self._sync_lock is None:
            return [None] * len(graded)
        async with self._sync_lock:
            results: list[tuple[str, str] | None] = []
            if self._local and (self._pending or not graded):
                await self._publish(st)  # with the pull
            if graded or not self._local:
                results = await self._record(st, graded)
            # a backend that queued outcomes while its server was down says so in `sync_error`
            self.sync_error = getattr(st, "sync_error", None)
            if self.sync_error is None:
                self.last_sync = time.time()
            return results

    async def _record(
        self, st: LearnerState, graded: Sequence[tuple[str, float, str] | Outcome]
    ) -> list[tuple[str, str] | None]:
        """`sync`'s part for `graded` outcomes learned when recorded (not local-first: Redis,
        or `outcome`): record them and pull, learn what the pull returns."""
        after = {a: al.seq for a, al in self.aliases.items()}
        built = all(isinstance(g, Outcome) for g in graded)
        quick = getattr(st, "try_apply_and_pull", None)
        done = None
        if built and quick is not None and len(graded) <= _QUICK_MAX:
            # a small batch (or none: the periodic pull, a read): a few SQLite statements, no hop
            done = quick(graded, after)
        if done is not None:
            results = [(o.alias, r) for o, r in zip(graded, done[0], strict=True)]  # type: ignore[union-attr]
            pulled: dict[str, tuple[int, list[Delta] | None]] = dict(done[1])
        elif self.store is not None and graded and not built:  # the trace rows: writer thread
            results, pulled = await self.store.arun(lambda backend: self._work(backend, graded, after))
        else:
            results, pulled = await asyncio.to_thread(self._work, None, graded, after)
        await self._absorb(st, pulled)
        return results

    async def _publish(self, st: LearnerState) -> None:
        """Local-first: write this worker's pending outcomes (learned already) in one
        transaction with the pull (on the loop for up to `_QUICK_MAX` when nobody else writes,
        else on a thread). The transaction resolves each against the request's outcome that
        counts (any worker's): "ignored" (a repeat, an implicit one after another outcome) is
        undone here; "replaced" wrote a -1 row of the old term, learned with the pull."""
        batch = list(self._pending.values())
        self._pending = {}
        outs = [o for o, _ in batch]
        after = {a: al.seq for a, al in self.aliases.items()}
        assert isinstance(st, SQLiteLearnerState)  # `_local`
        try:
            done = st.try_apply_and_pull(outs, after, learned=True) if len(outs) <= _QUICK_MAX else None
            if done is None:
                done = await asyncio.to_thread(st.apply_and_pull, outs, after, learned=True)
        except BaseException:
            self._unpublished(batch)
            raise
        for (o, replaced), r in zip(batch, done[0], strict=True):
            if r == "ignored":  # another outcome of its request counts (perhaps another worker's)
                self.aliases[o.alias].learn(o, -1.0)
            elif r == "applied" and replaced:  # it replaced a pending outcome of its request
                r = "replaced"
            self._count(o.alias, o.source, r)
        await self._absorb(st, dict(done[1]))

    def _unpublished(self, batch: list[tuple[Outcome, bool]]) -> None:
        """A failed publication: its outcomes wait for the next one (still learned). An outcome
        of the same request learned meanwhile (pending now, learned after it) is settled against
        it as `_learn_now` does: ignored (undone) unless it replaces it (then the failed
        batch's one is undone), so a later implicit outcome never displaces an explicit one."""
        newer, self._pending = self._pending, {}
        for o, replaced in batch:
            self._pending[(o.alias, o.request_id)] = (o, replaced)
        for key, (n, n_replaced) in newer.items():
            prev = self._pending.get(key)
            if prev is None:
                self._pending[key] = (n, n_replaced)
            elif _replaces(prev[0], n):
                p, p_replaced = prev
                self.aliases[p.alias].learn(p, -1.0)
                self._count(p.alias, p.source, "replaced" if p_replaced else "applied")
                self._pending[key] = (n, True)
            else:
                self.aliases[n.alias].learn(n, -1.0)
                self._count(n.alias, n.source, "ignored")

    async def _absorb(self, st: LearnerState, pulled: dict[str, tuple[int, list[Delta] | None]]) -> None:
        """Learn the pulled deltas per alias (reload from the newest snapshot after a rollback
        or when behind the kept terms); a periodic snapshot every `snapshot_every` outcomes,
        taken only while none of the alias's outcomes waits to be published (a snapshot holds
        the terms up to its seq, no more). Every alias's deltas are learned before any step
        that may fail (a reload, a snapshot): else an alias after a failing one would pull its
        terms again at the next sync, its own published ones unmarked (learned twice)."""
        reload: list[_AliasLearner] = []
        applied: list[_AliasLearner] = []
        for name, (base, deltas) in pulled.items():
            al = self.aliases[name]
            if base > al.snapshot_id or deltas is None:  # None: behind the trimmed terms
                reload.append(al)
            else:
                al.apply(deltas)
                applied.append(al)
        for al in reload:
            self._install(al, await asyncio.to_thread(self._fetch, al))
        for al in applied:
            name = al.alias
            if al.seq - al.snap_seq >= al.cfg.snapshot_every and not self._pending_of(name):
                data, seq, n = al.learner.to_bytes(), al.seq, float(al.learner.n_.sum())
                al.snap_seq = seq
                await asyncio.to_thread(st.snapshot, al.alias, seq, data, "periodic", n)

    def _pending_of(self, alias: str) -> bool:
        """Whether an outcome of `alias` is learned but not yet published."""
        return any(a == alias for a, _ in self._pending)

    def _count(self, alias: str, source: str, result: str) -> None:
        """Count an outcome's result (`outcomes`, the metrics' counter)."""
        key = (alias, source, result)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if self.metrics is not None:
            self.metrics.observe_learning_outcome(*key)

    def _work(
        self, backend: Any, graded: Sequence[tuple[str, float, str] | Outcome], after: dict[str, int]
    ) -> tuple[list[tuple[str, str] | None], dict[str, tuple[int, list[Delta] | None]]]:
        """On the store's writer thread (or any thread for built outcomes alone): read the
        graded requests' trace rows, record their outcomes and pull the deltas after `after`."""
        st = self.state
        assert st is not None
        results: list[tuple[str, str] | None] = [None] * len(graded)
        outs: list[tuple[int, Outcome]] = []
        ids = [g[0] for g in graded if not isinstance(g, Outcome)]
        rows = _trace_rows(backend, ids) if backend is not None and ids else {}
        for k, g in enumerate(graded):
            if isinstance(g, Outcome):
                outs.append((k, g))
                continue
            rid, score, source = g
            o = self._outcome(rows.get(rid), rid, score, source)
            if o is not None:
                outs.append((k, o))
        res, pulled = st.apply_and_pull([o for _, o in outs], after)
        for (k, o), r in zip(outs, res, strict=True):
            results[k] = (o.alias, r)
        return results, pulled

    def _outcome(self, row: dict[str, Any] | None, rid: str, score: float, source: str) -> Outcome | None:
        """The learner's outcome for a request's trace row (None: not a learning decision)."""
        if row is None:
            return None
        al = self.aliases.get(row.get("alias"))  # type: ignore[arg-type]
        feat = row.get("learner")
        served = row.get("model")
        if al is None or not isinstance(feat, dict) or served not in al.index:
            return None
        q0s = feat.get("q0")
        if not isinstance(q0s, dict) or served not in q0s:
            return None
        x = decode_context(feat.get("x"))
        if x is None or x.shape != (al.cfg.dim + 2,):  # the learner's dim (`_AliasLearner.compatible`)
            return None
        q0, c0 = float(q0s[served]), float(feat["c0"][served])
        x[-2] = q0 - 0.5  # the served model's own context column (OnlineLearner.contexts)
        cost = row.get("cost_usd")
        ok = row.get("status") == 200 and isinstance(cost, int | float) and math.isfinite(c0)
        return Outcome(
            alias=al.alias,
            request_id=rid,
            model=served,
            x=x,
            residual=float(score) - q0,
            cost_residual=float(cost) - c0 if ok else None,
            source=source,
            explicit=source == EXPLICIT,
        )

    #: how long the first outcome of a batch waits for others (group commit of outcomes)
    batch_window_s = 0.02

    def _enqueue(
        self, graded: tuple[str, float, str] | Outcome, wait: bool = True
    ) -> asyncio.Future[tuple[str, str] | None] | None:
        """Queue a graded request for the next batch: the outcomes arriving within
        `batch_window_s` share one hop to the writer thread, one trace query, one SQLite
        transaction and one replay. `wait`: return a future of its (alias, result)."""
        fut: asyncio.Future[tuple[str, str] | None] | None = None
        if wait:
            fut = asyncio.get_running_loop().create_future()
        self._queue.append((graded, fut))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        while self._queue:
            await asyncio.sleep(self.batch_window_s)  # let the outcomes of this window join
            batch, self._queue = self._queue, []
            try:
                results = await self.sync([g for g, _ in batch])
            except Exception as e:
                log.warning("%d outcomes not learned: %s", len(batch), e)
                for _, f in batch:
                    if f is not None and not f.done():
                        f.set_exception(e)
                continue
            for (g, f), r in zip(batch, results, strict=True):
                if r is not None:
                    self._count(r[0], g.source if isinstance(g, Outcome) else g[2], r[1])
                if f is not None and not f.done():
                    f.set_result(r)

    async def drain(self) -> None:
        """Wait until every queued outcome is learned (or failed) and every pending one
        (local-first) is published, also one a sync in progress is publishing (`syncing`); the
        learners' updates made (`_AliasLearner.catch_up`)."""
        while True:
            busy = [t for t in (self._flushing, self._publishing) if t is not None and not t.done()]
            if busy:
                await asyncio.gather(*(asyncio.shield(t) for t in busy))
            elif self._pending or self.syncing():
                await self.sync()  # after the sync in progress (the lock)
            else:
                break
        for al in self.aliases.values():
            al.catch_up()

    def syncing(self) -> bool:
        """Whether a sync is in progress (it may be publishing outcomes no longer pending)."""
        return self._sync_lock is not None and self._sync_lock.locked()

    def idle(self) -> bool:
        """Whether no outcome is queued, waiting to be published or being synced."""
        busy = any(t is not None and not t.done() for t in (self._flushing, self._publishing))
        return not (self._queue or self._pending or busy or self.syncing())

    async def _publish_soon(self) -> None:
        """The publication `_PUBLISH_AT` pending outcomes start (errors: logged, retried by the
        periodic sync)."""
        try:
            await self.sync()
        except Exception as e:
            log.warning("learned outcomes not published yet (retried at the next sync): %s", e)

    async def snapshot_now(self, alias: str) -> int | None:
        """Snapshot an alias's learner now (on demand); the new snapshot's id."""
        al = self.aliases[alias]
        await self.sync()
        for _ in range(10):  # outcomes learned while a publication waited on a thread: publish them
            if not self._pending_of(alias):
                break
            await self.sync()
        else:
            raise RuntimeError(f"outcomes of {alias!r} keep arriving: no snapshot now, retry")
        st = self.state
        assert st is not None
        data, seq = al.learner.to_bytes(), al.seq
        al.snap_seq = seq
        return await asyncio.to_thread(st.snapshot, alias, seq, data, "manual", float(al.learner.n_.sum()))
