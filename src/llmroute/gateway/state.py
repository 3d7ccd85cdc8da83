"""Gateway state shared by replicas on several hosts, in Redis (`state: redis://host:port/db`).

Without `state:` the gateway keeps budgets, reservations and rate limits in a `SharedLedger`
file (one host, `llmroute.gateway.ledger`) and its circuit breakers in each process. With
`state: redis://...` every gateway process on every host that names the same Redis shares:

- budgets and reservations: `RedisLedger.reserve` / `settle` are Lua scripts, so the check of
  spend + reservations against a budget and the new hold are one atomic step on the Redis server:
  however many replicas serve a key, it overspends by at most one request's maximum cost in
  total. A settled cost is in Redis before the gateway answers, so a kill -9 of a replica loses
  no acknowledged spend (Redis itself keeps it across its own restarts when run with
  `appendonly yes`). Each replica's holds are also kept per replica; a replica that stops
  heart-beating (its `alive` key expires, `heartbeat_ttl_s`) has them given back by the next
  refused reservation (at most once per `reclaim_interval_s` per process) or the next start;
- rate limits: a token bucket per key in a Lua script, timed by the Redis server's clock (a key
  with a large bucket is served in small leases, see `RedisLedger.take`);
- circuit breakers: a breaker that opens writes `breaker:<model>` with the cool-down as its TTL;
  the other replicas read it (at most every `breaker_refresh_s`) and open theirs until it
  expires; a breaker that closes deletes it;
- the response cache (`cache:` with no `backend`), under `llmroute:cache:`.

The gateway's request path reserves and settles with `RedisLedger.reserve_async` /
`settle_async`: every command issued in one event-loop pass goes out in one write on one asyncio
connection per process (auto-pipelining, `_AutoPipe`), and the replies come back in order to the
waiting requests, so the event loop never blocks on Redis and a busy gateway pays one round trip
per batch, not per request. Each script is still atomic on the server (the bound above holds),
and `settle_async` returns only once Redis has applied the settle, so the answer still goes out
after its cost is booked.

Keys are under `prefix` (default `llmroute:`): `b:<key id>` (hash d, ds, dr, m, ms, mr: day
number, day spent, day reserved, month number, month spent, month reserved, in USD),
`r:<key id>` (hash t, s: tokens, stamp), `holds:<replica>` (hash `<key id>:d|dr|m|mr`),
`alive:<replica>`, `replicas` (set), `breaker:<model>`. Redis Cluster is not supported (the
scripts touch keys of several slots).

Redis outage: an operation that fails (connection refused, timeout `timeout_s`) marks the state
degraded; while degraded, Redis is tried again at most every `retry_s` and other calls fail at
once without waiting. Budgets then follow `on_state_error`: `fail_open` admits requests (their
costs are queued in the process and added to Redis when it returns; a kill -9 while degraded
loses the queued costs, which the trace store still has) and `fail_closed` refuses them with a
503. Rate limits admit, breakers stay per process, and routing goes on. `/healthz` says
`"status": "degraded"` with `state.ok: false`, and the gauge `llmroute_state_degraded` is 1,
until an operation succeeds again.

The Redis client (RESP, the auto-pipelined connection) is in `llmroute.gateway.redis_pipe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from llmroute.gateway.redis_pipe import _NOTHING as _NOTHING
from llmroute.gateway.redis_pipe import Orphan, ReplyError, _AutoPipe, _bulks
from llmroute.gateway.redis_pipe import _encode as _encode
from llmroute.gateway.redis_pipe import _RespReader as _RespReader

__all__ = [
    "RedisLedger",
    "RedisState",
    "StateUnavailable",
    "redis_server_binary",
    "register_metrics",
    "spawn_redis_server",
]

log = logging.getLogger("llmroute.gateway.state")

OnError = Literal["fail_open", "fail_closed"]

Initial = Callable[[Sequence[str]], Mapping[str, tuple[float, float, float, float]]]


class StateUnavailable(RuntimeError):
    """The shared state (Redis) cannot be reached now."""


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


class RedisState:
    """One gateway process's connection to the shared state (see the module docstring).

    `url` is a redis:// (or rediss://, unix://) URL; `client` (tests) replaces the connection
    made from it (and then the `*_async` operations run on it too, blocking). Nothing connects
    until the first operation. Blocking operations use redis-py's client; the `*_async` ones an
    auto-pipelined asyncio connection per event loop (`_AutoPipe`).
    """

    def __init__(
        self,
        url: str,
        *,
        on_error: OnError = "fail_open",
        prefix: str = "llmroute:",
        timeout_s: float = 1.0,
        retry_s: float = 1.0,
        heartbeat_ttl_s: float = 15.0,
        reclaim_interval_s: float = 1.0,
        breaker_refresh_s: float = 0.5,
        client: Any = None,
    ) -> None:
        if on_error not in ("fail_open", "fail_closed"):
            raise ValueError("on_state_error must be 'fail_open' or 'fail_closed'")
        self.url = url
        self.on_error: OnError = on_error
        self.prefix = prefix
        self.retry_s = float(retry_s)
        self.timeout_s = float(timeout_s)
        self._own_client = client is None
        self.heartbeat_ttl_s = float(heartbeat_ttl_s)
        self.reclaim_interval_s = float(reclaim_interval_s)
        self.breaker_refresh_s = float(breaker_refresh_s)
        if client is None:
            try:
                import redis
            except ImportError as e:  # pragma: no cover - depends on the install
                raise RuntimeError(
                    "state: redis://... needs the redis client: pip install 'llmroute[redis]'"
                ) from e
            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0
            )
        self.client = client
        self.replica = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
        self.degraded = False
        self.errors = 0  # failed operations (the metric's counter)
        self._next_try = 0.0
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, int, float, float]] = []  # settles queued while degraded
        self._scripts: dict[str, str] = {}  # script text -> SHA1
        self._pipe: _AutoPipe | None = None
        self._heads: dict[tuple[str, tuple[str, ...]], bytes] = {}  # see eval_async
        self._tasks: set[asyncio.Future[Any]] = set()  # background reads (breakers)
        self._breakers: dict[str, tuple[float, float]] = {}  # model -> (checked at, open until)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ---- plumbing --------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A Redis key under this state's prefix."""
        return self.prefix + ":".join(parts)

    def _sha(self, text: str) -> str:
        sha = self._scripts.get(text)
        if sha is None:
            sha = self._scripts[text] = hashlib.sha1(text.encode()).hexdigest()
        return sha

    def eval(self, text: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run Lua script `text` by its SHA1 (loading it once per server: again after a restart);
        raises StateUnavailable like `run`."""
        sha = self._sha(text)

        def call(c: Any) -> Any:
            try:
                return c.evalsha(sha, len(keys), *keys, *args)
            except Exception as e:
                if type(e).__name__ != "NoScriptError" and "NOSCRIPT" not in str(e):
                    raise
                c.script_load(text)
                return c.evalsha(sha, len(keys), *keys, *args)

        return self.run(call)

    def run(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(client)`, or StateUnavailable when Redis fails (or failed less than `retry_s` ago).
        The first success after a failure flushes the costs queued meanwhile."""
        if self.degraded and time.monotonic() < self._next_try:
            raise StateUnavailable("the shared state (Redis) is unavailable")
        try:
            out = fn(self.client)
        except Exception as e:  # redis.RedisError, OSError: any failure of the state backend
            raise self._failed(e) from e
        if self.degraded:
            self._recover()
        return out

    def _failed(self, e: Exception) -> StateUnavailable:
        """Count a failed operation and mark the state degraded; the error to raise."""
        with self._lock:
            self.errors += 1
            if not self.degraded:
                log.warning("shared state %s unavailable (%s); degraded", self._where(), type(e).__name__)
            self.degraded = True
            self._next_try = time.monotonic() + self.retry_s
        return StateUnavailable(f"the shared state (Redis) is unavailable: {type(e).__name__}")

    async def eval_async(
        self, text: str, keys: Sequence[str], args: Sequence[Any], *, orphan: Orphan | None = None
    ) -> Any:
        """`eval` without blocking the event loop: the EVALSHA joins this loop pass's pipeline
        (`_AutoPipe`). Raises StateUnavailable like `run`. A caller cancelled while waiting:
        the script still runs and `orphan` gets its reply (a `ReplyError`, e.g. NOSCRIPT: it did
        not run) or the connection's exception (unknown whether it ran). With a `client` given
        (tests) it is `eval`."""
        if not self._own_client:
            return self.eval(text, keys, args)
        if self.degraded and time.monotonic() < self._next_try:
            raise StateUnavailable("the shared state (Redis) is unavailable")
        pipe = self._loop_pipe()
        sha = self._sha(text)
        # "EVALSHA sha numkeys keys..." in RESP, kept per script and keys (the keys of a ledger
        # are tuples it keeps per key id); the arguments are encoded per call
        kt = keys if type(keys) is tuple else tuple(keys)
        head = self._heads.get((sha, kt))
        if head is None:
            if len(self._heads) >= 4096:
                self._heads.clear()
            head = self._heads[(sha, kt)] = _bulks(("EVALSHA", sha, len(kt), *kt))
        command = b"*%d\r\n" % (3 + len(keys) + len(args)) + head + _bulks(args)
        try:
            out = await pipe.send(command, orphan)
            if isinstance(out, ReplyError) and str(out).startswith("NOSCRIPT"):
                pipe.call("SCRIPT", "LOAD", text).add_done_callback(_retrieve)  # answered first
                out = await pipe.send(command, orphan)
            if isinstance(out, ReplyError):
                raise out
        except Exception as e:  # ConnectionError, TimeoutError, ReplyError
            raise self._failed(e) from e
        if self.degraded:
            self._recover()
        return out

    def _loop_pipe(self) -> _AutoPipe:
        """The auto-pipelined connection of the running event loop (made on first use)."""
        loop = asyncio.get_running_loop()
        pipe = self._pipe
        if pipe is None or pipe.loop is not loop:
            pipe = self._pipe = _AutoPipe(self.url, self.timeout_s, loop)
        return pipe

    async def command_async(self, *args: Any) -> Any:
        """One Redis command on the running loop's auto-pipelined connection; raises
        StateUnavailable like `run`."""
        if self.degraded and time.monotonic() < self._next_try:
            raise StateUnavailable("the shared state (Redis) is unavailable")
        try:
            out = await self._loop_pipe().call(*args)
            if isinstance(out, ReplyError):
                raise out
        except Exception as e:  # ConnectionError, TimeoutError, ReplyError
            raise self._failed(e) from e
        if self.degraded:
            self._recover()
        return out

    def _where(self) -> str:
        """The URL without credentials (for logs)."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    def _recover(self) -> None:
        with self._lock:
            if not self.degraded:
                return
            self.degraded = False
            pending, self._pending = self._pending, []
        log.warning("shared state %s is back; %d queued costs added", self._where(), len(pending))
        if self._beat is not None:  # our alive key may have expired meanwhile: renew it before others reclaim
            with contextlib.suppress(Exception):
                self._alive(self.client)
        for i, (kid, day, month, amount, actual) in enumerate(pending):
            try:
                self._settle(kid, day, month, amount, actual)
            except Exception:  # failed again: keep the rest for the next recovery
                with self._lock:
                    self._pending[:0] = pending[i:]
                    self.degraded = True
                    self._next_try = time.monotonic() + self.retry_s
                return

    def _settle(self, kid: str, day: int, month: int, amount: float, actual: float) -> None:
        self.eval(
            _SETTLE,
            [self.key("b", kid), self.key("holds", self.replica)],
            [day, month, repr(float(amount)), repr(float(actual)), kid],
        )

    def ping(self) -> bool:
        """Whether Redis answers now (a call that also ends a degraded spell)."""
        try:
            self.run(lambda c: c.ping())
        except StateUnavailable:
            return False
        return True

    def health(self) -> dict[str, Any]:
        """For /healthz: {'backend': 'redis', 'ok': bool, 'errors': failed operations so far}."""
        if self.degraded and time.monotonic() >= self._next_try:
            self.ping()
        return {"backend": "redis", "ok": not self.degraded, "errors": self.errors}

    def _heartbeat(self) -> None:
        period = max(0.05, self.heartbeat_ttl_s / 3)
        while not self._stop.wait(period):
            with contextlib.suppress(StateUnavailable):
                self.run(self._alive)

    def _alive(self, c: Any) -> None:
        p = c.pipeline(transaction=False)
        p.set(self.key("alive", self.replica), "1", px=int(self.heartbeat_ttl_s * 1000))
        p.sadd(self.key("replicas"), self.replica)
        p.execute()

    def start_heartbeat(self) -> None:
        """Keep this replica's `alive` key fresh (a daemon thread) so its holds are not reclaimed."""
        if self._beat is None:
            with contextlib.suppress(StateUnavailable):
                self.run(self._alive)
            self._beat = threading.Thread(target=self._heartbeat, name="llmroute-state-beat", daemon=True)
            self._beat.start()

    def reclaim(self) -> int:
        """Give back the holds of replicas that stopped heart-beating; returns how many."""
        return int(self.eval(_RECLAIM, [self.key("replicas")], [self.prefix, self.replica]))

    def read_spend(self, key_ids: Sequence[str], day: int, month: int) -> dict[str, tuple[float, float]]:
        """{key_id: (day spent, month spent)} for day number `day` and month number `month`
        (`llmroute.gateway.ledger`'s numbering), for the ids Redis has books for; read-only (no
        heartbeat, nothing claimed), so a CLI can read the replicas' books. Raises
        StateUnavailable when Redis does not answer."""
        ids = list(dict.fromkeys(key_ids))

        def read(c: Any) -> list[Any]:
            p = c.pipeline(transaction=False)
            for k in ids:
                p.hmget(self.key("b", k), "d", "ds", "m", "ms")
            return list(p.execute())

        out: dict[str, tuple[float, float]] = {}
        for kid, v in zip(ids, self.run(read) if ids else [], strict=True):
            if v[0] is None and v[2] is None:
                continue
            d = float(v[1] or 0) if v[0] is not None and int(float(v[0])) == day else 0.0
            m = float(v[3] or 0) if v[2] is not None and int(float(v[2])) == month else 0.0
            out[kid] = (d, m)
        return out

    def ledger(self, key_ids: Sequence[str] = (), *, initial: Initial | None = None) -> RedisLedger:
        """A `RedisLedger` (the `SharedLedger` interface) on this state."""
        return RedisLedger(self, key_ids, initial=initial)

    # ---- circuit breakers ------------------------------------------------------------------------

    def breaker_open_for(self, model: str) -> float:
        """Seconds `model`'s breaker stays open by another replica's word (0.0: not open); read
        from Redis at most every `breaker_refresh_s`, and 0.0 while Redis is unavailable. Called
        on an event loop, the read happens in the background (auto-pipelined) and the answer is
        the last one read: it may be one Redis round trip late."""
        now = time.monotonic()
        seen = self._breakers.get(model)
        if seen is None or now - seen[0] >= self.breaker_refresh_s:
            if self._own_client and asyncio._get_running_loop() is not None:
                self._breakers[model] = (now, seen[1] if seen is not None else 0.0)
                t = asyncio.ensure_future(self._refresh_breaker(model))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
                return max(0.0, self._breakers[model][1] - now)
            try:
                ms = self.run(lambda c: c.pttl(self.key("breaker", model)))
            except StateUnavailable:
                ms = -2
            seen = self._breakers[model] = (now, now + ms / 1000.0 if ms and ms > 0 else 0.0)
        return max(0.0, seen[1] - now)

    async def _refresh_breaker(self, model: str) -> None:
        try:
            ms = await self.command_async("PTTL", self.key("breaker", model))
        except StateUnavailable:
            ms = -2
        now = time.monotonic()
        self._breakers[model] = (now, now + ms / 1000.0 if ms and ms > 0 else 0.0)

    def open_breaker(self, model: str, cooldown_s: float) -> None:
        """Tell the other replicas that `model`'s breaker opened for `cooldown_s` seconds."""
        now = time.monotonic()
        self._breakers[model] = (now, now + cooldown_s)
        with contextlib.suppress(StateUnavailable):
            self.run(lambda c: c.set(self.key("breaker", model), "1", px=max(1, int(cooldown_s * 1000))))

    def close_breaker(self, model: str) -> None:
        """Tell the other replicas that `model`'s breaker closed."""
        self._breakers[model] = (time.monotonic(), 0.0)
        with contextlib.suppress(StateUnavailable):
            self.run(lambda c: c.delete(self.key("breaker", model)))

    def close(self) -> None:
        """Stop the heartbeat and drop the connections (this replica's holds are given back by
        the others once its alive key expires, or now when none are left)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2.0)
            self._beat = None
        with contextlib.suppress(Exception):
            self.client.delete(self.key("alive", self.replica))
        with contextlib.suppress(Exception):
            self.client.close()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(Exception):  # its loop may be closed already
                pipe.close()


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


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """A done-callback for a future nobody awaits: its exception is retrieved (no warning)."""
    if not fut.cancelled():
        fut.exception()


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class _StateCollector:
    """Prometheus collector: llmroute_state_degraded (0/1) and llmroute_state_errors_total."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.state
        if st.degraded and time.monotonic() >= st._next_try:
            st.ping()
        yield GaugeMetricFamily(
            "llmroute_state_degraded",
            "1 while the shared state (Redis) does not answer (budgets follow on_state_error), else 0.",
            value=1.0 if st.degraded else 0.0,
        )
        yield CounterMetricFamily(
            "llmroute_state_errors", "Failed operations on the shared state (Redis).", value=st.errors
        )


def register_metrics(state: RedisState, registry: Any) -> None:
    """Export the shared state's health to a prometheus_client `registry` (this process's view)."""
    registry.register(_StateCollector(state))


def redis_server_binary() -> str | None:
    """The `redis-server` program (PATH, then /usr/bin and /usr/sbin), or None if not installed."""
    import shutil

    for cand in (shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def spawn_redis_server(port: int, folder: str, *, binary: str | None = None) -> Any:
    """Start a throwaway `redis-server` on 127.0.0.1:`port` with its append-only file in
    `folder` (tests, benchmarks, demos); returns the `subprocess.Popen` once it answers PING.
    Stop it with `.terminate()`; a new one on the same port and folder reads the data back."""
    import socket
    import subprocess

    exe = binary or redis_server_binary()
    os.makedirs(folder, exist_ok=True)
    if exe is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", "",
           "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no", "--loglevel", "warning",
           "--protected-mode", "no"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode} (port {port} taken?)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not answer within 30 s")
