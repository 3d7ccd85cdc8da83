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
