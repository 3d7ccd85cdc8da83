"""The Redis client of the gateway's shared state (`llmroute.gateway.state`): RESP encoding
(`_encode`, `_bulks`), an incremental reply parser (`_RespReader`) and one auto-pipelined
asyncio connection (`_AutoPipe`: every command of one event-loop pass goes out in one write,
replies resolve the callers' futures in order; a cancelled caller's reply goes to its `orphan`
callback), and the errors of the shared state (`ReplyError`, `StateUnavailable`). `RedisState`
is in `llmroute.gateway.state`, `RedisLedger` and the Lua scripts in
`llmroute.gateway.state_ledger`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("llmroute.gateway.state")


class ReplyError(Exception):
    """An error reply from Redis (`-ERR ...`, `-NOSCRIPT ...`)."""


class StateUnavailable(RuntimeError):
    """The shared state (Redis) cannot be reached now."""


_NOTHING: Any = object()


class _Incomplete(Exception):
    pass


def _encode(args: Sequence[Any]) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + _bulks(args)


def _bulks(args: Sequence[Any]) -> bytes:
    """`args` as RESP bulk strings, one after the other (a command without its array header)."""
    out = []
    for a in args:
        b = a if type(a) is bytes else str(a).encode()
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


class _RespReader:
    """Incremental RESP2 reply parser: `feed` bytes, then `gets` until it returns `_NOTHING`.
    Bulk strings are bytes, status replies str, error replies `ReplyError` instances (returned,
    not raised), nil None."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def gets(self) -> Any:
        try:
            value, pos = self._parse(self._pos)
        except _Incomplete:
            return _NOTHING
        if pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        else:
            self._pos = pos
        return value

    def _parse(self, pos: int) -> tuple[Any, int]:
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind, line, pos = buf[pos], bytes(buf[pos + 1 : end]), end + 2
        if kind == 36:  # $ bulk string
            n = int(line)
            if n < 0:
                return None, pos
            if len(buf) < pos + n + 2:
                raise _Incomplete
            return bytes(buf[pos : pos + n]), pos + n + 2
        if kind == 42:  # * array
            n = int(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        if kind == 58:  # : integer
            return int(line), pos
        if kind == 43:  # + status
            return line.decode(), pos
        if kind == 45:  # - error
            return ReplyError(line.decode(errors="replace")), pos
        raise ConnectionError(f"unexpected reply from Redis (type byte {kind!r})")


def tls_context(opts: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of a rediss:// URL, from its options as `redis.connection.parse_url`
    gives them, built as redis-py's own TLS connections build it (so the gateway's async
    connection and the redis-py clients beside it accept the same URL): `ssl_cert_reqs` none /
    optional / required (the default), `ssl_check_hostname` (default on; off when certificates
    are not required), `ssl_ca_certs` / `ssl_ca_path` (a private CA), `ssl_certfile` /
    `ssl_keyfile` / `ssl_password` (a client certificate), `ssl_min_version`. Raises ValueError
    for an unknown `ssl_cert_reqs`."""
    reqs = opts.get("ssl_cert_reqs", "required")
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    if reqs is None:
        reqs = ssl.CERT_NONE
    elif isinstance(reqs, str):
        if reqs not in modes:
            raise ValueError(f"rediss:// URL: ssl_cert_reqs must be none, optional or required, got {reqs!r}")
        reqs = modes[reqs]
    ctx = ssl.create_default_context()
    ctx.check_hostname = bool(opts.get("ssl_check_hostname", True)) and reqs != ssl.CERT_NONE
    ctx.verify_mode = reqs
    if opts.get("ssl_certfile") or opts.get("ssl_keyfile"):
        ctx.load_cert_chain(opts.get("ssl_certfile"), opts.get("ssl_keyfile"), opts.get("ssl_password"))
    if opts.get("ssl_ca_certs") is not None or opts.get("ssl_ca_path") is not None:
        ctx.load_verify_locations(cafile=opts.get("ssl_ca_certs"), capath=opts.get("ssl_ca_path"))
    if opts.get("ssl_min_version") is not None:
        ctx.minimum_version = opts["ssl_min_version"]
    return ctx


class _AutoPipe:
    """One asyncio connection to Redis that auto-pipelines: every command `call`ed in one
    event-loop pass is written at the end of that pass as one write, and the replies (Redis
    answers in order on a connection) resolve the callers' futures in order.

    Connects on first use (with AUTH / SELECT from the URL); a broken connection, or no reply
    for `timeout_s` while replies are awaited, fails every waiting future with `ConnectionError`
    / `TimeoutError` and the next call connects again. A command once `call`ed is written even if
    its caller was cancelled meanwhile: its reply (or failure) then goes to its `orphan` callback,
    if any, else nowhere.
    """

    def __init__(self, url: str, timeout_s: float, loop: asyncio.AbstractEventLoop) -> None:
        from redis.connection import parse_url

        self.loop = loop
        self.timeout_s = timeout_s
        opts = parse_url(url)
        self._path: str | None = opts.get("path")
        self._host = str(opts.get("host") or "localhost")
        self._port = int(opts.get("port") or 6379)
        # rediss://: the URL's TLS options (a private CA, a client certificate, ...) apply here
        # as in the redis-py clients; built once, at the first connection's cost
        self._ssl: ssl.SSLContext | None = tls_context(opts) if url.startswith("rediss://") else None
        hello: list[Sequence[Any]] = []
        if opts.get("password") is not None:
            user = opts.get("username")
            hello.append(("AUTH", user, opts["password"]) if user else ("AUTH", opts["password"]))
        if int(opts.get("db") or 0):
            hello.append(("SELECT", int(opts["db"])))
        self._hello = [_encode(c) for c in hello]
        self._conn: _PipeConnection | None = None  # the open connection
        self._connecting = False
        self._out: list[bytes] = []  # commands not yet written
        self._out_futs: list[tuple[asyncio.Future[Any] | None, Orphan | None]] = []
        self._waiting: deque[tuple[asyncio.Future[Any] | None, Orphan | None]] = deque()  # written
        self._flush_soon = False
        self._timer: asyncio.TimerHandle | None = None
        self._replies = 0  # replies received (the timeout's progress mark)
        self.writes = 0  # batches written (each one write of all the commands of a loop pass)

    def call(self, *args: Any, orphan: Orphan | None = None) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply (a `ReplyError` for an error reply).
        Should the future be cancelled first, `orphan(reply or exception)` gets it instead."""
        return self.send(_encode(args), orphan)

    def send(self, command: bytes, orphan: Orphan | None = None) -> asyncio.Future[Any]:
        """`call` with the command already in RESP."""
        fut = self.loop.create_future()
        self._out.append(command)
        self._out_futs.append((fut, orphan))
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._flush)
        return fut

    def close(self) -> None:
        """Close the connection (waiting calls fail)."""
        self._abort(ConnectionError("the connection to Redis was closed"))

    def _flush(self) -> None:
        self._flush_soon = False
        if not self._out:
            return
        conn = self._conn
        if conn is None:
            if not self._connecting:
                self._connecting = True
                self.loop.create_task(self._connect())
            return
        data = b"".join(self._out)
        self._waiting.extend(self._out_futs)
        self._out.clear()
        self._out_futs.clear()
        conn.transport.write(data)
        self.writes += 1
        if self._timer is None:
            self._timer = self.loop.call_later(self.timeout_s, self._check, self._replies)

    async def _connect(self) -> None:
        try:
            if self._path:
                coro = self.loop.create_unix_connection(lambda: _PipeConnection(self), self._path)
            else:
                coro = self.loop.create_connection(
                    lambda: _PipeConnection(self), self._host, self._port, ssl=self._ssl
                )
            _, conn = await asyncio.wait_for(coro, self.timeout_s)
        except Exception as e:
            self._connecting = False
            self._fail(ConnectionError(f"cannot connect to Redis: {type(e).__name__}"))
            return
        self._connecting = False
        self._conn = conn
        if self._hello:  # AUTH / SELECT first: their replies are checked in _received
            self._out[:0] = self._hello
            self._out_futs[:0] = [(None, None)] * len(self._hello)
        self._flush()

    def _check(self, mark: int) -> None:
        """The timeout: replies are awaited and none came for `timeout_s`: drop the connection."""
        self._timer = None
        if not self._waiting:
            return
        if self._replies == mark:
            self._abort(TimeoutError(f"Redis did not answer within {self.timeout_s} s"))
        else:
            self._timer = self.loop.call_later(self.timeout_s, self._check, self._replies)

    def _received(self, conn: _PipeConnection, data: bytes) -> None:
        if conn is not self._conn:
            return
        reader = conn.reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except Exception as e:  # a garbled reply: nothing after it can be trusted
                self._abort(ConnectionError(f"bad reply from Redis: {e}"))
                return
            if reply is _NOTHING:
                return
            self._replies += 1
            if not self._waiting:
                self._abort(ConnectionError("a reply from Redis that no command waited for"))
                return
            fut, orphan = self._waiting.popleft()
            if fut is None:  # AUTH / SELECT
                if isinstance(reply, ReplyError):
                    self._abort(ConnectionError(f"Redis refused the connection setup: {reply}"))
                    return
            elif not fut.done():
                fut.set_result(reply)
            elif orphan is not None:
                _orphaned(orphan, reply)

    def _lost(self, conn: _PipeConnection) -> None:
        if conn is self._conn:
            self._conn = None
            self._fail(ConnectionError("the connection to Redis was lost"))

    def _abort(self, exc: Exception) -> None:
        conn, self._conn = self._conn, None
        self._fail(exc)
        if conn is not None:
            conn.transport.abort()

    def _fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        futs = [*self._waiting, *self._out_futs]
        self._waiting.clear()
        self._out.clear()
        self._out_futs.clear()
        for fut, orphan in futs:
            if fut is None:
                continue
            if not fut.done():
                fut.set_exception(exc)
            elif orphan is not None:
                _orphaned(orphan, exc)


Orphan = Callable[[Any], None]


def _orphaned(orphan: Orphan, reply: Any) -> None:
    """Hand a cancelled caller's reply (or failure) to its `orphan` callback."""
    try:
        orphan(reply)
    except Exception:  # a bug: never let it break the connection's other replies
        log.exception("handling the Redis reply of a cancelled request failed")


class _PipeConnection(asyncio.Protocol):
    """One connection of an `_AutoPipe` (a new one per reconnect, so a late event of an old
    connection cannot touch the new one)."""

    def __init__(self, pipe: _AutoPipe) -> None:
        self.pipe = pipe
        self.reader = _RespReader()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pipe._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._lost(self)
