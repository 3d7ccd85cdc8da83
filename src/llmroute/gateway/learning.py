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

The parts: this module keeps `Learning`'s construction, lifecycle (`start`: the state opened and
each alias's learner loaded; `stop`; the periodic sync loop), `health` and `stats`; the decision
side, run per request (`_AliasLearner`, `decide`, `decide_batch`), is in
`llmroute.gateway.learning_decide`; the outcome side, run per outcome and per sync (`learn`,
`outcome`, `sync`, publication, batches, snapshots), in `llmroute.gateway.learning_outcomes`; the
trace columns an outcome reads in `llmroute.gateway.learning_traces`. `DecideMixin` and
`OutcomeMixin` are base classes of `Learning`, so their methods are its own (no extra call on the
request or outcome path); the names moved are re-exported here. The outcomes, deltas and the
state's SQLite backend are in `llmroute.gateway.learning_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from llmroute.gateway.learning_decide import _VECTOR_MIN as _VECTOR_MIN
from llmroute.gateway.learning_decide import DecideMixin, _AliasLearner
from llmroute.gateway.learning_decide import _explore_ok as _explore_ok
from llmroute.gateway.learning_outcomes import _PUBLISH_AT as _PUBLISH_AT
from llmroute.gateway.learning_outcomes import _QUICK_MAX as _QUICK_MAX
from llmroute.gateway.learning_outcomes import OutcomeMixin
from llmroute.gateway.learning_state import _BASES as _BASES
from llmroute.gateway.learning_state import (
    Delta,
    LearnerState,
    Outcome,
    SQLiteLearnerState,
    learner_state_path,
    open_learner_state,
)
from llmroute.gateway.learning_traces import _FIELDS as _FIELDS
from llmroute.gateway.learning_traces import _fields as _fields
from llmroute.gateway.learning_traces import _trace_fields as _trace_fields
from llmroute.gateway.learning_traces import _trace_rows as _trace_rows
from llmroute.online.learner import OnlineLearner

if TYPE_CHECKING:
    from llmroute.gateway.config import GatewayConfig

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


class Learning(DecideMixin, OutcomeMixin):
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
        syncing and close the state. A sync in progress (the periodic one, perhaps publishing on
        a thread) is waited for, not cancelled half-way."""
        for task in (self._flushing, self._publishing):
            if task is not None and not task.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 10)
        await self._publish_at_stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
            # outcomes learned while the periodic task ended (e.g. queued feedback retried at
            # shutdown) are published too
            await self._publish_at_stop()
        if self.state is not None:
            state, self.state = self.state, None
            await asyncio.to_thread(state.close)

    async def _publish_at_stop(self) -> None:
        """Publish this worker's pending outcomes (waiting for a sync in progress) before stop."""
        if self._pending or self.syncing():
            try:
                await asyncio.wait_for(self.sync(), 30)
            except Exception as e:  # their sharing is lost; the outcomes are in the trace store
                log.warning("%d learned outcomes not published at stop: %s", len(self._pending), e)

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
