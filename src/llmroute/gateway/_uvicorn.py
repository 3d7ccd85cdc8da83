"""uvicorn's httptools protocol with one socket write per non-streamed response.

Stock uvicorn writes a response's status line + headers on `http.response.start` and the body on
`http.response.body`: two `send` syscalls per response. On loopback each write also runs the
receiver's TCP path, so on the reference 2-core box the second write costs ~50 us of the
gateway's CPU per request. `CoalescingHttpToolsProtocol` holds the head of a response that has a
Content-Length and writes it together with the first body chunk. Streamed (chunked) responses
are unchanged: their head goes out at once, so SSE clients see headers before the first token.

Only the transport the cycle writes to is swapped, for the duration of uvicorn's own `send`; all
of uvicorn's checks (header validation, content-length accounting, keep-alive) still run.

The protocol also offers the ASGI scope extension `DISCONNECT_EXTENSION`
(`scope["extensions"]["llmroute.on_disconnect"]["register"]`): a function `register(callback)` whose callback
runs once, from `connection_lost`, when the client goes away before the response is complete (the
moment uvicorn marks the cycle disconnected). The gateway uses it instead of a watcher task per
request blocked in `receive()` (a task, an event wait and a wake-up per request).

The protocol also guards against slow and oversized clients (the `server:` limits of the gateway
config, found on the app it serves; `ServerConfig` defaults for any other app):

- a request head (request line + headers) over `max_header_bytes`, or with more than
  `max_header_count` fields, gets a 431; bytes are counted as they arrive, so a huge header is
  refused before it is buffered whole (httptools itself has no limit);
- a connection that has not completed a request head within `header_timeout_s` of opening (or of
  the head's first byte, on a kept-alive connection) is closed, with a 408 when part of a head came;
- a request body that sends nothing for `body_timeout_s` gets a 408 (the app sees a disconnect);
- past `max_connections` open connections per process, a new one gets a 503 and is closed.

Each refusal says `connection: close`, half-closes the socket and discards what the client still
sends for `LINGER_S` before closing, so the client reads the status instead of a reset.

`llmroute serve` binds its listening socket itself (`bind_socket`, so a busy port is one clear
error before anything loads) and hands it to `ReadyServer` (one process: calls back once the
app has started and the socket listens) or `run_workers` (uvicorn's multi-process supervisor).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import socket
import weakref
from collections.abc import Callable
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from llmroute.gateway.config import ServerConfig

__all__ = [
    "DISCONNECT_EXTENSION",
    "LINGER_S",
    "BindError",
    "CoalescingHttpToolsProtocol",
    "ReadyServer",
    "bind_socket",
    "run_workers",
]

DISCONNECT_EXTENSION = "llmroute.on_disconnect"
LINGER_S = 1.0  # after a refusal: how long what the client still sends is read and dropped


class _Collect:
    """Stands in for the transport during one uvicorn `send`: keeps what it would write."""

    __slots__ = ("closed", "data")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def close(self) -> None:
        self.closed = True


class _CoalescingCycle(RequestResponseCycle):
    """A request/response cycle whose response head waits for the first body chunk."""

    _head: bytes | None = None
    _on_disconnect: Any = None

    def _register_disconnect(self, callback: Any) -> None:
        if self.disconnected:  # already gone: call back at once
            callback()
        else:
            self._on_disconnect = callback

    async def _collect(self, message: Any) -> _Collect:
        real = self.transport
        buf = self.transport = _Collect()  # type: ignore[assignment]
        try:
            await RequestResponseCycle.send(self, message)
        finally:
            self.transport = real
        return buf

    async def send(self, message: Any) -> None:  # type: ignore[override]
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            buf = await self._collect(message)
            if buf.data:
                head = b"".join(buf.data)
                if self.chunked_encoding:  # streamed: the head goes out now
                    self.transport.write(head)
                else:
                    self._head = head
            return
        head = self._head
        if head is None or kind != "http.response.body":
            await RequestResponseCycle.send(self, message)
            return
        self._head = None
        buf = await self._collect(message)
        if self.disconnected:
            return
        self.transport.write(head + b"".join(buf.data) if buf.data else head)
        if buf.closed:
            self.transport.close()


class _Register:
    """The `register(callback)` of the disconnect extension. It holds its cycle weakly: the scope
    belongs to the cycle, so a strong reference (e.g. a bound method) would make a reference cycle
    per request that only the garbage collector frees."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: _CoalescingCycle) -> None:
        self._cycle = weakref.ref(cycle)

    def __call__(self, callback: Any) -> None:
        cycle = self._cycle()
        if cycle is not None:
            cycle._register_disconnect(callback)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the protocol has refused."""


def _server_limits(config: uvicorn.Config) -> ServerConfig:
    """The `server:` section of the gateway config `config` serves (looked up once per uvicorn
    config, through wrapping middlewares' `.app`), or the `ServerConfig` defaults."""
    found = config.__dict__.get("_llmroute_server")
    if found is None:
        app, found = config.loaded_app, None
        for _ in range(8):
            server = getattr(getattr(app, "config", None), "server", None)
            if isinstance(server, ServerConfig):
                found = server
                break
            app = getattr(app, "app", None)
            if app is None:
                break
        found = found or ServerConfig()
        config.__dict__["_llmroute_server"] = found
    return found


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose requests run in a `_CoalescingCycle`, with limits on slow and
    oversized clients (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits = _server_limits(config)
        self.timeout_keep_alive = limits.keep_alive_s
        self._max_head = limits.max_header_bytes
        self._max_fields = limits.max_header_count
        self._head_timeout = limits.header_timeout_s
        self._body_timeout = limits.body_timeout_s
        self._max_connections = limits.max_connections
        self._in_head = False  # a request head has begun and is not complete
        self._head_bytes = 0  # bytes received while the current head was incomplete
        self._head_size = 0  # request line + header bytes parsed so far
        self._in_body = False  # the current request's body is not complete
        self._body_seen = 0.0  # loop time of the last body bytes (or of the head's end)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._idle_since: float | None = None  # loop time the last response completed; None: busy
        self._idle_timer: asyncio.TimerHandle | None = None  # see on_response_complete

    # ---- connection limits ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(503, "Too many open connections; retry later.")
            return
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _refuse(self, status: int, msg: str) -> None:
        """Answer `status` (when a response may still be sent), half-close, drop what the client
        still sends for `LINGER_S`, then close."""
        self._refused = True
        self._in_head = self._in_body = False
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() returns a disconnect, its sends are dropped
            cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if not status:
            transport.close()
            return
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = msg.encode("ascii")
            transport.write(
                b"".join(
                    [
                        STATUS_LINE[status],
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
        self.flow.resume_reading()
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):  # pragma: no cover - already shut down
            pass
        self.loop.call_later(LINGER_S, transport.close)

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    # ---- keep-alive: one timer per connection, not one per response ---------------------------
    # uvicorn arms `loop.call_later(timeout_keep_alive)` at every response and cancels it at the
    # next request's first bytes: ~9k instructions per request under uvloop (a libuv timer made,
    # started, stopped and closed). Here a response notes when the connection went idle and new
    # bytes mark it busy; one timer per connection stays armed, and when it fires on a connection
    # idle for less than the timeout it re-arms for the rest. Same rule as uvicorn's: a connection
    # idle for `timeout_keep_alive` seconds after a response is closed.

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request starts at once: the connection stays busy
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _unset_keepalive_if_required(self) -> None:
        # called by uvicorn on new bytes (and when the connection is lost): busy, the timer stays
        self._idle_since = None

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._idle_since is None or self.transport.is_closing():
            return  # busy: its next response arms the timer again
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
        else:
            self.transport.close()  # uvicorn's timeout_keep_alive_handler

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408, "Request headers not received in time.")
        elif self.cycle is None:  # opened and sent nothing
            self._refuse(0, "")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._refused or not self._in_body or self.transport.is_closing():
            return
        idle = self.loop.time() - self._body_seen
        if idle < self._body_timeout or self.flow.read_paused:  # sent since, or the app is not reading
            wait = self._body_timeout - idle if idle < self._body_timeout else self._body_timeout
            self._body_timer = self.loop.call_later(wait, self._body_timed_out)
            return
        self._refuse(408, "Request body not received in time.")

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refused:  # a callback refused the request
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self._in_head:  # this data ends in an incomplete head: count it all
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._refuse(431, "Request header fields too large.")
                return
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)
        elif self._in_body:
            self._body_seen = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self._body_timeout, self._body_timed_out)

    # ---- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_size += len(url)
        if self._head_size > self._max_head:
            self._refuse(431, "Request header fields too large.")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head or len(self.headers) >= self._max_fields:
            self._refuse(431, "Request header fields too large.")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.__class__ = _CoalescingCycle
        ext = cycle.scope.get("extensions")
        if ext is None:
            ext = cycle.scope["extensions"] = {}  # type: ignore[typeddict-unknown-key]
        ext[DISCONNECT_EXTENSION] = {"register": _Register(cycle)}  # type: ignore[arg-type]
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, _CoalescingCycle) and cycle.disconnected:
            callback, cycle._on_disconnect = cycle._on_disconnect, None
            if callback is not None:
                callback()


# ---- serving on a socket bound up front ---------------------------------------------------------


class BindError(OSError):
    """The gateway cannot listen on the address; the message says which and what to do."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (not listening yet), set up as uvicorn binds its own
    (`SO_REUSEADDR`, inheritable for worker processes). Raises `BindError` with a one-line
    message naming the address and what to do (busy port, privileged port, foreign address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            why = (
                f"port {port} is already in use (another `llmroute serve` or another program "
                f"listens there); stop it, or pick a free port with --port (make run PORT=...)"
            )
        elif e.errno == errno.EACCES:
            why = f"no permission to use port {port} (ports below 1024 need privileges); use --port 8080"
        elif e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            why = f"{host!r} is not an address of this machine; use --host 127.0.0.1 (or 0.0.0.0 for all)"
        else:
            why = e.strerror or str(e)
        raise BindError(e.errno or 0, f"cannot listen on {shown}: {why}") from None
    sock.set_inheritable(True)
    return sock


class ReadyServer(uvicorn.Server):
    """`uvicorn.Server` that calls `on_ready()` once the app's startup has completed and the
    socket listens (so whatever it prints is true: the gateway answers)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit and self.on_ready is not None:
            self.on_ready()


def run_workers(config: uvicorn.Config, sock: socket.socket) -> None:
    """Serve `config` (an app import string, `workers` > 1) on `sock` with uvicorn's
    multi-process supervisor, as `uvicorn.run` does after binding its own socket."""
    from uvicorn.supervisors import Multiprocess

    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn releases
        Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock]).run()  # type: ignore[call-arg]
    else:
        Multiprocess(config, sockets=[sock]).run()
