"""#11 item 7: slow and oversized clients (header size/count limits, head and body timeouts,
connection cap), enforced by the gateway's uvicorn protocol. Raw sockets on 127.0.0.1; the
timeouts are set to 0.5 s and only outcomes are asserted (a status line, a closed connection)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from conftest import FakeServer, StubRouter, loopback_config, run_gateway
from llmroute.gateway.config import ConfigError, parse_config

SAFETY_S = 15.0  # a socket read that waits this long fails the test instead of hanging it


@pytest.fixture(scope="module")
def gw(fake_server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cfg = loopback_config(
        fake_server.base_url,
        tmp_path_factory.mktemp("slow"),
        max_header_bytes=4096,
        header_timeout_s=0.5,
        body_timeout_s=0.5,
    )
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.split("//")[1].split("/")[0].split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(SAFETY_S)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def _head(extra: bytes = b"", path: bytes = b"/healthz") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra


def test_a_header_over_the_byte_limit_gets_431_and_the_connection_closes(gw: Any) -> None:
    with _connect(gw) as s:
        s.sendall(_head(b"X-Big: " + b"a" * 8000 + b"\r\n\r\n"))
        raw = _read_until_closed(s)
    assert _status(raw) == 431
    assert b"connection: close" in raw.lower()


def test_a_request_line_over_the_byte_limit_gets_431(gw: Any) -> None:
    with _connect(gw) as s:
        s.sendall(_head(b"\r\n", path=b"/healthz?q=" + b"a" * 8000))
        raw = _read_until_closed(s)
    assert _status(raw) == 431


def test_a_header_that_never_ends_is_refused_before_it_is_read_whole(gw: Any) -> None:
    sent = 0
    with _connect(gw) as s:
        s.sendall(_head(b"X-Big: "))
        try:
            while sent < 8 * 1024 * 1024:  # far past the limit: the server stops it long before
                s.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = _read_until_closed(s)
    assert raw == b"" or _status(raw) == 431  # the status when it arrived before a reset


def test_more_header_fields_than_the_count_limit_get_431(gw: Any) -> None:
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(150))  # ~1.5 KB: under the byte limit
    with _connect(gw) as s:
        s.sendall(_head(fields + b"\r\n"))
        raw = _read_until_closed(s)
    assert _status(raw) == 431


@pytest.mark.parametrize("extra,status", [(98, 200), (99, 431)])
def test_the_count_limit_is_exact(gw: Any, extra: int, status: int) -> None:
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(extra))  # + Host + Connection
    with _connect(gw) as s:
        s.sendall(_head(fields + b"Connection: close\r\n\r\n"))
        raw = _read_until_closed(s)
    assert _status(raw) == status  # 100 fields are served, 101 are not


def test_a_head_that_stalls_gets_408_and_the_connection_closes(gw: Any) -> None:
    with _connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        raw = _read_until_closed(s)
    assert _status(raw) == 408


def test_a_connection_that_sends_nothing_is_closed(gw: Any) -> None:
    with _connect(gw) as s:
        assert _read_until_closed(s) == b""


def test_a_kept_alive_connection_whose_next_head_stalls_gets_408(gw: Any) -> None:
    with _connect(gw) as s:
        s.sendall(_head(b"\r\n"))
        first = s.recv(65536)
        assert _status(first) == 200
        s.sendall(_head(b"X-Half: "))
        raw = _read_until_closed(s)
    assert _status(raw) == 408


def test_a_body_that_stalls_gets_408(gw: Any) -> None:
    with _connect(gw) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"model": '
        )
        raw = _read_until_closed(s)
    assert _status(raw) == 408


def test_ordinary_requests_still_work(gw: Any) -> None:
    client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0)
    r = client.chat.completions.create(
        model="llmroute/auto",
        messages=[{"role": "user", "content": "hello " * 200}],
        extra_headers={f"x-f{i}": "1" for i in range(40)},
    )
    assert r.choices[0].message.content


def test_connections_past_the_cap_get_503(fake_server: FakeServer, tmp_path: Any) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path, max_connections=3, header_timeout_s=60)
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        held = [_connect(url) for _ in range(3)]
        try:
            with _connect(url) as s:
                raw = _read_until_closed(s)
            assert _status(raw) == 503
        finally:
            for h in held:
                h.close()
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=3)
        assert client.models.list().data  # once the held ones close, new connections are served


@pytest.mark.parametrize(
    "field,value",
    [("max_header_bytes", 10), ("max_header_count", 0), ("header_timeout_s", 0), ("body_timeout_s", -1)],
)
def test_limits_are_validated(field: str, value: float) -> None:
    with pytest.raises((ConfigError, ValueError), match=field):
        parse_config({"server": {field: value}, "models": [{"name": "m", "base_url": "http://x"}]})
