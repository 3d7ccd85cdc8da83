"""The gateway's pooled upstream HTTP/1.1 client against real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llmroute.gateway.backends.http import HTTPClient, HTTPError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> Any:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def _read_request(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    return head + (await r.readexactly(n) if n else b"")


def test_keep_alive_chunked_and_streaming(fake_server: Any) -> None:
    async def main() -> None:
        c = HTTPClient()
        url = fake_server.base_url + "/chat/completions"
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}]}'
        for _ in range(5):
            r = await c.request("POST", url, {"Content-Type": "application/json"}, body)
            assert r.status == 200 and b"[m] hello" in r.body
        pool = next(iter(c._pools.values()))
        assert len(pool.idle) == 1  # one connection, reused
        sbody = body[:-1] + b', "stream": true}'
        async with c.stream("POST", url, {"Content-Type": "application/json"}, sbody) as s:
            assert s.status == 200 and s.headers["content-type"].startswith("text/event-stream")
            lines = [ln async for ln in s.lines() if ln]
        assert lines[-1] == b"data: [DONE]" and len(lines) >= 4
        assert len(pool.idle) == 1  # streamed (chunked) response fully read: connection reused
        r = await c.request("POST", url, {"Content-Type": "application/json", "x-fake-fault": "503"}, body)
        assert r.status == 503
        await c.close()

    asyncio.run(main())


def test_stale_keepalive_connection_is_retried_once() -> None:
    async def main() -> None:
        served = 0

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal served
            await _read_request(r)
            served += 1
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
            w.close()  # closes the kept-alive connection behind the client's back

        async with raw_server(handler) as base:
            c = HTTPClient()
            assert (await c.request("GET", base + "/", {})).body == b"ok"
            await asyncio.sleep(0.05)
            assert (await c.request("GET", base + "/", {})).body == b"ok"
            assert served == 2
            await c.close()

    asyncio.run(main())


def test_close_delimited_body_and_errors() -> None:
    async def main() -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            req = await _read_request(r)
            if b"/reset" in req:
                w.transport.abort()
                return
            if b"/garbage" in req:
                w.write(b"NOT HTTP AT ALL\r\n\r\n")
            else:
                w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof")
            await w.drain()
            w.close()

        async with raw_server(handler) as base:
            c = HTTPClient()
            r = await c.request("POST", base + "/x", {}, b"{}")
            assert r.status == 200 and r.body == b"until-eof"
            with pytest.raises(HTTPError):
                await c.request("POST", base + "/reset", {}, b"{}")
            with pytest.raises(HTTPError):
                await c.request("POST", base + "/garbage", {}, b"{}")
            await c.close()
        with pytest.raises(HTTPError, match="cannot connect"):
            await HTTPClient().request("GET", base + "/", {})
        with pytest.raises(HTTPError, match="unsupported URL"):
            await HTTPClient().request("GET", "ftp://x/", {})

    asyncio.run(main())


def test_cancelled_request_closes_its_connection(fake_server: Any) -> None:
    async def main() -> None:
        c = HTTPClient()
        url = fake_server.base_url + "/chat/completions"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await c.request(
                    "POST", url, {"x-fake-fault": "timeout", "x-fake-delay": "5"}, b'{"model": "m"}'
                )
        pool = next(iter(c._pools.values()))
        assert not pool.idle  # the half-used connection was closed, not pooled
        r = await c.request(
            "POST", url, {}, b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
        )
        assert r.status == 200
        await c.close()

    asyncio.run(main())
