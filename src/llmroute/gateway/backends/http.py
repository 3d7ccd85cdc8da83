"""A lean pooled HTTP/1.1 client for upstream calls (asyncio protocol + the httptools parser).

Why a hand-written client and not aiohttp or httpx: upstream calls are the gateway's hot path.
Measured on the reference 2-core box with `benchmarks/upstream_client.py` (one process, 16
concurrent callers, a loopback server answering a 600-byte JSON body; CPU time of the client
process per request): this client ~19 us, aiohttp's ClientSession ~90 us, httpx.AsyncClient
~1,300 us (under heavy load on the box all three grow, the ratios stay). At the gateway's
5,000 req/s bar (200 us of CPU per request for everything) aiohttp would take almost half of
it, httpx several times all of it. The price is this module: what httpx gives for free is
implemented here and tested (tests/security/test_upstream_http.py): environment proxies, a
private CA bundle, decoded response bodies. Not supported (none is needed by the upstream APIs
the gateway speaks to): HTTP/2, SOCKS and https:// proxies, proxy auth other than Basic, zstd.
It speaks only what upstream LLM APIs need: one request per connection at a time, request
bodies sent with Content-Length, responses with Content-Length, chunked encoding or
close-delimited.

    client = HTTPClient(limit_per_origin=1024)          # created at gateway startup, not global
    resp = await client.request("POST", url, headers, body)   # -> Response(status, headers, body)
    async with client.stream("POST", url, headers, body) as s:  # s.status, s.headers
        async for line in s.lines(): ...                   # or s.line_batches(), s.read()
    model_client = client.with_options(ssl_context=tls_context("ca.pem"))  # same pools
    await client.close()

- Proxies (`proxies.ProxySettings`; by default those of the environment, read when the client
  is made: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY, loopback never proxied): an http://
  upstream through a proxy gets an absolute-form request line (`POST http://host/path`), an
  https:// one a CONNECT tunnel with TLS to the upstream inside it. Proxy credentials go in
  `Proxy-Authorization` only; no message names the proxy.
- TLS: the system's trusted CAs (OpenSSL's defaults, so SSL_CERT_FILE / SSL_CERT_DIR apply), plus
  a private CA bundle with `tls_context(ca_bundle)`. Certificates are always verified.
- Response bodies with Content-Encoding gzip, deflate or br (when the `brotli` package is
  installed) are decoded, streamed bodies as they arrive; the client sends `Accept-Encoding` with
  exactly those (unless the caller's headers carry one). Another coding, or a corrupt body, is an
  `HTTPError` that names the coding.

Cancellation (timeouts, client disconnects) closes the connection in use; it is never reused.
A reused keep-alive connection that dies before any response byte is retried once on a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import ssl as _ssl
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httptools

from llmroute.gateway.backends.proxies import Proxy, ProxySettings

__all__ = [
    "HTTPClient",
    "HTTPError",
    "Response",
    "StreamResponse",
    "accept_encoding",
    "error_reason",
    "join_url",
    "public_url",
    "tls_context",
]

#: X.509 verify codes of a certificate issued for another name (their messages name the host)
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def error_reason(e: BaseException | None) -> str:
    """Why an OS-level call failed, without host or port (asyncio's messages name the address):
    the errno's text, else the exception's class name."""
    if isinstance(e, _ssl.SSLCertVerificationError):
        code = getattr(e, "verify_code", None)
        msg = getattr(e, "verify_message", None) or "unknown reason"
        if code in _NAME_MISMATCH:
            msg = "the certificate is for another host name"
        return (
            f"TLS certificate verification failed: {msg}; if the upstream uses a private CA, "
            "give its certificate as ca_bundle (per model or under server)"
        )
    if isinstance(e, _ssl.SSLError):
        return f"TLS error: {getattr(e, 'reason', None) or type(e).__name__}"
    errno = getattr(e, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return type(e).__name__


def tls_context(ca_bundle: str | None = None) -> _ssl.SSLContext:
    """The TLS context for https upstreams: the system's trusted CAs, plus the PEM certificates of
    `ca_bundle` (a private CA, or a self-signed upstream's own certificate). Hostnames and
    certificates are always verified. Raises OSError / ssl.SSLError for an unreadable bundle."""
    ctx = _ssl.create_default_context()
    if ca_bundle:
        ctx.load_verify_locations(cafile=ca_bundle)
    return ctx


def accept_encoding() -> str:
    """The `Accept-Encoding` this client sends: `gzip, deflate`, and `br` when `brotli` is installed."""
    try:
        import brotli  # noqa: F401
    except ImportError:
        return "gzip, deflate"
    return "gzip, deflate, br"


class _Zlib:
    """gzip / deflate decoding; `deflate` also accepts a raw deflate stream (as httpx does)."""

    __slots__ = ("d", "fed", "name", "sniff")

    def __init__(self, name: str) -> None:
        self.name = name
        self.d = zlib.decompressobj(zlib.MAX_WBITS | 16 if name == "gzip" else zlib.MAX_WBITS)
        self.sniff = name == "deflate"
        self.fed = False

    def decompress(self, data: bytes) -> bytes:
        self.fed = True
        if self.sniff:
            self.sniff = False
            try:
                return self.d.decompress(data)
            except zlib.error:
                self.d = zlib.decompressobj(-zlib.MAX_WBITS)
        return self.d.decompress(data)

    def flush(self) -> bytes:
        out = self.d.flush()
        if self.fed and not self.d.eof:
            raise zlib.error("truncated")
        return out


class _Brotli:
    __slots__ = ("d", "fed", "name")

    def __init__(self) -> None:
        import brotli

        self.name = "br"
        self.d = brotli.Decompressor()
        self.fed = False

    def decompress(self, data: bytes) -> bytes:
        self.fed = True
        return bytes(self.d.process(data))

    def flush(self) -> bytes:
        if self.fed and not self.d.is_finished():
            raise ValueError("truncated")
        return b""


class _Chain:
    """Several codings (`Content-Encoding: gzip, br`): undone last-applied first."""

    __slots__ = ("decoders", "name")

    def __init__(self, decoders: list[Any], name: str) -> None:
        self.decoders = decoders
        self.name = name

    def decompress(self, data: bytes) -> bytes:
        for d in self.decoders:
            data = d.decompress(data)
        return data

    def flush(self) -> bytes:
        out = b""
        for d in self.decoders:
            out = d.decompress(out) + d.flush() if out else d.flush()
        return out


class _Discard:
    """Stands in for a decoder that failed: the rest of the body is dropped."""

    name = "discarded"

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return b""

    @staticmethod
    def flush() -> bytes:
        return b""


def _decoder(value: str) -> Any:
    """The decoder of a Content-Encoding header value (None for identity); HTTPError for a coding
    this client cannot decode."""
    names = [n for n in (x.strip().lower() for x in value.split(",")) if n and n != "identity"]
    if not names:
        return None
    out: list[Any] = []
    for n in reversed(names):
        if n in ("gzip", "x-gzip"):
            out.append(_Zlib("gzip"))
        elif n == "deflate":
            out.append(_Zlib("deflate"))
        elif n == "br":
            try:
                out.append(_Brotli())
            except ImportError:
                raise HTTPError(
                    "upstream sent Content-Encoding 'br' but the brotli package is not installed "
                    "(pip install brotli)"
                ) from None
        else:
            raise HTTPError(
                f"upstream sent Content-Encoding {n[:24]!r}, which the gateway cannot decode "
                f"(it accepts {accept_encoding()})"
            )
    return out[0] if len(out) == 1 else _Chain(out, value.strip()[:40])


def join_url(base: str, path: str) -> str:
    """`base` with `path` appended to its path, before any query string: `join_url(
    "https://h/v1?api-version=2024", "/chat/completions")` -> `"https://h/v1/chat/completions?api-version=2024"`.
    A trailing slash of the base path is dropped first; a fragment is dropped."""
    u = urlsplit(base)
    joined = u.path.rstrip("/") + "/" + path.lstrip("/")
    return urlunsplit((u.scheme, u.netloc, joined, u.query, ""))


def public_url(url: str | None) -> str | None:
    """What a client or a trace may see of an upstream URL: `scheme://host[:port]/path`, without
    userinfo (user:password), query string (tokens) or fragment. None stays None."""
    if not url:
        return url
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = u.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((u.scheme, netloc, u.path, "", ""))


class HTTPError(OSError):
    """The connection failed or the response was malformed."""


@dataclass
class Response:
    """A complete response."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Conn(asyncio.Protocol):
    """One upstream connection; parses responses with httptools."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.got_bytes = False
        self.headers_done: asyncio.Future[None] | None = None
        self.complete: asyncio.Future[None] | None = None
        self.streaming = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.chunk_waiter: asyncio.Future[None] | None = None
        self.finished = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.decoder: Any = None  # set when the response has a Content-Encoding

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HTTPError(f"malformed upstream response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.finished:
            # close-delimited bodies end here
            if (
                self.headers_done is not None
                and self.headers_done.done()
                and self.status
                and exc is None
                and self.error is None
                and not self.pool.framed(self)
            ):
                self.on_message_complete()
            else:
                why = f" ({error_reason(exc)})" if exc else ""
                self._fail(HTTPError("upstream closed the connection" + why))
        self.pool.discard(self)

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        enc = self.headers.get("content-encoding")
        if enc is not None:
            try:
                self.decoder = _decoder(enc)
            except HTTPError as e:
                self.decoder = _Discard
                self._fail(e)
                self.close()
                return
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        d = self.decoder
        if d is not None:
            try:
                body = d.decompress(body)
            except Exception:
                self._bad_body(d)
                return
            if not body:
                return
        if self.streaming:
            self.chunks.append(body)
            w = self.chunk_waiter
            if w is not None and not w.done():
                w.set_result(None)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.error is not None:
            return
        d = self.decoder
        if d is not None:
            self.decoder = None
            try:
                tail = d.flush()
            except Exception:
                self._bad_body(d)
                return
            if tail:
                self.on_body(tail)
        self.finished = True
        for f in (self.headers_done, self.complete, self.chunk_waiter):
            if f is not None and not f.done():
                f.set_result(None)

    # -- helpers --
    def _bad_body(self, decoder: Any) -> None:
        self.decoder = _Discard
        self._fail(HTTPError(f"upstream sent a corrupt or truncated {decoder.name} body"))
        self.close()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:  # the first cause is the one reported
            self.error = exc
        for f in (self.headers_done, self.complete, self.chunk_waiter):
            if f is not None and not f.done():
                f.set_exception(exc)
                f.exception()  # mark retrieved: callers may have gone away

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def send(self, data: bytes, streaming: bool) -> None:
        loop = asyncio.get_running_loop()
        self._reset()
        self.streaming = streaming
        self.headers_done = loop.create_future()
        self.complete = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT; `head` resolves to its status code."""

    def __init__(self) -> None:
        self.buf = b""
        self.head: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            parts = self.buf[:end].split(b" ", 2)
            if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
                self.head.set_result(int(parts[1]))
            else:
                self.head.set_exception(HTTPError("the proxy sent a malformed answer to CONNECT"))
        elif len(self.buf) > 65536:
            self.head.set_exception(HTTPError("the proxy sent an oversized answer to CONNECT"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            why = f" ({error_reason(exc)})" if exc else ""
            self.head.set_exception(HTTPError("the proxy closed the connection during CONNECT" + why))


def _tunnel_refused(status: int) -> str:
    if status == 407:
        return "the proxy requires authentication (407): put user:password in the proxy URL"
    return f"the proxy refused the tunnel to the upstream (HTTP {status})"


class _Pool:
    """Idle keep-alive connections of one origin (through one proxy, with one TLS context)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl: _ssl.SSLContext | None,
        limit: int,
        proxy: Proxy | None = None,
        accept: str = "gzip, deflate",
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.proxy = proxy
        self.idle: collections.deque[_Conn] = collections.deque()
        self.sem = asyncio.Semaphore(limit)
        name = f"[{host}]" if ":" in host else host  # IPv6 literal
        authority = name if port == (443 if ssl else 80) else f"{name}:{port}"
        self.host_header = authority
        # the request line's target prefix: absolute-form for plain HTTP through a proxy
        self.target_prefix = b"http://" + authority.encode() if proxy and not ssl else b""
        auth = f"\r\nProxy-Authorization: {proxy.authorization}" if proxy and proxy.authorization else ""
        # after "Host: " in every request head (bytes, built once)
        self.host_line = authority.encode() + (auth.encode("latin-1") if not ssl else b"")
        self.accept_line = f"\r\nAccept-Encoding: {accept}".encode()  # after the caller's headers
        self.connect_request = (
            f"CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}{auth}\r\n\r\n".encode("latin-1")
            if proxy and ssl
            else None
        )

    @staticmethod
    def framed(conn: _Conn) -> bool:
        h = conn.headers
        return "content-length" in h or "chunked" in h.get("transfer-encoding", "")

    async def acquire(self) -> _Conn:
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                c.reused = True
                return c
        loop = asyncio.get_running_loop()
        if self.proxy is not None:
            return await self._connect_via_proxy(loop, self.proxy)
        try:
            _, conn = await loop.create_connection(
                lambda: _Conn(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
        except OSError as e:
            # no host:port in the message: it reaches clients and traces (the caller names the model)
            raise HTTPError(f"cannot connect: {error_reason(e)}") from None
        return conn

    async def _connect_via_proxy(self, loop: asyncio.AbstractEventLoop, proxy: Proxy) -> _Conn:
        """A connection to the proxy: used as is for plain HTTP, else a CONNECT tunnel with TLS to
        the upstream inside it."""
        try:
            if self.connect_request is None:
                _, conn = await loop.create_connection(lambda: _Conn(self), proxy.host, proxy.port)
                return conn
            transport, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
        except OSError as e:
            raise HTTPError(f"cannot connect to the proxy: {error_reason(e)}") from None
        try:
            transport.write(self.connect_request)
            status = await tunnel.head
            if status != 200:
                raise HTTPError(_tunnel_refused(status))
            conn = _Conn(self)
            assert self.ssl is not None
            tls = await loop.start_tls(transport, conn, self.ssl, server_hostname=self.host)
        except HTTPError:
            transport.abort()
            raise
        except OSError as e:
            transport.abort()
            raise HTTPError(f"TLS through the proxy failed: {error_reason(e)}") from None
        except BaseException:
            transport.abort()
            raise
        if tls is None:
            raise HTTPError("the proxy closed the connection during the TLS handshake")
        conn.connection_made(tls)
        return conn

    def release(self, conn: _Conn) -> None:
        if conn.closed or not conn.finished or not conn.keep_alive:
            conn.close()
            return
        self.idle.append(conn)

    def discard(self, conn: _Conn) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class StreamResponse:
    """A response whose body arrives incrementally (see `HTTPClient.stream`)."""

    def __init__(self, client: HTTPClient, pool: _Pool, conn: _Conn) -> None:
        self._client = client
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive."""
        c = self._conn
        loop = asyncio.get_running_loop()
        while True:
            while c.chunks:
                yield c.chunks.popleft()
            if c.error is not None:
                raise c.error
            if c.finished:
                return
            c.chunk_waiter = loop.create_future()
            await c.chunk_waiter

    async def line_batches(self) -> AsyncIterator[list[bytes]]:
        """Lists of complete body lines (without line endings), one list per burst of arrived data,
        so a caller can forward what arrived together in one write; a last unterminated line too."""
        c = self._conn
        loop = asyncio.get_running_loop()
        buf = b""
        while True:
            if c.chunks:
                buf += b"".join(c.chunks)
                c.chunks.clear()
                if b"\n" in buf:
                    *full, buf = buf.split(b"\n")
                    yield [line.rstrip(b"\r") for line in full]
                continue
            if c.error is not None:
                raise c.error
            if c.finished:
                break
            c.chunk_waiter = loop.create_future()
            await c.chunk_waiter
        if buf:
            yield [buf]

    async def lines(self) -> AsyncIterator[bytes]:
        """Body lines (without the line ending) as they arrive; a last unterminated line too."""
        buf = b""
        async for chunk in self.chunks():
            buf += chunk
            if b"\n" in buf:
                *full, buf = buf.split(b"\n")
                for line in full:
                    yield line.rstrip(b"\r")
        if buf:
            yield buf

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        return b"".join([c async for c in self.chunks()])

    def release(self, ok: bool) -> None:
        """Return the connection to the pool if the body was read completely, else close it."""
        if self._conn is None:  # type: ignore[comparison-overlap]
            return
        if ok and self._conn.finished:
            self._pool.release(self._conn)
        else:
            self._conn.close()
        self._pool.sem.release()
        self._conn = None  # type: ignore[assignment]


class _StreamCtx:
    def __init__(self, client: HTTPClient, args: tuple[Any, ...]) -> None:
        self.client = client
        self.args = args
        self.resp: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        self.resp = await self.client._open(*self.args)
        return self.resp

    async def __aexit__(self, et: Any, e: Any, tb: Any) -> None:
        if self.resp is not None:
            self.resp.release(et is None)


class HTTPClient:
    """Pooled upstream HTTP/1.1 client (one pool per origin, proxy and TLS context). See the module
    docstring.

    `ssl_context`: for https upstreams (default: `tls_context()`, the system's CAs); `proxy`:
    which proxy each upstream goes through (default: `ProxySettings.from_env()`, read now;
    ValueError names a malformed variable)."""

    def __init__(
        self,
        limit_per_origin: int = 1024,
        ssl_context: _ssl.SSLContext | None = None,
        proxy: ProxySettings | None = None,
    ) -> None:
        self.limit = limit_per_origin
        self._ssl = ssl_context
        self._proxy = proxy if proxy is not None else ProxySettings.from_env()
        self._accept = accept_encoding()
        self._pools: dict[tuple[Any, ...], _Pool] = {}
        self._targets: dict[str, tuple[_Pool, bytes]] = {}

    def with_options(
        self, *, ssl_context: _ssl.SSLContext | None = None, proxy: ProxySettings | None = None
    ) -> HTTPClient:
        """A client that shares this one's connection pools (and is closed with it) but uses
        `ssl_context` and/or `proxy` instead of this client's own (None: keep this client's)."""
        c = HTTPClient.__new__(HTTPClient)
        c.limit = self.limit
        c._ssl = ssl_context if ssl_context is not None else self._ssl
        c._proxy = proxy if proxy is not None else self._proxy
        c._accept = self._accept
        c._pools = self._pools
        c._targets = {}
        return c

    def _target(self, url: str) -> tuple[_Pool, bytes]:
        t = self._targets.get(url)
        if t is not None:
            return t
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise HTTPError(f"unsupported URL {public_url(url)!r}: need http:// or https://")
        port = u.port or (443 if u.scheme == "https" else 80)
        ctx = None
        if u.scheme == "https":
            if self._ssl is None:
                self._ssl = tls_context()
            ctx = self._ssl
        proxy = self._proxy.select(u.scheme, u.hostname, port)
        key = (u.scheme, u.hostname, port, id(ctx) if ctx is not None else None, proxy)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(u.hostname, port, ctx, self.limit, proxy, self._accept)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        t = self._targets[url] = (pool, pool.target_prefix + path.encode())
        return t

    @staticmethod
    def _encode(method: str, path: bytes, pool: _Pool, headers: dict[str, str], body: bytes) -> bytes:
        head = [
            f"{method} ".encode()
            + path
            + b" HTTP/1.1\r\nHost: "
            + pool.host_line
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
        ]
        for k, v in headers.items():
            head.append(f"{k}: {v}".encode("latin-1"))
        ae = b"" if "Accept-Encoding" in headers or "accept-encoding" in headers else pool.accept_line
        return b"\r\n".join(head) + ae + b"\r\n\r\n" + body

    async def _roundtrip(
        self, method: str, url: str, headers: dict[str, str], body: bytes, streaming: bool
    ) -> tuple[_Pool, _Conn]:
        pool, path = self._target(url)
        data = self._encode(method, path, pool, headers, body)
        for attempt in (0, 1):
            conn = await pool.acquire()
            try:
                conn.send(data, streaming)
                assert conn.headers_done is not None
                await conn.headers_done
                if conn.status == 407 and pool.proxy is not None:
                    raise HTTPError(_tunnel_refused(407))  # the proxy's answer, not the upstream's
            except HTTPError:
                conn.close()
                if attempt == 0 and conn.reused and not conn.got_bytes:
                    continue  # stale keep-alive connection: retry once on a fresh one
                raise
            except BaseException:
                conn.close()
                raise
            return pool, conn
        raise AssertionError("unreachable")

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes = b"") -> Response:
        """Send one request and read the whole response."""
        pool, _ = self._target(url)
        async with pool.sem:
            pool, conn = await self._roundtrip(method, url, headers, body, False)
            try:
                if not conn.finished:
                    assert conn.complete is not None
                    await conn.complete
            except BaseException:
                conn.close()
                raise
            resp = Response(conn.status, conn.headers, b"".join(conn.body))
            pool.release(conn)
            return resp

    async def _open(self, method: str, url: str, headers: dict[str, str], body: bytes) -> StreamResponse:
        pool, _ = self._target(url)
        await pool.sem.acquire()
        try:
            pool, conn = await self._roundtrip(method, url, headers, body, True)
        except BaseException:
            pool.sem.release()
            raise
        return StreamResponse(self, pool, conn)

    def stream(self, method: str, url: str, headers: dict[str, str], body: bytes = b"") -> _StreamCtx:
        """`async with client.stream(...) as resp:` read `resp.lines()` / `resp.chunks()`."""
        return _StreamCtx(self, (method, url, headers, body))

    async def close(self) -> None:
        """Close every pooled connection."""
        for p in self._pools.values():
            p.close()
        self._pools.clear()
        self._targets.clear()
