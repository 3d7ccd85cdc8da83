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
"""

from __future__ import annotations

import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["DISCONNECT_EXTENSION", "CoalescingHttpToolsProtocol"]

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
