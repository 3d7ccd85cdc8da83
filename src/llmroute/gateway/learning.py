"""Online learning inside the gateway: each alias with `learning: {enabled: true}` routes through
an `OnlineLearner` (`llmroute.online.learner`) on top of its router, and learns from outcomes.

Decisions (`Learning.decide`, called by the request pipeline after the routing engine):

- the learner sees the alias's admissible candidates (the decision's ranked list), the router's
  expected quality and cost per candidate and the prompt's embedding (the router's encoder), and
  picks at the request's trade-off (reward = quality - lambda * cost, the lambda the routing
  policy used: request, rule, alias or router file);
- it explores (Thompson sampling / LinUCB, at most `max_explore` of the requests) only on a plain
  trade-off decision: never when a rule or guard routed the request or changed its policy
  (`set_by`), with max_cost / min_quality or a strong share (a per-request policy that pins the
  choice), when a sticky session held its model, or on `/v1/route` (a decision without a call);
  those requests keep the router's pick with propensity 1 and still teach the learner;
- the decision carries `learning`: the pick's propensity (the exact probability it was chosen
  with), whether it explored, and the features an update needs (the projected prompt context
  and the router's estimates per candidate); the trace stores them in its `propensity`,
  `explored` and `learner` columns, and the reason says `learner=<method> p=<propensity>`.

Outcomes (`Learning.learn`, called by `llmroute.gateway.outcomes.record_outcome`): the
request's trace row gives the model that answered, its cost and the stored features, so an
outcome can arrive late and at any worker (as long as the trace is kept; no re-embedding and no
in-memory map). The learner learns quality - the router's estimate (a residual) at that context.
Outcomes are learned local-first (SQLite state): `record_outcome` stores the outcome in the
trace and reads the learner's fields of that trace in the same hop to the store's writer thread
(`attach_and_read`), then `learn` builds the `Outcome` and gives it to this worker's learner at
once, on the loop (no task, future or thread hop): every later read of the learner (a decision,
`stats`, a snapshot) has it; the updates given since the last read are made then, one rank-k
update per model (`_AliasLearner.learn` / `catch_up`). The outcome is kept pending and published
lazily for the other workers: `_PUBLISH_AT` (256) pending outcomes, the periodic sync
(`sync_interval_s`) or `stop` / `drain` write them in one SQLite transaction with the pull of the
other workers' new deltas (up to 64 on the event loop when nobody else writes the state, else on a thread;
`_publish`); their rows come back marked learned (`Delta.learned`: passed, not learned again).
Idempotency by request id stays exact: a second outcome of a request still pending here is
resolved at once (a repeat or later implicit one ignored, a different explicit one replaces it);
otherwise the publication's transaction resolves each outcome against `learner_active` (any
worker's): "ignored" is undone in this worker's learner, "replaced" writes the -1 row of the old
term, which this worker learns with the pull. Other workers see an outcome up to
`sync_interval_s` late, as before. A crash between learning and publishing loses the sharing of
the pending outcomes (at most one sync interval's, or 256): the outcomes themselves are in the
trace store; they are not published again at the next start. On Redis (`state: redis://...`)
outcomes are learned in batches as before (group commit): queued (`_enqueue`), the outcomes of
each `Learning.batch_window_s` (20 ms) window share one Lua script and one update per model
(a write on a thread). Costs: see BENCHMARKS.md "Online learning in the gateway".

State shared by `llmroute serve --workers N` (one host): the posterior is a sum of rank-1 terms,
one per outcome, so the shared state is the list of those terms. `SQLiteLearnerState` keeps them
in a SQLite table (`learner_deltas`: alias, request id, model, context, residual, cost residual,
weight) in WAL mode; a worker appends its outcomes (learned already, see above) and every
`sync_interval_s` replays the rows it has not seen (its own rows are not read back). Every
worker thus holds the same posterior (the sum does not depend on the order), up to
`sync_interval_s` behind. `learner_active` keeps the one outcome per request
that counts (an explicit one replaces an implicit one: a -1 row undoes it), which makes feedback
idempotent across workers. Snapshots (`learner_snapshots`: the learner's safetensors bytes and
the delta sequence number they include) are taken every `snapshot_every` outcomes and on demand;
a worker starts from the newest snapshot and replays the deltas after it. `rollback` adds a
snapshot of kind "rollback" (a copy of an older one, at the current sequence number): every
worker reloads it at its next sync, and the outcomes it drops are never replayed.
Several hosts: with `state: redis://...` (and no `learning.state` file) the same protocol runs on
Redis (`llmroute.gateway.learning_redis.RedisLearnerState`): every replica on that Redis learns
from every outcome; while Redis is down a replica routes on its local learner and queues outcomes.

The outcomes, deltas and the state's SQLite backend are in `llmroute.gateway.learning_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from llmroute.gateway.learning_state import _BASES as _BASES
from llmroute.gateway.learning_state import (
    Delta,
    LearnerState,
    Outcome,
    SQLiteLearnerState,
    learner_state_path,
    open_learner_state,
)
from llmroute.gateway.outcomes import EXPLICIT  # at module level: per outcome, an import costs ~3 us
from llmroute.online.learner import OnlineLearner

if TYPE_CHECKING:
    from llmroute.gateway.config import GatewayConfig, LearningConfig
    from llmroute.gateway.routing import RequestContext, RouteDecision

__all__ = [
    "Delta",
    "LearnerState",
    "Learning",
    "Outcome",
    "SQLiteLearnerState",
    "learner_state_path",
    "open_learner_state",
]

log = logging.getLogger("llmroute.gateway.learning")

#: the largest batch of outcomes recorded on the event loop (`SQLiteLearnerState.try_apply_and_pull`)
_QUICK_MAX = 64
#: local-first: this many pending outcomes are published at once (on a thread: more than
#: `_QUICK_MAX`), without waiting for the sync. Back to back in process (benchmarks/online_gateway.py's
#: pattern alone, blocks of 150, 20 rounds, load ~6.8), learning's CPU per outcome: 47-49 us at 64
#: (on the loop), 39-42 at 128, 37-41 at 256: the fixed cost per publication (transaction, pull,
#: one rank-k update per model) dominates
_PUBLISH_AT = 256
#: from this many requests of one alias in a micro-batch on, their picks are vectorised
#: (`OnlineLearner.pick_many`, ~40 numpy calls of fixed cost); below, the contexts and the
#: posterior's part by three products (`OnlineLearner.prepare_embeddings`) and the picks request
#: by request in plain floats (`OnlineLearner.pick_rows`): the same choices and probabilities
#: either way. In process the per-request path was the cheaper up to ~24-28 requests (16 before
#: pick_rows; thread CPU per request at 24: 11-12 vs 13-14 us, load ~8.5)
_VECTOR_MIN = 28


class _AliasLearner:
    """One alias's learner in one worker process."""

    def __init__(self, alias: str, cfg: LearningConfig, models: list[str], router: Any) -> None:
        self.alias = alias
        self.cfg = cfg
        self.models = list(models)
        self.index = {m: i for i, m in enumerate(self.models)}
        self.router = router
        # the router's prompt embedding (cached per text by the router: the estimate just made it)
        self._embed = getattr(router, "_embed", None)
        self._batch_embeddings = getattr(router, "batch_embeddings", None)
        if hasattr(router, "keep_batch_embeddings"):
            router.keep_batch_embeddings = True  # so the context below is a cache hit
        self.embed_dim = int(self._embed(["dimension probe"]).shape[1]) if self._embed is not None else 1
        self.learner = self.fresh()
        self.snapshot_id = 0  # the snapshot this learner started from
        self.seq = 0  # the last delta applied
        self.snap_seq = 0  # the seq of the newest snapshot known to this worker
        self.decisions = 0
        self.explored = 0

    def fresh(self) -> OnlineLearner:
        """A learner warm-started from the router (zero residual prior)."""
        c = self.cfg
        return OnlineLearner(
            self.models,
            self.embed_dim,
            method=c.learner,
            max_explore=c.max_explore,
            dim=c.dim,
            prior_var=c.prior_var,
            confidence=c.confidence,
            explore_loss=c.explore_loss,
            max_pending=1,  # updates use the features stored in the trace, not the learner's own map
            seed=c.seed,
        )

    def configure(self, learner: OnlineLearner) -> OnlineLearner:
        """Apply the config's choice settings to a restored learner (its seed per process)."""
        c = self.cfg
        learner.method, learner.max_explore, learner.confidence = c.learner, c.max_explore, c.confidence
        learner.explore_loss = c.explore_loss
        learner.max_pending = 1
        learner.rng = np.random.default_rng([c.seed, os.getpid()])
        return learner

    def compatible(self, learner: OnlineLearner) -> bool:
        return (
            learner.models == self.models
            and learner.embed_dim == self.embed_dim
            and learner.dim == self.cfg.dim
        )

    def embedding(self, text: str) -> np.ndarray:
        if self._embed is None:
            return np.zeros(1)
        return self._embed([text])[0]  # float32: the context's product with the projection is float64

    def embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(B, embed_dim) prompt embeddings from the router's cache (the estimate just made them)."""
        if self._embed is None:
            return np.zeros((len(texts), 1))
        if self._batch_embeddings is not None:  # the router's last micro-batch, kept whole
            return self._batch_embeddings(texts)
        return np.concatenate([self._embed([t]) for t in texts])

    def fills(self, d: RouteDecision) -> tuple[list[float], list[float]]:
        """The decision's expected quality and cost per model as the learner fills them
        (`OnlineLearner._fill_list`: NaN or missing = no estimate); the usual case (every model
        estimated, finite) without the fill's checks."""
        eq, ec = d.expected_quality, d.expected_cost
        try:
            q = [float(eq[m]) for m in self.models]
            c = [float(ec[m]) for m in self.models]
        except KeyError:
            q = [float(eq.get(m, math.nan)) for m in self.models]
            c = [float(ec.get(m, math.nan)) for m in self.models]
        if math.isfinite(sum(q)) and math.isfinite(sum(c)):
            return q, c
        return self.learner._fill_list(q, c)

    def mask(self, ranked: Sequence[str]) -> list[bool] | None:
        """The models of `ranked` (the decision's admissible candidates) as the learner's
        allowed mask; None when every model is admissible."""
        if len(ranked) >= len(self.models) and all(m in ranked for m in self.models):
            return None
        return [m in ranked for m in self.models]

    @property
    def learner(self) -> OnlineLearner:
        """The alias's learner, with every outcome given to `learn` in it."""
        if self._unlearned:
            self.catch_up()
        return self._learner

    @learner.setter
    def learner(self, learner: OnlineLearner) -> None:
        self._learner = learner
        self._unlearned: list[tuple[Outcome, float]] = []

    def learn(self, o: Outcome, weight: float = 1.0) -> None:
        """Learn this worker's own outcome now (weight -1: undo it), before it has a seq: the
        update a pulled `Delta` of it would make. Every read of `learner` (a decision, stats, a
        snapshot) sees it; the updates given since the last read are made then, one rank-k
        update per model (one cold rank-1 update per outcome cost ~30 us in the gateway, ~7 us
        in a loop)."""
        if weight < 0:  # the undo of an outcome not made yet: drop it
            for i in range(len(self._unlearned) - 1, -1, -1):
                if self._unlearned[i][0] is o and self._unlearned[i][1] > 0:
                    del self._unlearned[i]
                    return
        self._unlearned.append((o, weight))

    def catch_up(self) -> None:
        """Make the updates `learn` was given (in order per model)."""
        todo, self._unlearned = self._unlearned, []
        per_model: dict[int, list[tuple[Outcome, float]]] = {}
        for o, w in todo:
            per_model.setdefault(self.index[o.model], []).append((o, w))
        for j, rows in per_model.items():
            self._observe(
                j,
                [o.x for o, _ in rows],
                [o.residual for o, _ in rows],
                [o.cost_residual for o, _ in rows],
                [w for _, w in rows],
            )

    def _observe(
        self,
        j: int,
        xs: Sequence[np.ndarray],
        residuals: Sequence[float],
        costs: Sequence[float | None],
        weights: Sequence[float],
    ) -> None:
        """Model `j`'s terms: `observe` each below 3 (what `observe_many` runs, without
        stacking them first), else one rank-k update (`observe_many`)."""
        lr = self._learner
        if len(xs) < 3:
            for x, r, c, w in zip(xs, residuals, costs, weights, strict=True):
                lr.observe(x, j, float(r), c, float(w))
            return
        lr.observe_many(np.array(xs), j, np.array(residuals), list(costs), np.array(weights))

    def apply(self, deltas: Sequence[Delta]) -> None:
        """Learn the deltas after `seq` (one rank-k update per model, `observe_many`)."""
        lr = self.learner
        per_model: dict[int, list[Delta]] = {}
        for d in deltas:
            if d.seq <= self.seq:
                continue
            j = self.index.get(d.model)
            if j is not None and not d.learned and d.x.shape[0] == lr.dim + 2:
                per_model.setdefault(j, []).append(d)
            self.seq = d.seq  # a `learned` term (this worker's own, learned when it came): passed
        for j, ds in per_model.items():
            self._observe(
                j,
                [d.x for d in ds],
                [d.residual for d in ds],
                [d.cost_residual for d in ds],
                [d.weight for d in ds],
            )


def _trace_rows(backend: Any, request_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`_trace_fields` of several requests (SQLite: one query per 500 ids), by request id."""
    if backend.kind != "sqlite":
        out = {rid: _trace_fields(backend, rid) for rid in dict.fromkeys(request_ids)}
        return {k: v for k, v in out.items() if v is not None}
    import orjson

    ids = list(dict.fromkeys(request_ids))
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ", ".join("?" * len(chunk))
        for rid, alias, model, status, cost, learner in backend.db.execute(
            f"SELECT request_id, alias, model, status, cost_usd, learner FROM traces WHERE request_id IN ({marks})",
            chunk,
        ):
            found[rid] = {
                "alias": alias,
                "model": model,
                "status": status,
                "cost_usd": cost,
                "learner": orjson.loads(learner) if learner else None,
            }
    return found


#: the trace columns an outcome update reads (`_trace_fields`)
_FIELDS = ("alias", "model", "status", "cost_usd", "learner")


def _fields(row: Sequence[Any]) -> dict[str, Any]:
    """A trace row's `_FIELDS` values as the dict `Learning._outcome` reads (the learner's JSON parsed)."""
    import orjson

    out = dict(zip(_FIELDS, row, strict=True))
    out["learner"] = orjson.loads(out["learner"]) if out["learner"] else None
    return out


def _trace_fields(backend: Any, request_id: str) -> dict[str, Any] | None:
    """What an outcome update reads from a trace row (on the store's writer thread): fewer
    columns and no JSON but the learner's than `TraceStore.get`."""
    if backend.kind == "sqlite":
        row = backend.db.execute(
            "SELECT alias, model, status, cost_usd, learner FROM traces WHERE request_id = ?", (request_id,)
        ).fetchone()
    else:
        row = backend._run(
            backend.conn.fetchrow(
                "SELECT alias, model, status, cost_usd, learner::text FROM llmroute_traces "
                "WHERE request_id = $1",
                request_id,
            )
        )
    return None if row is None else _fields(tuple(row))


def _explore_ok(ctx: RequestContext, d: RouteDecision) -> bool:
    """Whether a decision may explore: a plain trade-off choice (see the module docstring)."""
    pol = d.policy
    if ctx.endpoint == "route" or pol.get("rule") != "tradeoff" or pol.get("set_by"):
        return False
    if pol.get("max_cost") is not None or pol.get("min_quality") is not None or "strong_share" in pol:
        return False
    sticky = d.extra.get("sticky") if d.extra else None
    if sticky is not None and sticky.get("state") == "held":
        return False
    lam = pol.get("tradeoff")
    return isinstance(lam, int | float) and math.isfinite(lam)


class Learning:
    """The gateway's online learners, one per alias with learning on (see the module docstring).

    `Learning.create(config, engine)` is None when no alias learns. Lifecycle: `await start(store)`
    after the trace store opened, `await stop()` at shutdown. `decide(ctx, decision)` on the
    request path (synchronous, ~tens of us); `learn(request_id, row, score, source)` from
    `record_outcome` (synchronous: learned at once, published lazily), `await outcome(...)` for
    an outcome's result; `drain()` / `idle()` for the outcomes in flight; `stats()` for metrics
    and health."""

    def __init__(self, config: GatewayConfig, engine: Any) -> None:
        self.config = config
        self.aliases: dict[str, _AliasLearner] = {}
        for name, a in config.aliases.items():
            if a.learning.enabled and name in engine.plans:
                plan = engine.plans[name]
                self.aliases[name] = _AliasLearner(name, a.learning, plan.models, plan.router)
        self.state: LearnerState | None = None
        self.store: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sync_lock: asyncio.Lock | None = None
        # outcomes waiting for the next batch (group commit): (outcome, future of its result)
        self._queue: list[
            tuple[tuple[str, float, str] | Outcome, asyncio.Future[tuple[str, str] | None] | None]
        ] = []
        self._flushing: asyncio.Task[None] | None = None
        # local-first (SQLite state): this worker's own outcomes, learned already, not yet
        # published: (alias, request id) -> (outcome, whether it replaced a pending one)
        self._pending: dict[tuple[str, str], tuple[Outcome, bool]] = {}
        self._publishing: asyncio.Task[None] | None = None
        self._local = False  # whether outcomes are learned locally first (`start`: a SQLite state)
        self.outcomes: dict[tuple[str, str, str], int] = {}  # (alias, source, result) -> count
        self.last_sync: float | None = None  # unix time of the last sync with the shared state
        self.sync_error: str | None = None  # the last sync's error (None: it worked)
        self.metrics: Any = getattr(engine, "metrics", None)  # set by the gateway (GatewayMetrics)
        listeners = getattr(engine, "batch_listeners", None)
        if listeners is not None and self.aliases:
            listeners.append(self.decide_batch)  # the micro-batches' decisions (`decide_batch`)

    @classmethod
    def create(cls, config: GatewayConfig, engine: Any) -> Learning | None:
        """The learners of `config`'s aliases with `learning.enabled`, or None when none learns."""
        if not any(a.learning.enabled for a in config.aliases.values()):
            return None
        return cls(config, engine)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, store: Any) -> None:
        """Open the shared state, load each alias's newest snapshot (or write the first one) and
        replay the outcomes recorded after it; start the periodic sync."""
        self.store = store
        first = next(iter(self.config.aliases[a].learning for a in self.aliases))
        path = learner_state_path(self.config, first)
        self.state = await asyncio.to_thread(open_learner_state, path)
        self._local = isinstance(self.state, SQLiteLearnerState)
        if self.metrics is not None and hasattr(self.state, "register_metrics"):
            self.state.register_metrics(self.metrics.registry)
        self._sync_lock = asyncio.Lock()
        for al in self.aliases.values():
            try:
                self._install(al, await asyncio.to_thread(self._fetch, al))
            except Exception as e:  # shared state down (Redis): start fresh, reload when it answers
                self.sync_error = type(e).__name__
                log.warning(
                    "learner state of %s unavailable (%s): starting fresh", al.alias, type(e).__name__
                )
        interval = min(self.config.aliases[a].learning.sync_interval_s for a in self.aliases)
        self._task = asyncio.create_task(self._sync_loop(interval))

    def _fetch(
        self, al: _AliasLearner, snapshot: tuple[int, int, bytes, str] | None = None
    ) -> tuple[OnlineLearner, int, int, int, list[Delta]]:
        """On a thread: what (re)starts `al` (`_install`): the learner of a snapshot (default:
        the newest), its base id, seq and the newest snapshot's seq, and the deltas after it."""
        st = self.state
        assert st is not None
        snap = snapshot if snapshot is not None else st.load(al.alias)
        learner = None
        if snap is not None:
            try:
                learner = OnlineLearner.from_bytes(snap[2])
            except ValueError as e:
                log.warning("learner snapshot %d of %s unreadable (%s): starting fresh", snap[0], al.alias, e)
            if learner is not None and not al.compatible(learner):
                log.warning(
                    "learner state of alias %s is for other candidates or dimensions: starting fresh",
                    al.alias,
                )
                learner = None
        if learner is None:
            learner = al.fresh()
            kind = "initial" if snap is None else "reset"
            head = st.head(al.alias)
            sid = st.snapshot(al.alias, head, learner.to_bytes(), kind)
            snap = st.load(al.alias, sid) if sid is not None else st.load(al.alias)
            assert snap is not None
            if sid is None:  # another worker wrote it first: start from theirs
                learner = OnlineLearner.from_bytes(snap[2])
        newest = st.snapshots(al.alias)
        snap_seq = newest[0]["seq"] if newest else snap[1]
        return learner, st.latest_base(al.alias), snap[1], snap_seq, st.deltas(al.alias, snap[1])

    def _install(self, al: _AliasLearner, fetched: tuple[OnlineLearner, int, int, int, list[Delta]]) -> None:
        """On the loop: (re)start `al` from `_fetch`'s snapshot and deltas, then learn again
        this worker's outcomes not yet published (they are in no snapshot nor delta row)."""
        learner, al.snapshot_id, al.seq, al.snap_seq, deltas = fetched
        al.learner = al.configure(learner)
        al.apply(deltas)
        for o, _ in self._pending.values():
            if o.alias == al.alias:
                al.learn(o)

    async def stop(self) -> None:
        """Finish the outcomes in flight, publish this worker's pending ones (local-first), stop
        syncing and close the state."""
        for task in (self._flushing, self._publishing):
            if task is not None and not task.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 10)
        if self._pending:
            try:
                await asyncio.wait_for(self.sync(), 30)
            except Exception as e:  # their sharing is lost; the outcomes are in the trace store
                log.warning("%d learned outcomes not published at stop: %s", len(self._pending), e)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.state is not None:
            state, self.state = self.state, None
            await asyncio.to_thread(state.close)

    async def _sync_loop(self, interval: float) -> None:
        checkpointed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
                checkpoint = getattr(self.state, "checkpoint", None)
                if checkpoint is not None and time.monotonic() - checkpointed > 10.0:
                    checkpointed = time.monotonic()  # the loop's own commits skip it (see try_apply_and_pull)
                    await asyncio.to_thread(checkpoint)
            except Exception as e:  # keep routing on the local state
                # /healthz needs no key: it shows the error's type only (the text, which may hold
                # paths or addresses, goes to the log)
                self.sync_error = type(e).__name__
                log.warning("learner state sync failed (%s); routing on the local state", e)

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
        """A failed publication: its outcomes wait for the next one (still learned). One whose
        request got a newer pending outcome meanwhile is undone (the newer one counts)."""
        pending = self._pending
        self._pending = {}
        for o, replaced in batch:
            if (o.alias, o.request_id) in pending:
                self.aliases[o.alias].learn(o, -1.0)
            else:
                self._pending[(o.alias, o.request_id)] = (o, replaced)
        self._pending.update(pending)

    async def _absorb(self, st: LearnerState, pulled: dict[str, tuple[int, list[Delta] | None]]) -> None:
        """Learn the pulled deltas per alias (reload from the newest snapshot after a rollback
        or when behind the kept terms); a periodic snapshot every `snapshot_every` outcomes,
        taken only while none of the alias's outcomes waits to be published (a snapshot holds
        the terms up to its seq, no more)."""
        for name, (base, deltas) in pulled.items():
            al = self.aliases[name]
            if base > al.snapshot_id or deltas is None:  # None: behind the trimmed terms
                self._install(al, await asyncio.to_thread(self._fetch, al))
                continue
            al.apply(deltas)
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
        q0s, xs = feat.get("q0"), feat.get("x")
        if not isinstance(q0s, dict) or served not in q0s or not isinstance(xs, list):
            return None
        if len(xs) != al.cfg.dim + 2:  # the learner's dim (`_AliasLearner.compatible`)
            return None
        x = np.array(xs, dtype=np.float64)
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
        (local-first) is published; the learners' updates made (`_AliasLearner.catch_up`)."""
        while True:
            busy = [t for t in (self._flushing, self._publishing) if t is not None and not t.done()]
            if busy:
                await asyncio.gather(*(asyncio.shield(t) for t in busy))
            elif self._pending:
                await self.sync()
            else:
                break
        for al in self.aliases.values():
            al.catch_up()

    def idle(self) -> bool:
        """Whether no outcome is queued, waiting to be published or being synced."""
        busy = any(t is not None and not t.done() for t in (self._flushing, self._publishing))
        syncing = self._sync_lock is not None and self._sync_lock.locked()
        return not (self._queue or self._pending or busy or syncing)

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

    # ---- deciding ----------------------------------------------------------------------------
    def decide(self, ctx: RequestContext, d: RouteDecision) -> None:
        """Let the alias's learner make (or only record) the decision `d` (edited in place); a
        decision already made with its micro-batch (`decide_batch`) is left as it is."""
        if d.learning is None:
            self.decide_batch([(ctx, d)])

    def decide_batch(self, pairs: Sequence[tuple[RequestContext, RouteDecision]]) -> None:
        """`decide` for the requests of one micro-batch (the routing engine's batch listener),
        per alias in one vectorised step: the contexts by one product with the projection, the
        posterior's part by one product with the factors kept per update
        (`OnlineLearner.prepare`), the pick probabilities and the draws over the whole batch
        (`OnlineLearner.pick_many`: one uniform per request whose choice is random)."""
        by_alias: dict[str, list[tuple[RequestContext, RouteDecision]]] = {}
        for ctx, d in pairs:
            al = self.aliases.get(d.alias or "")
            if al is not None and d.learning is None and d.model in al.index and d.policy:
                by_alias.setdefault(al.alias, []).append((ctx, d))
        for name, items in by_alias.items():
            self._decide_alias(self.aliases[name], items)

    def _decide_alias(self, al: _AliasLearner, items: list[tuple[RequestContext, RouteDecision]]) -> None:
        lr, models = al.learner, al.models
        E = al.embeddings([ctx.text for ctx, _ in items])
        fills = [al.fills(d) for _, d in items]
        lams = [float(d.policy.get("tradeoff") or 0.0) for _, d in items]
        rows = [i for i, (ctx, d) in enumerate(items) if _explore_ok(ctx, d)]
        picked: dict[int, tuple[int, int, float]] = {}
        if len(rows) < _VECTOR_MIN:  # a few requests: three products, then plain floats
            X32, TX, XAX, AXK = lr.prepare_embeddings(E)
        else:
            X = lr.context_batch(E)
            X32 = X.astype(np.float32)  # what the trace stores: the JSON writer takes numpy arrays
        if rows:
            masks = [al.mask(items[i][1].ranked) for i in rows]
            if len(rows) >= _VECTOR_MIN:  # numpy's fixed cost per call pays off
                tx, xax, axk = lr.prepare(X if len(rows) == len(items) else X[rows])
                allowed = (
                    None
                    if all(mk is None for mk in masks)
                    else np.array([[True] * len(models) if mk is None else mk for mk in masks])
                )
                chs, gs, probs = lr.pick_many(
                    np.array([fills[i][0] for i in rows]),
                    np.array([fills[i][1] for i in rows]),
                    np.array([lams[i] for i in rows]),
                    allowed,
                    tx,
                    xax,
                    axk,
                )
                ch, g = chs.tolist(), gs.tolist()
                props = probs[np.arange(len(rows)), chs].tolist()
            else:  # a few requests: the same pick in plain floats, request by request
                ch, g, props = lr.pick_rows(
                    [fills[i][0] for i in rows],
                    [fills[i][1] for i in rows],
                    [lams[i] for i in rows],
                    masks,
                    [TX[i] for i in rows],
                    [XAX[i] for i in rows],
                    [AXK[i] for i in rows],
                )
            picked = dict(zip(rows, zip(ch, g, props, strict=True), strict=True))
        method = lr.method
        n_explored = 0
        for i, (_, d) in enumerate(items):
            p = picked.get(i)
            if p is None:
                model, prop, explored, greedy = d.model, 1.0, False, d.model
            else:
                model, prop, explored, greedy = models[p[0]], p[2], p[0] != p[1], models[p[1]]
                if model != d.model:
                    d.ranked = [model] + [m for m in d.ranked if m != model]
                    d.model = model
            if explored:
                n_explored += 1
                d.reason += f" learner={method} p={prop:.3g} explored(greedy={greedy})"
            else:
                d.reason += f" learner={method} p={prop:.3g}"
            qf, cf = fills[i]
            d.learning = {
                "propensity": prop,
                "explored": explored,
                "features": {
                    "method": method,
                    "lambda": lams[i],
                    "chosen": model,
                    "greedy": greedy,
                    "x": X32[i],  # 7 digits in the trace's JSON
                    "q0": dict(zip(models, qf, strict=True)),
                    "c0": dict(zip(models, cf, strict=True)),
                },
            }
        al.decisions += len(items)
        al.explored += n_explored
        if self.metrics is not None:  # one event per value of `explored`, not one per request
            if n_explored:
                self.metrics.observe_learning(al.alias, True, n_explored)
            if n_explored < len(items):
                self.metrics.observe_learning(al.alias, False, len(items) - n_explored)

    # ---- outcomes ----------------------------------------------------------------------------
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
            if not o.explicit or (p.model == o.model and p.residual == o.residual and p.source == o.source):
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

    def health(self) -> dict[str, Any]:
        """For /healthz, per alias of the config: `enabled`, and for a learning alias its method,
        `last_sync` (unix time of the last sync with the shared state; None before the first),
        `sync_age_s`, `sync_error` (the type of the last failed sync's error, None when it worked),
        `outcomes` (applied to the posterior, all workers), `seq` (last outcome term applied)
        and `snapshot` (the id of the snapshot the learner started from)."""
        now = time.time()
        out: dict[str, Any] = {}
        for name in self.config.aliases:
            al = self.aliases.get(name)
            if al is None:
                out[name] = {"enabled": False}
                continue
            last = self.last_sync
            out[name] = {
                "enabled": True,
                "method": al.learner.method,
                "last_sync": last,
                "sync_age_s": None if last is None else round(now - last, 3),
                "sync_error": self.sync_error,
                "outcomes": float(al.learner.n_.sum()),
                "seq": al.seq,
                "snapshot": al.snapshot_id,
            }
            state_health = getattr(self.state, "health", None)
            if state_health is not None:  # Redis: ok, outcomes queued for its return, dropped
                out[name]["state"] = state_health()
        return out

    def stats(self) -> dict[str, Any]:
        """Per alias: decisions, explored, explored share, outcomes learned, snapshot id."""
        out: dict[str, Any] = {}
        for name, al in self.aliases.items():
            out[name] = {
                "method": al.learner.method,
                "decisions": al.decisions,
                "explored": al.explored,
                "explored_share": al.explored / al.decisions if al.decisions else 0.0,
                "outcomes": float(al.learner.n_.sum()),
                "seq": al.seq,
                "snapshot": al.snapshot_id,
            }
        return out
