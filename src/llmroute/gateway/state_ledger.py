"""Budgets, reservations and rate limits in Redis (`RedisLedger`, the `SharedLedger` interface)
and the Lua scripts that make each of their steps atomic on the Redis server: reserve, settle,
give back a dead replica's holds, the token bucket, seeding a key's books. The design (the bound
on overspending, the keys, degraded mode) is in `llmroute.gateway.state`'s docstring.

The seam: `llmroute.gateway.state` is one process's connection to Redis (`RedisState`: scripts
by sha, the auto-pipelined connection, degraded mode, heartbeat, circuit breakers); this module
is what the budgets and rate limits keep there. `RedisState.reclaim` and its queued settles run
two of these scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmroute.gateway.redis_pipe import ReplyError, StateUnavailable

if TYPE_CHECKING:
    from llmroute.gateway.state import RedisState

__all__ = ["Initial", "RedisLedger"]

log = logging.getLogger("llmroute.gateway.state")  # the shared state's one logger name

Initial = Callable[[Sequence[str]], Mapping[str, tuple[float, float, float, float]]]


# KEYS: budget hash, this replica's holds, its alive key, replicas set
# ARGV: day, month, budget_day ('' = none), budget_month, amount, key id, alive ttl ms, replica id
_RESERVE = """
local v = redis.call('HMGET', KEYS[1], 'd', 'ds', 'dr', 'm', 'ms', 'mr')
local day, month, amt = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local ds, dr, ms, mr = tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[5]) or 0, tonumber(v[6]) or 0
if tonumber(v[1]) ~= day then ds, dr = 0, 0 end
if tonumber(v[4]) ~= month then ms, mr = 0, 0 end
if ARGV[3] ~= '' and ds + dr >= tonumber(ARGV[3]) then
  return {'day', string.format('%.17g', ds), string.format('%.17g', dr)}
end
if ARGV[4] ~= '' and ms + mr >= tonumber(ARGV[4]) then
  return {'month', string.format('%.17g', ms), string.format('%.17g', mr)}
end
local f = string.format
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'ds', f('%.17g', ds), 'dr', f('%.17g', dr + amt),
           'm', ARGV[2], 'ms', f('%.17g', ms), 'mr', f('%.17g', mr + amt))
local k = ARGV[6]
local w = redis.call('HMGET', KEYS[2], k .. ':d', k .. ':dr', k .. ':m', k .. ':mr')
local wdr, wmr = tonumber(w[2]) or 0, tonumber(w[4]) or 0
if tonumber(w[1]) ~= day then wdr = 0 end
if tonumber(w[3]) ~= month then wmr = 0 end
redis.call('HSET', KEYS[2], k .. ':d', ARGV[1], k .. ':dr', f('%.17g', wdr + amt),
           k .. ':m', ARGV[2], k .. ':mr', f('%.17g', wmr + amt))
redis.call('SET', KEYS[3], '1', 'PX', ARGV[7])
redis.call('SADD', KEYS[4], ARGV[8])
return false
"""

# KEYS: budget hash, this replica's holds; ARGV: day, month, amount, actual, key id
_SETTLE = """
local f = string.format
local v = redis.call('HMGET', KEYS[1], 'd', 'ds', 'dr', 'm', 'ms', 'mr')
local amt, act = tonumber(ARGV[3]), tonumber(ARGV[4])
if v[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'dr', f('%.17g', math.max(0, (tonumber(v[3]) or 0) - amt)),
             'ds', f('%.17g', (tonumber(v[2]) or 0) + act))
end
if v[4] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'mr', f('%.17g', math.max(0, (tonumber(v[6]) or 0) - amt)),
             'ms', f('%.17g', (tonumber(v[5]) or 0) + act))
end
if amt > 0 then
  local k = ARGV[5]
  local w = redis.call('HMGET', KEYS[2], k .. ':d', k .. ':dr', k .. ':m', k .. ':mr')
  if w[1] == ARGV[1] then
    redis.call('HSET', KEYS[2], k .. ':dr', f('%.17g', math.max(0, (tonumber(w[2]) or 0) - amt)))
  end
  if w[3] == ARGV[2] then
    redis.call('HSET', KEYS[2], k .. ':mr', f('%.17g', math.max(0, (tonumber(w[4]) or 0) - amt)))
  end
end
return false
"""

# KEYS: replicas set; ARGV: key prefix, this replica's id. Gives back the holds of replicas whose
# alive key has expired; returns how many replicas were reclaimed.
_RECLAIM = """
local f = string.format
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'alive:' .. id) == 0 then
    local hk = ARGV[1] .. 'holds:' .. id
    local h = redis.call('HGETALL', hk)
    local rows = {}
    for i = 1, #h, 2 do
      local k, field = string.match(h[i], '^(.*):(%a+)$')
      rows[k] = rows[k] or {}
      rows[k][field] = h[i + 1]
    end
    for k, r in pairs(rows) do
      local bk = ARGV[1] .. 'b:' .. k
      local v = redis.call('HMGET', bk, 'd', 'dr', 'm', 'mr')
      if r.d and v[1] == r.d then
        redis.call('HSET', bk, 'dr', f('%.17g', math.max(0, (tonumber(v[2]) or 0) - tonumber(r.dr))))
      end
      if r.m and v[3] == r.m then
        redis.call('HSET', bk, 'mr', f('%.17g', math.max(0, (tonumber(v[4]) or 0) - tonumber(r.mr))))
      end
    end
    redis.call('DEL', hk)
    redis.call('SREM', KEYS[1], id)
    n = n + 1
  end
end
return n
"""

# KEYS: bucket hash; ARGV: rate per s, capacity, n (needed), want (a lease: n or more).
# Returns {tokens granted (0, or n..want), seconds to wait for n when 0 were granted}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local v = redis.call('HMGET', KEYS[1], 't', 's')
local rate, cap, n, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(v[1])
if tokens == nil then tokens = cap
else tokens = math.min(cap, tokens + math.max(0, now - tonumber(v[2])) * rate) end
local got, wait = 0, 0
if tokens >= n then got = math.max(n, math.min(want, math.floor(tokens))); tokens = tokens - got
else wait = (n - tokens) / rate end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 's', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 60000)
return {string.format('%.17g', got), string.format('%.17g', wait)}
"""

# KEYS: budget hash; ARGV: day, day spent, month, month spent. Seeds a hash that does not exist.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'ds', ARGV[2], 'dr', '0', 'm', ARGV[3], 'ms', ARGV[4], 'mr', '0')
return 1
"""


class RedisLedger:
    """Budgets and token buckets in Redis with the `SharedLedger` interface (see the module
    docstring): `reserve`, `settle`, `usage`, `take`, `add_keys`, `free_slots`, `in`, `close`.

    `reserve` raises `StateUnavailable` when Redis is down (`BudgetManager` applies
    `on_state_error`); `settle` then queues the cost for Redis's return; `take` admits.
    """

    def __init__(
        self, state: RedisState, key_ids: Sequence[str] = (), *, initial: Initial | None = None
    ) -> None:
        self.state = state
        self._keys: set[str] = set()
        self.lease_share = 0.05  # see `take`
        self.max_lease = 100.0  # a busy loop takes tens of tokens per Redis round trip
        self.lease_s = 1.0
        self._leases: dict[str, tuple[float, float]] = {}  # key id -> (tokens left, lapses at)
        self._last_reclaim = -float("inf")
        self._background: set[asyncio.Future[Any]] = set()  # give-backs and top-ups under way
        self._topping: set[str] = set()  # key ids whose lease is being topped up
        self._key_cache: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        state.start_heartbeat()
        with contextlib.suppress(StateUnavailable):
            state.reclaim()
        self.add_keys(key_ids, initial)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def add_keys(self, key_ids: Sequence[str], initial: Initial | None = None) -> list[str]:
        """Start serving these key ids; a key whose books are not in Redis yet is seeded from
        `initial` (the spend persisted in the trace store). Returns the ids new to this process."""
        todo = [k for k in dict.fromkeys(key_ids) if k not in self._keys]
        if todo and initial is not None:
            st = self.state
            try:
                missing = [
                    k
                    for k, n in zip(
                        todo, st.run(lambda c: [c.exists(st.key("b", k)) for k in todo]), strict=True
                    )
                    if not n
                ]
                seeds = initial(missing) if missing else {}
                for kid, (day, ds, month, ms) in seeds.items():
                    st.eval(
                        _SEED, [st.key("b", kid)], [int(day), repr(float(ds)), int(month), repr(float(ms))]
                    )
            except StateUnavailable:
                log.warning("shared state unavailable: new keys' books are not seeded from the store")
        self._keys.update(todo)
        return todo

    def free_slots(self) -> int:
        """Room for more keys: Redis has no fixed slots (a large number)."""
        return 1 << 30

    def reserve(
        self,
        key_id: str,
        day: int,
        month: int,
        budget_day: float | None,
        budget_month: float | None,
        amount: float,
    ) -> tuple[str, float, float] | None:
        """As `SharedLedger.reserve`, atomic across every replica on this Redis."""
        st = self.state
        keys, args = self._reserve_args(key_id, day, month, budget_day, budget_month, amount)
        out = st.eval(_RESERVE, keys, args)
        if out and self._reclaim_due():
            with contextlib.suppress(StateUnavailable):
                if st.reclaim():  # a dead replica's holds were given back: try once more
                    out = st.eval(_RESERVE, keys, args)
        return _refusal(out)

    async def reserve_async(
        self,
        key_id: str,
        day: int,
        month: int,
        budget_day: float | None,
        budget_month: float | None,
        amount: float,
    ) -> tuple[str, float, float] | None:
        """`reserve` without blocking the event loop (auto-pipelined with the other requests'
        commands). A caller cancelled while waiting gets its hold given back once Redis answers."""
        st = self.state
        keys, args = self._reserve_args(key_id, day, month, budget_day, budget_month, amount)

        def give_back(out: Any) -> None:  # the caller was cancelled: release a granted hold
            if out is None:
                self._spawn(self.settle_async(key_id, day, month, amount, 0.0))

        out = await st.eval_async(_RESERVE, keys, args, orphan=give_back)
        if out and self._reclaim_due():
            with contextlib.suppress(StateUnavailable):
                if await st.eval_async(_RECLAIM, [st.key("replicas")], [st.prefix, st.replica]):
                    out = await st.eval_async(_RESERVE, keys, args, orphan=give_back)
        return _refusal(out)

    def _spawn(self, coro: Any) -> None:
        """Run `coro` in the background on the running loop (kept referenced until done)."""
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    def _reserve_args(
        self,
        key_id: str,
        day: int,
        month: int,
        budget_day: float | None,
        budget_month: float | None,
        amount: float,
    ) -> tuple[tuple[str, ...], list[Any]]:
        st = self.state
        keys = self._key_tuples(key_id)[0]
        args = [
            day,
            month,
            "" if budget_day is None else repr(float(budget_day)),
            "" if budget_month is None else repr(float(budget_month)),
            repr(float(amount)),
            key_id,
            int(st.heartbeat_ttl_s * 1000),
            st.replica,
        ]
        return keys, args

    def _key_tuples(self, key_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The Redis keys of `key_id`'s reserve and settle scripts (kept per key id)."""
        kt = self._key_cache.get(key_id)
        if kt is None:
            st = self.state
            b, holds = st.key("b", key_id), st.key("holds", st.replica)
            kt = (b, holds, st.key("alive", st.replica), st.key("replicas")), (b, holds)
            if len(self._key_cache) >= 4096:
                self._key_cache.clear()
            self._key_cache[key_id] = kt
        return kt

    def _reclaim_due(self) -> bool:
        """Whether a refused reservation may look for dead replicas' holds now (at most once per
        `reclaim_interval_s`)."""
        now = time.monotonic()
        if now - self._last_reclaim < self.state.reclaim_interval_s:
            return False
        self._last_reclaim = now
        return True

    def settle(self, key_id: str, day: int, month: int, amount: float, actual: float) -> None:
        """As `SharedLedger.settle`; while Redis is down the cost is queued for its return."""
        st = self.state
        try:
            st._settle(key_id, day, month, amount, actual)
        except StateUnavailable:
            with st._lock:
                st._pending.append((key_id, day, month, amount, actual))

    async def settle_async(self, key_id: str, day: int, month: int, amount: float, actual: float) -> None:
        """`settle` without blocking the event loop; returns once Redis has applied it (the cost
        is then booked: a kill -9 of this process after that loses nothing), or once it is
        queued for Redis's return when Redis fails. A caller cancelled meanwhile does not stop
        it: the settle still lands (or is queued)."""
        st = self.state

        def orphan(out: Any) -> None:  # the caller was cancelled; the settle must still land
            if isinstance(out, ReplyError):  # it did not run (NOSCRIPT): again, in the background
                self._spawn(self.settle_async(key_id, day, month, amount, actual))
            elif isinstance(out, BaseException):  # unknown: as a failed settle, queued
                st._failed(out)
                with st._lock:
                    st._pending.append((key_id, day, month, amount, actual))

        try:
            await st.eval_async(
                _SETTLE,
                self._key_tuples(key_id)[1],
                [day, month, repr(float(amount)), repr(float(actual)), key_id],
                orphan=orphan,
            )
        except StateUnavailable:
            with st._lock:
                st._pending.append((key_id, day, month, amount, actual))

    def usage(self, key_id: str, day: int, month: int) -> tuple[float, float, float, float]:
        """(day spent, day reserved, month spent, month reserved); zeros while Redis is down."""
        st = self.state
        try:
            v = st.run(lambda c: c.hmget(st.key("b", key_id), "d", "ds", "dr", "m", "ms", "mr"))
        except StateUnavailable:
            return 0.0, 0.0, 0.0, 0.0
        d = v[0] is not None and int(float(v[0])) == day
        m = v[3] is not None and int(float(v[3])) == month
        return (
            float(v[1] or 0) if d else 0.0,
            float(v[2] or 0) if d else 0.0,
            float(v[4] or 0) if m else 0.0,
            float(v[5] or 0) if m else 0.0,
        )

    def take(self, key_id: str, rate: float, capacity: float, now: float = 0.0, n: float = 1.0) -> float:
        """As `SharedLedger.take`, on the Redis server's clock (`now` is ignored); admits (0.0)
        while Redis is down.

        A key with a large bucket is served in leases: one Redis call takes up to
        `lease_share` of the bucket (at most `max_lease` tokens, at least `n`), spent here
        until used up or `lease_s` old (the rest then lapses). Called on an event loop, a lease
        below a full one is topped up in the background (`_top_up`, auto-pipelined, one at a
        time), so the loop rarely waits for Redis. Every token is taken from the shared bucket, so the shared
        limit is never exceeded; a replica leaves at most one lease and one top-up unused per
        `lease_s`. Buckets under 1 / `lease_share` tokens take one token per call (exact)."""
        st = self.state
        now_m = time.monotonic()
        lease = self._leases.get(key_id)
        want = max(float(n), min(self.max_lease, math.floor(capacity * self.lease_share)))
        if lease is not None and lease[0] >= n and now_m < lease[1]:
            left = lease[0] - n
            self._leases[key_id] = (left, lease[1])
            if left < want and want > n and key_id not in self._topping and st._own_client:
                loop = asyncio._get_running_loop()
                if loop is not None:
                    self._topping.add(key_id)
                    self._spawn(self._top_up(key_id, rate, capacity, want))
            return 0.0
        try:
            got, wait = st.eval(
                _TAKE,
                [st.key("r", key_id)],
                [repr(float(rate)), repr(float(capacity)), repr(float(n)), repr(want)],
            )
        except StateUnavailable:
            return 0.0
        if float(got) >= n:
            self._leases[key_id] = (float(got) - n, now_m + self.lease_s)
            return 0.0
        self._leases.pop(key_id, None)
        return float(wait)

    async def _top_up(self, key_id: str, rate: float, capacity: float, want: float) -> None:
        """Add up to `want` tokens of the shared bucket to this process's lease of `key_id`."""
        st = self.state
        try:
            got, _ = await st.eval_async(
                _TAKE, [st.key("r", key_id)], [repr(float(rate)), repr(float(capacity)), "1", repr(want)]
            )
        except StateUnavailable:
            return
        finally:
            self._topping.discard(key_id)
        if float(got) > 0:
            now_m = time.monotonic()
            lease = self._leases.get(key_id)
            left = lease[0] if lease is not None and now_m < lease[1] else 0.0
            self._leases[key_id] = (left + float(got), now_m + self.lease_s)

    def close(self) -> None:
        """Nothing to release per ledger (the `RedisState` owns the connection)."""


def _refusal(out: Any) -> tuple[str, float, float] | None:
    """The reserve script's answer: None (held) or (period, spent, reserved)."""
    if out:
        name, spent, reserved = out
        return _s(name), float(spent), float(reserved)
    return None


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
