"""The online learners' shared state in Redis: `LearnerState` for gateway replicas on several hosts.

With `state: redis://...` in the config (and no `learning.state` file), every gateway process
that names the same Redis learns from the outcomes any of them records
(`llmroute.gateway.learning` picks this backend through `open_learner_state`). It has the
semantics of `SQLiteLearnerState`:

- `apply` is one Lua script per batch of outcomes, atomic on the Redis server: per alias a
  sequence number (`learn:seq:<alias>`, INCR) numbers the rank-1 terms, kept in a sorted set
  (`learn:d:<alias>`, score = seq, member = `<seq><+|-><payload>`); the outcome that counts for a
  request (`learn:a:<alias tag>:<request id>`: its seq, whether it is explicit, and its payload,
  so it can be undone even after its term was trimmed) makes a repeat "ignored" and lets an
  explicit outcome replace an implicit one ("replaced": a -1 term undoes it). An outcome learned
  before the alias's last base snapshot (initial, reset, rollback) is no longer in the posterior.
  Those per-request keys expire after `active_ttl_s` (default 7 days: the idempotence window);
- deltas are pulled incrementally (`ZRANGEBYSCORE (after head-before-the-batch`) with the
  alias's head and trim floor, in the same script as the batch's outcomes (one round trip per
  sync; the batch's own terms are not sent back: the caller builds them); a worker behind
  the floor, or ahead of the head (a Redis that lost its data), is told to reload (`deltas` is
  None) from the newest snapshot;
- snapshots (`learn:snap:<alias>` id -> safetensors bytes, `learn:meta:<alias>` id -> JSON;
  ids from one counter as in SQLite) and rollback (a copy of an older snapshot at the current
  head, the alias's new base: every worker reloads it at its next sync);
- bounded memory: a new snapshot trims the terms already in the snapshot before it (a worker
  lagging more than one snapshot reloads), and at most `max_snapshots` snapshots are kept per
  alias (the oldest go first; the current base stays).

Outage: while Redis does not answer (`RedisState`'s degraded spell: retried at most every
`retry_s`), `apply_and_pull` queues the outcomes in the process (at most `max_queued`; more are
dropped and counted) and answers "queued", and the gateway routes on its last local learner
state; `sync_error` says "StateUnavailable", `health()` (in /healthz `learning.<alias>.state`)
and the gauges `llmroute_learning_state_degraded` / `llmroute_learning_queued_outcomes` show it.
The first call that reaches Redis again records the queued outcomes first, then pulls what the
other replicas learned meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from llmroute.gateway.learning import _BASES, Delta, Outcome
from llmroute.gateway.state import RedisState, StateUnavailable

__all__ = ["RedisLearnerState", "is_redis_url"]

#: results of `apply` while Redis does not answer
QUEUED, DROPPED = "queued", "dropped"

# One round trip per batch: record outcomes, then pull aliases' new terms.
# n outcomes, m aliases. KEYS[4i+1..4i+4] (outcome i, 0-based): seq, deltas, base, active;
# KEYS[4n+4j+1..4n+4j+4] (alias j): base, seq, floor, deltas. ARGV[1]: active ttl ms, ARGV[2]: n;
# ARGV[5i+3..5i+7]: explicit ('1'/'0'), same-key, payload, alias, aliases-set key;
# ARGV[5n+3+j]: alias j's last applied seq.
# Returns {per outcome 'applied' | 'replaced' | 'ignored', per alias {base, head, floor, members},
# per outcome {undo seq or 0, its term's seq or 0, the undone payload or ''}}: the members pulled
# are the other writers' (seq up to the alias's head before this batch); the batch's own terms
# are known to the caller (their seqs and payloads), so they are not sent back.
_APPLY = """
local ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local before = {}
for j = 0, (#KEYS - 4*n) / 4 - 1 do
  before[j] = redis.call('GET', KEYS[4*n + 4*j + 2]) or '0'
end
local out = {}
local own = {}
for i = 0, n - 1 do
  local kseq, kd, kbase, kact = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local explicit, same, payload = ARGV[5*i+3], ARGV[5*i+4], ARGV[5*i+5]
  redis.call('SADD', ARGV[5*i+7], ARGV[5*i+6])
  local b = redis.call('GET', kbase)
  local base = 0
  if b then base = tonumber(string.match(b, ':(%d+)$')) end
  local act = redis.call('GET', kact)
  local result = 'applied'
  local aseq, asame, apay
  if act then
    local p1 = string.find(act, '\\n', 1, true)
    local p2 = string.find(act, '\\n', p1 + 1, true)
    local p3 = string.find(act, '\\n', p2 + 1, true)
    aseq = tonumber(string.sub(act, 1, p1 - 1))
    asame = string.sub(act, p2 + 1, p3 - 1)
    apay = string.sub(act, p3 + 1)
    if aseq <= base then act = nil end
  end
  local u, s, undone = 0, 0, ''
  if act and (explicit ~= '1' or asame == same) then
    result = 'ignored'
  else
    if act then
      u = redis.call('INCR', kseq)
      redis.call('ZADD', kd, u, u .. '-' .. apay)
      undone = apay
      result = 'replaced'
    end
    s = redis.call('INCR', kseq)
    redis.call('ZADD', kd, s, s .. '+' .. payload)
    redis.call('SET', kact, s .. '\\n' .. explicit .. '\\n' .. same .. '\\n' .. payload, 'PX', ttl)
  end
  out[#out + 1] = result
  own[#own + 1] = {u, s, undone}
end
local pulled = {}
for j = 0, (#KEYS - 4*n) / 4 - 1 do
  local k = 4*n + 4*j
  pulled[#pulled + 1] = {redis.call('GET', KEYS[k+1]) or '', redis.call('GET', KEYS[k+2]) or '0',
                         redis.call('GET', KEYS[k+3]) or '0',
                         redis.call('ZRANGEBYSCORE', KEYS[k+4], '(' .. ARGV[5*n+3+j], before[j])}
end
return {out, pulled, own}
"""

# KEYS: snapshot data, meta, unique (kind:seq -> id), base, last snapshot seq, deltas, floor,
# snapshot id counter, aliases set.
# ARGV: kind, seq, ts, outcomes, data, max snapshots, alias, is-base ('1'/'0'), copy-of id ('' none).
# Returns the new id, or false when one of this kind at this seq exists (not for a rollback);
# a rollback of an unknown id returns -1.
_SNAPSHOT = """
local kind, seq, data = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local outcomes = ARGV[4]
redis.call('SADD', KEYS[9], ARGV[7])
if ARGV[9] ~= '' then
  data = redis.call('HGET', KEYS[1], ARGV[9])
  if not data then return -1 end
  local m = cjson.decode(redis.call('HGET', KEYS[2], ARGV[9]))
  outcomes = tostring(m['outcomes'])
  seq = tonumber(redis.call('GET', KEYS[10]) or '0')
elseif redis.call('HEXISTS', KEYS[3], kind .. ':' .. seq) == 1 then
  return false
end
local id = redis.call('INCR', KEYS[8])
redis.call('HSET', KEYS[1], id, data)
redis.call('HSET', KEYS[2], id, '{"kind":"' .. kind .. '","seq":' .. seq .. ',"ts":' .. ARGV[3]
           .. ',"outcomes":' .. outcomes .. '}')
redis.call('HSET', KEYS[3], kind .. ':' .. seq, id)
local cur = redis.call('GET', KEYS[4])
if ARGV[8] == '1' then
  cur = id .. ':' .. seq
  redis.call('SET', KEYS[4], cur)
end
-- trim the terms the snapshot before this one already holds (a worker behind them reloads)
local prev = tonumber(redis.call('GET', KEYS[5]) or '0')
local upto = math.min(prev, seq)
if upto > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', upto)
  if upto > tonumber(redis.call('GET', KEYS[7]) or '0') then redis.call('SET', KEYS[7], upto) end
end
if seq > prev then redis.call('SET', KEYS[5], seq) end
-- keep at most ARGV[6] snapshots (the oldest go first; the current base stays)
local ids = redis.call('HKEYS', KEYS[1])
local excess = #ids - tonumber(ARGV[6])
if excess > 0 then
  local nums = {}
  for _, v in ipairs(ids) do nums[#nums + 1] = tonumber(v) end
  table.sort(nums)
  local keep = -1
  if cur then keep = tonumber(string.match(cur, '^(%d+):')) end
  for _, v in ipairs(nums) do
    if excess <= 0 then break end
    if v ~= keep and v ~= id then
      local m = cjson.decode(redis.call('HGET', KEYS[2], v))
      redis.call('HDEL', KEYS[1], v)
      redis.call('HDEL', KEYS[2], v)
      redis.call('HDEL', KEYS[3], m['kind'] .. ':' .. m['seq'])
      excess = excess - 1
    end
  end
end
return id
"""


def is_redis_url(path: str) -> bool:
    """Whether a learner state location is a Redis URL (else a SQLite file)."""
    return path.startswith(("redis://", "rediss://", "unix://"))


def _tag(alias: str) -> str:
    """A fixed-length tag of an alias for the per-request keys (no separator ambiguity)."""
    return hashlib.sha1(alias.encode()).hexdigest()[:16]


def _payload(o: Outcome) -> bytes:
    head = orjson.dumps([o.model, float(o.residual), o.cost_residual])
    return head + b"\n" + np.ascontiguousarray(o.x, dtype=np.float64).tobytes()


def _delta(member: bytes) -> Delta:
    """A `Delta` from a sorted-set member `<seq><+|-><json head>\\n<x bytes>`."""
    i = 0
    while member[i] in b"0123456789":
        i += 1
    seq, weight = int(member[:i]), 1.0 if member[i : i + 1] == b"+" else -1.0
    head, _, x = member[i + 1 :].partition(b"\n")
    model, residual, cost = orjson.loads(head)
    return Delta(seq, model, np.frombuffer(x, dtype=np.float64), float(residual), cost, weight)


class RedisLearnerState:
    """`LearnerState` in Redis, shared by gateway replicas on several hosts (see the module
    docstring). `url`: redis:// (or rediss://, unix://); `prefix`: key prefix (the gateway's
    state prefix); `state`: an existing `RedisState` (tests) instead of a new connection.
    Thread-safe; nothing connects until the first operation."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "llmroute:",
        timeout_s: float = 1.0,
        retry_s: float = 1.0,
        active_ttl_s: float = 7 * 86400.0,
        max_snapshots: int = 50,
        max_queued: int = 10_000,
        state: RedisState | None = None,
    ) -> None:
        self.st = (
            state
            if state is not None
            else RedisState(url, prefix=prefix, timeout_s=timeout_s, retry_s=retry_s)
        )
        self.active_ttl_ms = max(1, int(active_ttl_s * 1000))
        self.max_snapshots = max(2, int(max_snapshots))
        self.max_queued = int(max_queued)
        self._queue: list[Outcome] = []  # outcomes recorded while Redis did not answer
        self._lock = threading.Lock()
        self.dropped = 0  # outcomes refused because the queue was full
        self.recovered = 0  # queued outcomes recorded once Redis answered again
        self.sync_error: str | None = None  # "StateUnavailable" while degraded (Learning reads it)
        self._registry: Any = None  # where `register_metrics` exported this state

    # ---- keys ------------------------------------------------------------------------------------
    def _k(self, kind: str, alias: str = "") -> str:
        return self.st.key("learn", kind, alias) if alias else self.st.key("learn", kind)

    def _active(self, alias: str, request_id: str) -> str:
        return self.st.key("learn", "a", _tag(alias), request_id)

    # ---- outcomes --------------------------------------------------------------------------------
    def _apply_pull(
        self, outcomes: Sequence[Outcome], after: dict[str, int]
    ) -> tuple[list[str], dict[str, tuple[int, list[Delta] | None]]]:
        """Record `outcomes` and pull the aliases of `after`: one script, one round trip. The
        batch's own terms are not sent back: built here from the outcomes (and the undone
        payload of a replaced one), after the other writers' terms, as a read would return them."""
        keys: list[str] = []
        args: list[Any] = [self.active_ttl_ms, len(outcomes)]
        aliases = self._k("aliases")
        for o in outcomes:
            keys += [
                self._k("seq", o.alias),
                self._k("d", o.alias),
                self._k("base", o.alias),
                self._active(o.alias, o.request_id),
            ]
            same = orjson.dumps([o.model, float(o.residual), o.source])
            args += ["1" if o.explicit else "0", same, _payload(o), o.alias, aliases]
        names = list(after)
        for a in names:
            keys += [self._k("base", a), self._k("seq", a), self._k("floor", a), self._k("d", a)]
        args += [int(after[a]) for a in names]
        res, rows, written = self.st.eval(_APPLY, keys, args)
        own: dict[str, list[Delta]] = {}
        for o, (u, s, undone) in zip(outcomes, written, strict=True):
            if o.alias not in after or not s:
                continue
            terms = own.setdefault(o.alias, [])
            if u:
                terms.append(_delta(str(u).encode() + b"-" + undone))
            x = np.ascontiguousarray(o.x, dtype=np.float64)
            cost = None if o.cost_residual is None else float(o.cost_residual)
            terms.append(Delta(int(s), o.model, x, float(o.residual), cost, 1.0))
        pulled: dict[str, tuple[int, list[Delta] | None]] = {}
        for a, (base, head, floor, members) in zip(names, rows, strict=True):
            bid = int(base.split(b":")[0]) if base else 0
            if int(after[a]) < int(floor) or int(after[a]) > int(head):
                pulled[a] = (bid, None)  # trimmed past this worker's position, or Redis lost them: reload
            else:
                mine = [d for d in own.get(a, ()) if d.seq > int(after[a])]
                pulled[a] = (bid, [_delta(m) for m in members] + mine)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in res], pulled

    def apply(self, outcomes: Sequence[Outcome]) -> list[str]:
        """Record outcomes (see `SQLiteLearnerState.apply`); while Redis does not answer they are
        queued ("queued", or "dropped" when `max_queued` are waiting) for its return."""
        return self.apply_and_pull(outcomes, {})[0]

    def _flush_queue(self) -> None:
        """Record the outcomes queued during an outage (raises StateUnavailable when it fails)."""
        with self._lock:
            queued, self._queue = self._queue, []
        for i in range(0, len(queued), 256):
            try:
                self._apply_pull(queued[i : i + 256], {})
            except StateUnavailable:
                with self._lock:
                    self._queue[:0] = queued[i:]
                raise
            self.recovered += len(queued[i : i + 256])

    def apply_and_pull(
        self, outcomes: Sequence[Outcome], after: dict[str, int]
    ) -> tuple[list[str], dict[str, tuple[int, list[Delta] | None]]]:
        """`apply(outcomes)`, then per alias of `after` its newest base snapshot id and the terms
        after that seq (None: reload from the newest snapshot). While Redis does not answer: the
        outcomes are queued and nothing is pulled (routing goes on on the local state)."""
        try:
            if self._queue:
                self._flush_queue()
            results, pulled = self._apply_pull(outcomes, after) if outcomes or after else ([], {})
        except StateUnavailable:
            self.sync_error = StateUnavailable.__name__
            results = []
            with self._lock:
                for o in outcomes:
                    if len(self._queue) < self.max_queued:
                        self._queue.append(o)
                        results.append(QUEUED)
                    else:
                        self.dropped += 1
                        results.append(DROPPED)
            return results, {}
        self.sync_error = None
        return results, pulled

    def deltas(self, alias: str, after: int) -> list[Delta]:
        """The alias's terms with a sequence number above `after`, in order (those still kept:
        terms folded into the snapshot before the newest are trimmed)."""
        members = self.st.run(lambda c: c.zrangebyscore(self._k("d", alias), f"({int(after)}", "+inf"))
        return [_delta(m) for m in members]

    def head(self, alias: str) -> int:
        """The alias's newest delta sequence number (0: none)."""
        return int(self.st.run(lambda c: c.get(self._k("seq", alias))) or 0)

    # ---- snapshots -------------------------------------------------------------------------------
    def _snapshot(self, alias: str, kind: str, seq: int, data: bytes, outcomes: float, copy_of: str) -> Any:
        keys = [
            self._k("snap", alias),
            self._k("meta", alias),
            self._k("uniq", alias),
            self._k("base", alias),
            self._k("last", alias),
            self._k("d", alias),
            self._k("floor", alias),
            self._k("snapid"),
            self._k("aliases"),
            self._k("seq", alias),
        ]
        args = [kind, int(seq), repr(time.time()), repr(float(outcomes)), data, self.max_snapshots, alias]
        args += ["1" if kind in _BASES else "0", copy_of]
        return self.st.eval(_SNAPSHOT, keys, args)

    def snapshot(self, alias: str, seq: int, data: bytes, kind: str, outcomes: float = 0.0) -> int | None:
        """Store a learner snapshot that includes the terms up to `seq`; its id (None: one of this
        kind at this seq exists). Trims the terms the previous snapshot holds."""
        out = self._snapshot(alias, kind, seq, data, outcomes, "")
        return None if out is None else int(out)

    def rollback(self, alias: str, snapshot_id: int) -> int:
        """Make snapshot `snapshot_id` the alias's state again (see `SQLiteLearnerState.rollback`);
        KeyError for an unknown id."""
        out = self._snapshot(alias, "rollback", 0, b"", 0.0, str(int(snapshot_id)))
        if out is None or int(out) < 0:
            raise KeyError(f"no snapshot {snapshot_id} of alias {alias!r}")
        return int(out)

    def load(self, alias: str, snapshot_id: int | None = None) -> tuple[int, int, bytes, str] | None:
        """(id, seq, data, kind) of the newest snapshot (or `snapshot_id`), None when none."""
        if snapshot_id is None:
            ids = self.st.run(lambda c: c.hkeys(self._k("meta", alias)))
            if not ids:
                return None
            snapshot_id = max(int(i) for i in ids)
        sid = int(snapshot_id)

        def read(c: Any) -> list[Any]:
            p = c.pipeline(transaction=True)
            p.hget(self._k("meta", alias), sid)
            p.hget(self._k("snap", alias), sid)
            return list(p.execute())

        meta, data = self.st.run(read)
        if meta is None or data is None:
            return None
        m = orjson.loads(meta)
        return sid, int(m["seq"]), bytes(data), str(m["kind"])

    def snapshots(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Every snapshot's id, alias, kind, seq, ts and outcomes, newest first."""
        if alias is None:
            names = sorted(a.decode() for a in self.st.run(lambda c: c.smembers(self._k("aliases"))))
        else:
            names = [alias]
        rows = []
        for a in names:
            for sid, meta in self.st.run(lambda c, a=a: c.hgetall(self._k("meta", a))).items():
                m = orjson.loads(meta)
                rows.append(
                    {
                        "id": int(sid),
                        "alias": a,
                        "kind": m["kind"],
                        "seq": int(m["seq"]),
                        "ts": m["ts"],
                        "outcomes": m["outcomes"],
                    }
                )
        return sorted(rows, key=lambda r: -r["id"])

    def latest_base(self, alias: str) -> int:
        """The id of the newest snapshot a running learner must restart from (0: none)."""
        b = self.st.run(lambda c: c.get(self._k("base", alias)))
        return int(b.split(b":")[0]) if b else 0

    # ---- health ----------------------------------------------------------------------------------
    def ping(self) -> bool:
        """Whether Redis answers now."""
        return self.st.ping()

    def health(self) -> dict[str, Any]:
        """For /healthz: backend, ok (Redis answers), outcomes queued for its return, dropped
        (the queue was full) and recovered (queued ones recorded after an outage)."""
        h = self.st.health()
        return {
            "backend": "redis",
            "ok": bool(h["ok"]),
            "queued": len(self._queue),
            "dropped": self.dropped,
            "recovered": self.recovered,
        }

    def register_metrics(self, registry: Any) -> None:
        """Export llmroute_learning_state_degraded, llmroute_learning_queued_outcomes and
        llmroute_learning_dropped_outcomes_total to a prometheus_client `registry`: one collector
        per registry, pointed at the newest state (a config reload's new learners take it over
        while the old runtime drains)."""
        col = getattr(registry, _COLLECTOR_ATTR, None)
        if col is None:
            col = _Collector(self)
            registry.register(col)
            setattr(registry, _COLLECTOR_ATTR, col)
        col.state = self
        self._registry = registry

    def close(self) -> None:
        """Drop the connection (and the metrics collector unless a newer state took it over);
        queued outcomes are lost (the trace store still has their feedback)."""
        registry, self._registry = self._registry, None
        col = getattr(registry, _COLLECTOR_ATTR, None) if registry is not None else None
        if col is not None and col.state is self:
            with contextlib.suppress(KeyError):
                registry.unregister(col)
            delattr(registry, _COLLECTOR_ATTR)
        self.st.close()


#: the attribute of a prometheus_client registry that holds its learner-state collector
_COLLECTOR_ATTR = "_llmroute_learner_state_collector"


class _Collector:
    def __init__(self, state: RedisLearnerState) -> None:
        self.state = state

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        h = self.state.health()
        yield GaugeMetricFamily(
            "llmroute_learning_state_degraded",
            "1 while the learner's shared state (Redis) does not answer (routing on the local learner), else 0.",
            value=0.0 if h["ok"] else 1.0,
        )
        yield GaugeMetricFamily(
            "llmroute_learning_queued_outcomes",
            "Outcomes waiting in this process for the learner's shared state (Redis) to answer.",
            value=float(h["queued"]),
        )
        yield CounterMetricFamily(
            "llmroute_learning_dropped_outcomes",
            "Outcomes not learned: the queue for the learner's shared state (Redis) was full.",
            value=float(h["dropped"]),
        )
