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

The Redis client (RESP, the auto-pipelined connection) and `StateUnavailable` are in
`llmroute.gateway.redis_pipe`; `RedisLedger` (budgets and rate limits) and its Lua scripts in
`llmroute.gateway.state_ledger`. This module holds `RedisState` (one process's connection:
scripts, degraded mode, heartbeat, breakers), its metrics and the test server helpers, and
re-exports the others' public names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from llmroute.gateway.redis_pipe import _NOTHING as _NOTHING
from llmroute.gateway.redis_pipe import Orphan, ReplyError, StateUnavailable, _AutoPipe, _bulks
from llmroute.gateway.redis_pipe import _encode as _encode
from llmroute.gateway.redis_pipe import _RespReader as _RespReader
from llmroute.gateway.state_ledger import _RECLAIM, _SETTLE, Initial, RedisLedger

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


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """A done-callback for a future nobody awaits: its exception is retrieved (no warning)."""
    if not fut.cancelled():
        fut.exception()


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
