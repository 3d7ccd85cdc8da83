"""The uvicorn protocol `llmroute serve` uses: one socket write per non-streamed response.

The whole gateway suite also runs on it (tests/conftest.py `run_gateway`); these tests pin the
write pattern with a recording transport, and check a real server end to end.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn

from conftest import free_port
from llmroute.gateway._uvicorn import CoalescingHttpToolsProtocol, _CoalescingCycle


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _cycle(keep_alive: bool = True) -> tuple[_CoalescingCycle, _Transport]:
    t = _Transport()
    log = logging.getLogger("test")
    c = _CoalescingCycle(
        scope={"type": "http", "method": "POST", "path": "/", "http_version": "1.1", "headers": []},
        transport=t,
        flow=SimpleNamespace(write_paused=False),
        logger=log,
        access_logger=log,
        access_log=False,
        default_headers=[(b"date", b"x")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    return c, t


def test_non_streamed_response_is_one_write() -> None:
    async def go() -> None:
        c, t = _cycle()
        await c.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
            }
        )
        assert t.writes == []  # the head waits for the body
        await c.send({"type": "http.response.body", "body": b"{}"})
        assert len(t.writes) == 1
        head, body = t.writes[0].split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 2" in head
        assert body == b"{}" and c.response_complete and not t.closed

    asyncio.run(go())


def test_connection_close_still_closes_after_the_write() -> None:
    async def go() -> None:
        c, t = _cycle(keep_alive=False)
        await c.send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"3")]})
        await c.send({"type": "http.response.body", "body": b"abc"})
        assert (
            len(t.writes) == 1
            and t.writes[0].endswith(b"\r\n\r\nabc")
            and b"connection: close" in t.writes[0]
        )
        assert t.closed

    asyncio.run(go())


def test_streamed_response_head_goes_out_at_once() -> None:
    async def go() -> None:
        c, t = _cycle()
        await c.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        assert len(t.writes) == 1 and b"transfer-encoding: chunked" in t.writes[0]
        await c.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await c.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert t.writes[1] == b"9\r\ndata: 1\n\n\r\n" and t.writes[-1].endswith(b"0\r\n\r\n")

    asyncio.run(go())


def test_bad_header_is_still_rejected() -> None:
    async def go() -> None:
        c, t = _cycle()
        with pytest.raises(RuntimeError):
            await c.send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb")]})
        assert c.transport is t  # the real transport is back after uvicorn's own error

    asyncio.run(go())


def test_real_server_keep_alive_and_stream() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stream":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
            )
            for part in (b"a", b"b"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="asyncio",
            http=CoalescingHttpToolsProtocol,
            lifespan="off",
            log_level="warning",
        )
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    end = time.monotonic() + 20
    while not server.started and time.monotonic() < end:
        time.sleep(0.02)
    try:
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(3):  # one keep-alive connection, several responses
                r = client.get(f"/r{i}")
                assert r.status_code == 200 and r.text == f"/r{i}"
            r = client.get("/stream")
            assert r.text == "ab" and r.headers.get("transfer-encoding") == "chunked"
        with socket.create_connection(("127.0.0.1", port)) as s:  # HTTP/1.0: no keep-alive, server closes
            s.sendall(b"GET /x HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n/x")
    finally:
        server.should_exit = True
        th.join(20)


def test_serve_freezes_startup_objects_out_of_the_collector() -> None:
    """`llmroute serve` moves what startup loaded out of the collector's reach (full collections
    would walk the router's objects every time)."""
    import gc

    from llmroute.gateway.serve import GC_GEN0_THRESHOLD, freeze_startup_objects

    loaded = [{"i": i} for i in range(1000)]  # stands in for a router's objects
    threshold = gc.get_threshold()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= len(loaded)
        assert not any(o is loaded for o in gc.get_objects())
        # young collections walk the requests in flight: far less often than CPython's 700
        assert gc.get_threshold() == (max(GC_GEN0_THRESHOLD, threshold[0]), *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


# ---- a socket bound up front; "ready" only once the app has started and the socket listens -------


class _SlowStartApp:
    """An ASGI app whose lifespan startup waits until `release` is set."""

    def __init__(self) -> None:
        self.starting = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    self.starting.set()
                    await asyncio.get_running_loop().run_in_executor(None, self.release.wait)
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})


def test_ready_server_calls_back_only_once_the_socket_listens() -> None:
    from llmroute.gateway._uvicorn import ReadyServer, bind_socket

    app = _SlowStartApp()
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    ready: list[bool] = []

    def on_ready() -> None:  # a connection is accepted (by the kernel) at this very moment
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            ready.append(True)

    server = ReadyServer(
        uvicorn.Config(app, loop="asyncio", lifespan="on", log_level="warning", timeout_graceful_shutdown=1),
        on_ready=on_ready,
    )
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    try:
        assert app.starting.wait(20)
        # the app is still starting: bound, not listening, nothing announced
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert ready == []
        app.release.set()
        end = time.monotonic() + 20
        while not ready and th.is_alive() and time.monotonic() < end:
            time.sleep(0.02)
        assert ready == [True]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        app.release.set()
        server.should_exit = True
        th.join(20)


def test_bind_socket_names_a_busy_port_and_what_to_do() -> None:
    from llmroute.gateway._uvicorn import BindError, bind_socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BindError) as e:
            bind_socket("127.0.0.1", port)
    msg = e.value.strerror
    assert msg.startswith(f"cannot listen on 127.0.0.1:{port}: port {port} is already in use")
    assert "--port" in msg and "\n" not in msg
    free = bind_socket("127.0.0.1", 0)  # a free port binds, and is not listening yet
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", free.getsockname()[1]), timeout=5).close()
    finally:
        free.close()


# ---- keep-alive: one timer per connection (re-armed), not one per response ---------------------------


class _Clock:
    """A loop stand-in: settable time, call_later recorded (fired by hand)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[list[Any]] = []  # [when, callback, cancelled]

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, cb: Any) -> Any:
        t = [self.now + delay, cb, False]
        self.timers.append(t)
        return SimpleNamespace(cancel=lambda: t.__setitem__(2, True))

    def fire(self, at: float) -> None:
        self.now = at
        due = [t for t in self.timers if not t[2] and t[0] <= at]
        for t in due:
            t[2] = True
            t[1]()

    def armed(self) -> list[float]:
        return [t[0] for t in self.timers if not t[2]]


def _protocol(clock: _Clock, keep_alive_s: float) -> tuple[CoalescingHttpToolsProtocol, _Transport]:
    from llmroute.gateway.config import ServerConfig

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    config = uvicorn.Config(app, lifespan="off")
    config.load()
    config.__dict__["_llmroute_server"] = ServerConfig(keep_alive_s=keep_alive_s)
    state = SimpleNamespace(total_requests=0, connections=set(), tasks=set(), default_headers=[])
    p = CoalescingHttpToolsProtocol(config, state, {}, _loop=clock)  # type: ignore[arg-type]
    t = _Transport()
    p.transport = t  # type: ignore[assignment]
    p.flow = SimpleNamespace(resume_reading=lambda: None, resume_writing=lambda: None)  # type: ignore[assignment]
    return p, t


def test_keep_alive_closes_after_the_timeout_of_idleness_with_one_timer() -> None:
    clock = _Clock()
    p, t = _protocol(clock, keep_alive_s=5.0)
    p.on_response_complete()  # t=0: idle
    assert clock.armed() == [5.0]
    clock.now = 1.0
    p._unset_keepalive_if_required()  # the next request's bytes: busy
    clock.now = 2.0
    p.on_response_complete()  # idle again: no second timer
    assert clock.armed() == [5.0] and len(clock.timers) == 1
    clock.fire(5.0)  # idle for 3 s only: re-armed for the 2 s left, still open
    assert not t.closed and clock.armed() == [7.0]
    clock.fire(7.0)  # 5 s idle: closed
    assert t.closed and clock.armed() == []
    assert p.server_state.total_requests == 2


def test_keep_alive_timer_firing_on_a_busy_connection_leaves_it_open() -> None:
    clock = _Clock()
    p, t = _protocol(clock, keep_alive_s=5.0)
    p.on_response_complete()
    clock.now = 4.0
    p._unset_keepalive_if_required()  # a request in progress when the timer fires
    clock.fire(5.0)
    assert not t.closed and clock.armed() == []
    clock.now = 6.0
    p.on_response_complete()  # its response arms the timer again
    assert clock.armed() == [11.0]
    p.connection_lost(None)  # a closed connection leaves no timer behind
    assert clock.armed() == []


def test_real_server_closes_an_idle_keep_alive_connection() -> None:
    from llmroute.gateway.config import ServerConfig

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    app.config = SimpleNamespace(server=ServerConfig(keep_alive_s=0.2))  # type: ignore[attr-defined]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, loop="uvloop", http=CoalescingHttpToolsProtocol, lifespan="off"
        )
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    end = time.monotonic() + 20
    while not server.started and time.monotonic() < end:
        time.sleep(0.02)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(30)  # a hang guard, not a speed bar
            data = b""
            for _ in range(2):  # two requests on one connection, then idle
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                while not data.endswith(b"ok"):
                    data += s.recv(4096)
                data = b""
            assert s.recv(4096) == b""  # the server closed the idle connection
    finally:
        server.should_exit = True
        th.join(20)
