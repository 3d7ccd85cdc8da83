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

`llmroute serve` binds its listening socket itself (`bind_socket`, so a busy port is one clear
error before anything loads) and hands it to `ReadyServer` (one process: calls back once the
app has started and the socket listens) or `run_workers` (uvicorn's multi-process supervisor).
"""

from __future__ import annotations

import errno
import inspect
import socket
import weakref
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = [
    "DISCONNECT_EXTENSION",
    "BindError",
    "CoalescingHttpToolsProtocol",
    "ReadyServer",
    "bind_socket",
    "run_workers",
]

DISCONNECT_EXTENSION = "llmroute.on_disconnect"


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


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose requests run in a `_CoalescingCycle` (see the module docstring)."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.__class__ = _CoalescingCycle
        ext = cycle.scope.get("extensions")
        if ext is None:
            ext = cycle.scope["extensions"] = {}  # type: ignore[typeddict-unknown-key]
        ext[DISCONNECT_EXTENSION] = {"register": _Register(cycle)}  # type: ignore[arg-type]
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
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
