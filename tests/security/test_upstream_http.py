"""#11 item 10: the upstream HTTP client on par with httpx: environment proxies (HTTP absolute-form and
HTTPS CONNECT tunnels, NO_PROXY, proxy credentials), a private CA bundle (global and per model), and
gzip / deflate / br response bodies, streamed and not.

Real servers on 127.0.0.1, started here: a forward proxy that records what passes through it and
resolves `*.test` names to 127.0.0.1 (so the gateway itself never resolves them: only the proxy can
reach those upstreams), a TLS upstream with a CA made by `trustme` for this test run, and an
upstream that answers with each content coding. The gateway is driven by the official openai client
(its own httpx transport ignores the environment's proxies: `trust_env=False`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
import zlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import brotli
import openai
import orjson
import pytest
import trustme
from aiohttp import web

from conftest import FakeServer, run_gateway
from llmroute.gateway.backends.http import HTTPClient, HTTPError, accept_encoding, tls_context
from llmroute.gateway.backends.proxies import ProxySettings, parse_proxy_url
from llmroute.gateway.config import ConfigError, load_config, parse_config

PROXY_USER, PROXY_PASSWORD = "alice", "pr0xy-s3cret-pw"
ANSWER_PIECES = [f"piece {i} of a compressible answer, repeated words words words; " for i in range(40)]
ANSWER = "".join(ANSWER_PIECES)


# ---- a loop in a thread, for the servers ---------------------------------------------------------
class LoopThread:
    """An event loop running in a daemon thread; `run(coro)` runs a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-servers")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def servers_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


# ---- a forward proxy that records what passes through it -----------------------------------------
def _resolve(host: str) -> str:
    return "127.0.0.1" if host.endswith(".test") else host


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    with contextlib.suppress(Exception):
        w.close()


class ForwardProxy:
    """HTTP forward proxy: CONNECT tunnels and absolute-form requests (one request per connection:
    it sends `Connection: close` upstream). `seen`: one dict per request or tunnel (`line`, lower-case
    `headers`). With `require_auth`, other credentials get a 407."""

    def __init__(self, require_auth: str | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.require_auth = require_auth
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    @property
    def url(self) -> str:
        return f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{self.port}"

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        line = lines[0]
        headers = {}
        for h in lines[1:]:
            if ":" in h:
                k, v = h.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        self.seen.append({"line": line, "headers": headers})
        if self.require_auth is not None and headers.get("proxy-authorization") != self.require_auth:
            w.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
            w.close()
            return
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            ur, uw = await asyncio.open_connection(_resolve(host), int(port))
            w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await w.drain()
            await asyncio.gather(_pipe(r, uw), _pipe(ur, w))
            return
        # absolute-form: http://host:port/path
        rest = target.split("://", 1)[1]
        authority, _, path = rest.partition("/")
        host, _, port = authority.partition(":")
        n = int(headers.get("content-length", "0"))
        body = await r.readexactly(n) if n else b""
        out = [f"{method} /{path} HTTP/1.1"]
        for h in lines[1:]:
            k = h.split(":", 1)[0].strip().lower()
            if h and k not in ("proxy-authorization", "connection"):
                out.append(h)
        out.append("Connection: close")
        ur, uw = await asyncio.open_connection(_resolve(host), int(port or 80))
        uw.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
        await uw.drain()
        await _pipe(ur, w)
        uw.close()


@contextlib.contextmanager
def forward_proxy(lt: LoopThread, require_auth: str | None = None) -> Iterator[ForwardProxy]:
    p = ForwardProxy(require_auth)
    lt.run(p.start())
    try:
        yield p
    finally:
        lt.run(p.stop())


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---- an OpenAI-compatible upstream that answers with a content coding -----------------------------
def _compressor(coding: str) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """(compress one event, flushing it; finish) for a coding name (applied left to right)."""
    if coding in ("gzip", "deflate", "deflate-raw"):
        wbits = {"gzip": 31, "deflate": 15, "deflate-raw": -15}[coding]
        c = zlib.compressobj(wbits=wbits)
        return (lambda b: c.compress(b) + c.flush(zlib.Z_SYNC_FLUSH)), c.flush
    if coding == "br":
        bc = brotli.Compressor()
        return (lambda b: bc.process(b) + bc.flush()), bc.finish
    raise AssertionError(coding)


def _encode_all(codings: list[str], data: bytes) -> bytes:
    for c in codings:
        step, finish = _compressor(c)
        data = step(data) + finish()
    return data


class CodingUpstream:
    """`/v1/chat/completions` whose answer uses the coding named by the upstream model id:
    `gzip`, `deflate` (zlib), `deflate-raw`, `br`, `gzip+br` (both, in that order), `identity`,
    `zstd` (not decodable), `corrupt-gzip` or `truncated-gzip`. Streams are compressed event by event (each event
    flushed and split over two writes). `seen`: the request headers."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.seen: list[dict[str, str]] = []
        self.accept_encodings: list[list[str]] = []  # every Accept-Encoding field of each request
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        self.accept_encodings.append(request.headers.getall("Accept-Encoding", []))
        body = orjson.loads(await request.read())
        coding = str(body["model"])
        header = coding.replace("+", ", ").replace("deflate-raw", "deflate").split("-gzip")[0]
        header = "gzip" if coding.endswith("-gzip") else header
        codings = (
            [] if coding in ("identity", "zstd", "corrupt-gzip", "truncated-gzip") else coding.split("+")
        )
        if not body.get("stream"):
            data = orjson.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": coding,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ANSWER},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 60, "total_tokens": 65},
                }
            )
            if coding in ("zstd", "corrupt-gzip"):
                data = b"\x28\xb5\x2f\xfd not really compressed"
            elif coding == "truncated-gzip":
                data = _encode_all(["gzip"], data)[:-12]  # the deflate end and the gzip trailer cut off
            else:
                data = _encode_all(codings, data)
            headers = {"Content-Type": "application/json"}
            if coding != "identity":
                headers["Content-Encoding"] = header
            return web.Response(body=data, headers=headers)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": header})
        await resp.prepare(request)
        events = [
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": coding,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            for piece in ANSWER_PIECES
        ]
        events.append(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": coding,
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 60, "total_tokens": 65},
            }
        )
        raw = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        assert len(codings) == 1, "streams use one coding"
        step, finish = _compressor(codings[0])
        for ev in raw:
            data = step(ev)
            half = len(data) // 2
            await resp.write(data[:half])
            await resp.write(data[half:])
        await resp.write(finish())
        await resp.write_eof()
        return resp


@contextlib.contextmanager
def coding_upstream(lt: LoopThread, ssl_context: ssl.SSLContext | None = None) -> Iterator[CodingUpstream]:
    u = CodingUpstream(ssl_context)
    lt.run(u.start())
    try:
        yield u
    finally:
        lt.run(u.stop())


# ---- helpers ----------------------------------------------------------------------------------------
def _config(tmp_path: Path, models: list[dict[str, Any]], **server: Any) -> dict[str, Any]:
    for m in models:
        m.setdefault("timeout_s", 10)
    return {
        "server": {"request_timeout_s": 20, "retries": 0, "max_fallbacks": 0, **server},
        "models": models,
        "store": {"url": "memory://"},
    }


def _client(gw: str) -> openai.OpenAI:
    # the test's own client must not go through the environment's proxy
    return openai.OpenAI(
        base_url=gw, api_key="unused", max_retries=0, http_client=openai.DefaultHttpxClient(trust_env=False)
    )


def _chat(gw: str, model: str, stream: bool = False) -> str:
    c = _client(gw)
    msgs: Any = [{"role": "user", "content": "hello"}]
    if not stream:
        return c.chat.completions.create(model=model, messages=msgs).choices[0].message.content or ""
    out = []
    for ch in c.chat.completions.create(model=model, messages=msgs, stream=True):
        if ch.choices and ch.choices[0].delta.content:
            out.append(ch.choices[0].delta.content)
    return "".join(out)


def _clear_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A private CA, its PEM file, and a server TLS context for `upstream.test` and 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert("upstream.test", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    path = tmp_path_factory.mktemp("pki") / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return {"ca_file": str(path), "server_ctx": ctx}


# ---- units: which proxy -------------------------------------------------------------------------
def test_env_proxies_by_scheme_lowercase_wins_and_cgi_ignores_http_proxy() -> None:
    env = {"HTTPS_PROXY": "http://p-upper:1", "https_proxy": "http://p-lower:2", "HTTP_PROXY": "p-http:3"}
    s = ProxySettings.from_env(env)
    assert s.select("https", "api.example.com", 443) == parse_proxy_url("http://p-lower:2")
    assert s.select("http", "api.example.com", 80) == parse_proxy_url("http://p-http:3")  # no scheme: http
    # an empty lowercase variable switches the uppercase one off
    assert ProxySettings.from_env({"HTTPS_PROXY": "http://p:1", "https_proxy": ""}).https is None
    # ALL_PROXY serves a scheme without its own variable
    s = ProxySettings.from_env({"ALL_PROXY": "http://all:9", "HTTPS_PROXY": "http://s:1"})
    assert s.select("http", "h.example", 80) == parse_proxy_url("http://all:9")
    assert s.select("https", "h.example", 443) == parse_proxy_url("http://s:1")
    # CGI: HTTP_PROXY may come from a client's Proxy: header ("httpoxy"), lowercase still counts
    assert ProxySettings.from_env({"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"}).http is None
    cgi = {"http_proxy": "http://ok:1", "REQUEST_METHOD": "GET"}
    assert ProxySettings.from_env(cgi).http == parse_proxy_url("http://ok:1")
    assert ProxySettings.from_env({}).select("https", "api.example.com", 443) is None


def test_no_proxy_matching() -> None:
    env = {
        "HTTPS_PROXY": "http://proxy.corp:3128",
        "HTTP_PROXY": "http://proxy.corp:3128",
        "NO_PROXY": "internal.example, .corp.example,*.svc.cluster  ,10.0.0.0/8, 192.168.1.7, "
        "api.special:8443, [fd00::1], fd10::/16",
    }
    s = ProxySettings.from_env(env)

    def direct(host: str, port: int = 443, scheme: str = "https") -> bool:
        return s.select(scheme, host, port) is None

    # a name matches itself and its subdomains, on a label boundary, case-insensitively
    assert direct("internal.example") and direct("a.b.internal.example") and direct("INTERNAL.example.")
    assert not direct("notinternal.example") and not direct("internal.example.com")
    # a leading dot or *. : the domain itself too
    assert direct("corp.example") and direct("x.corp.example") and not direct("xcorp.example")
    assert direct("svc.cluster") and direct("a.svc.cluster")
    # IPs and CIDR blocks, v4 and v6
    assert direct("10.2.3.4") and not direct("11.2.3.4")
    assert direct("192.168.1.7") and not direct("192.168.1.8")
    assert direct("fd00::1") and direct("[fd00::1]") and not direct("fd00::2")
    assert direct("fd10::5") and not direct("fd11::5")
    # host:port: only that port
    assert direct("api.special", 8443) and not direct("api.special", 443)
    # anything else goes through the proxy, both schemes
    assert not direct("api.openai.com") and not direct("api.openai.com", 80, "http")
    # * bypasses everything; lowercase no_proxy wins
    assert ProxySettings.from_env({**env, "NO_PROXY": "*"}).select("https", "api.openai.com", 443) is None
    low = ProxySettings.from_env({**env, "no_proxy": "api.openai.com"})
    assert low.select("https", "api.openai.com", 443) is None
    assert low.select("https", "internal.example", 443) is not None  # NO_PROXY (upper) is overridden


def test_loopback_is_never_proxied_from_the_environment_but_an_explicit_proxy_serves_it() -> None:
    s = ProxySettings.from_env({"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1"})
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "api.localhost"):
        assert s.select("http", host, 8080) is None, host
    assert s.select("http", "localhost.example", 80) is not None  # not a loopback name
    explicit = ProxySettings.from_option("http://p:1")
    assert explicit.select("http", "127.0.0.1", 8080) == parse_proxy_url("http://p:1")
    assert ProxySettings.from_option("none").select("https", "api.openai.com", 443) is None


def test_proxy_credentials_become_basic_auth_and_never_show() -> None:
    p = parse_proxy_url("http://al%40ice:p%3Ass@proxy.corp:3128")
    assert (p.host, p.port) == ("proxy.corp", 3128)
    assert p.authorization == _basic("al@ice", "p:ss")
    assert "p:ss" not in repr(p) and "p%3Ass" not in repr(p) and "cHw6c3M" not in repr(p)
    assert "pr0xy" not in repr(ProxySettings.from_option("http://u:pr0xy@h:1"))
    for bad in ("socks5://u:pr0xy-pw@h:1080", "https://u:pr0xy-pw@h:443", "http://u:pr0xy-pw@:1"):
        with pytest.raises(ValueError) as ei:
            parse_proxy_url(bad, "HTTPS_PROXY")
        assert "pr0xy-pw" not in str(ei.value) and "HTTPS_PROXY" in str(ei.value)


def test_proxy_and_ca_bundle_config_errors(tmp_path: Path, pki: dict[str, Any]) -> None:
    base = {"models": [{"name": "m", "base_url": "https://api.example.com/v1"}]}
    with pytest.raises(ConfigError) as ei:
        parse_config({**base, "server": {"proxy": "socks5://u:pr0xy-pw@h:1080"}})
    assert "server.proxy" in str(ei.value) and "socks5" in str(ei.value) and "pr0xy-pw" not in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        parse_config({"models": [{**base["models"][0], "proxy": "ftp://h"}]})
    assert "models.0.proxy" in str(ei.value)
    assert parse_config({**base, "server": {"proxy": "none"}}).server.proxy == "none"
    # a missing bundle names the field and the file
    with pytest.raises(ConfigError) as ei:
        parse_config({**base, "server": {"ca_bundle": str(tmp_path / "nope.pem")}})
    assert (
        "server.ca_bundle" in str(ei.value) and "nope.pem" in str(ei.value) and "not found" in str(ei.value)
    )
    with pytest.raises(ConfigError) as ei:
        parse_config({"models": [{**base["models"][0], "ca_bundle": str(tmp_path / "gone.pem")}]})
    assert "models[0].ca_bundle" in str(ei.value) and "not found" in str(ei.value)
    # a file without certificates
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as ei:
        parse_config({**base, "server": {"ca_bundle": str(junk)}})
    assert "no usable PEM certificate" in str(ei.value)
    # a relative path is resolved against the config file's folder
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(Path(pki["ca_file"]).read_bytes())
    cfg_file = tmp_path / "gw.yaml"
    cfg_file.write_text(
        "models:\n  - name: m\n    base_url: https://api.example.com/v1\n    ca_bundle: certs/ca.pem\n"
    )
    cfg = load_config(cfg_file)
    assert cfg.models[0].ca_bundle == str(tmp_path / "certs" / "ca.pem")


# ---- end to end: proxies ---------------------------------------------------------------------------
def test_http_upstream_through_an_env_proxy_uses_absolute_form_and_proxy_auth(
    fake_server: FakeServer, servers_loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    with forward_proxy(servers_loop, require_auth=_basic(PROXY_USER, PROXY_PASSWORD)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "bypass.test")
        models = [
            # only the proxy can resolve *.test: this one works through it or not at all
            {
                "name": "via-proxy",
                "base_url": f"http://upstream.test:{fake_server.port}/v1",
                "upstream_model": "m1",
            },
            # loopback: direct, though HTTP_PROXY is set
            {"name": "loopback", "base_url": fake_server.base_url, "upstream_model": "m2"},
            # NO_PROXY: direct, so the name does not resolve
            {"name": "bypassed", "base_url": f"http://bypass.test:{fake_server.port}/v1"},
            # an explicit proxy serves loopback too
            {
                "name": "explicit",
                "base_url": fake_server.base_url,
                "upstream_model": "m3",
                "proxy": proxy.url,
            },
        ]
        with run_gateway(_config(tmp_path, models)) as gw:
            assert _chat(gw, "via-proxy") == "[m1] hello"
            assert "[m1]" in _chat(gw, "via-proxy", stream=True)
            assert [s["line"] for s in proxy.seen] == [
                f"POST http://upstream.test:{fake_server.port}/v1/chat/completions HTTP/1.1"
            ] * 2
            assert all(
                s["headers"]["proxy-authorization"] == _basic(PROXY_USER, PROXY_PASSWORD) for s in proxy.seen
            )
            assert all(s["headers"]["host"] == f"upstream.test:{fake_server.port}" for s in proxy.seen)
            proxy.seen.clear()
            assert _chat(gw, "loopback") == "[m2] hello"
            assert proxy.seen == []
            with pytest.raises(openai.APIStatusError) as ei:
                _chat(gw, "bypassed")
            assert ei.value.status_code == 502 and proxy.seen == []
            assert _chat(gw, "explicit") == "[m3] hello"
            assert [s["line"].split(" ")[1] for s in proxy.seen] == [
                f"http://127.0.0.1:{fake_server.port}/v1/chat/completions"
            ]


def test_wrong_proxy_credentials_give_a_502_that_names_no_secret(
    fake_server: FakeServer, servers_loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    with forward_proxy(servers_loop, require_auth=_basic("someone", "else")) as proxy:
        models = [
            {"name": "plain", "base_url": f"http://upstream.test:{fake_server.port}/v1", "proxy": proxy.url},
            {"name": "tls", "base_url": f"https://upstream.test:{fake_server.port}/v1", "proxy": proxy.url},
        ]
        with run_gateway(_config(tmp_path, models)) as gw:
            for model in ("plain", "tls"):
                with pytest.raises(openai.APIStatusError) as ei:
                    _chat(gw, model)
                text = str(ei.value.body) + str(ei.value)
                assert ei.value.status_code == 502, text
                assert "proxy requires authentication (407)" in text
                assert PROXY_PASSWORD not in text and str(proxy.port) not in text
            assert len(proxy.seen) == 2


def test_https_upstream_through_a_connect_tunnel_with_a_private_ca(
    servers_loop: LoopThread, pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    with (
        coding_upstream(servers_loop, pki["server_ctx"]) as up,
        forward_proxy(servers_loop, require_auth=_basic(PROXY_USER, PROXY_PASSWORD)) as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        models = [
            {
                "name": "tunnelled",
                "base_url": f"https://upstream.test:{up.port}/v1",
                "upstream_model": "gzip",
                "ca_bundle": pki["ca_file"],
            }
        ]
        with run_gateway(_config(tmp_path, models)) as gw:
            assert _chat(gw, "tunnelled") == ANSWER
            assert _chat(gw, "tunnelled", stream=True) == ANSWER
        target = f"upstream.test:{up.port}"
        assert proxy.seen and all(s["line"] == f"CONNECT {target} HTTP/1.1" for s in proxy.seen)
        assert all(
            s["headers"]["proxy-authorization"] == _basic(PROXY_USER, PROXY_PASSWORD) for s in proxy.seen
        )
        # inside the tunnel: the upstream saw an origin request, never the proxy credentials
        assert up.seen and all("proxy-authorization" not in h for h in up.seen)
        assert all(h["host"] == target for h in up.seen)


# ---- end to end: TLS with a private CA ------------------------------------------------------------
def test_private_ca_bundle_per_model_and_global(
    servers_loop: LoopThread, pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    with coding_upstream(servers_loop, pki["server_ctx"]) as up:
        url = f"https://127.0.0.1:{up.port}/v1"
        models = [
            {"name": "untrusted", "base_url": url, "upstream_model": "identity"},
            {"name": "trusted", "base_url": url, "upstream_model": "identity", "ca_bundle": pki["ca_file"]},
        ]
        with run_gateway(_config(tmp_path, models)) as gw:
            with pytest.raises(openai.APIStatusError) as ei:
                _chat(gw, "untrusted")
            text = str(ei.value.body)
            assert ei.value.status_code == 502
            assert "certificate verification failed" in text and "ca_bundle" in text
            assert str(up.port) not in text
            assert _chat(gw, "trusted") == ANSWER
        # the global bundle serves every model without its own
        with run_gateway(_config(tmp_path, models[:1], ca_bundle=pki["ca_file"])) as gw:
            assert _chat(gw, "untrusted") == ANSWER
        # and the system's CAs stay trusted beside the bundle
        ctx = tls_context(pki["ca_file"])
        assert len(ctx.get_ca_certs()) >= 1 and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_certificate_for_another_name_is_refused(
    servers_loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("elsewhere.example").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with coding_upstream(servers_loop, ctx) as up:
        models = [
            {
                "name": "m",
                "base_url": f"https://127.0.0.1:{up.port}/v1",
                "upstream_model": "identity",
                "ca_bundle": str(ca_file),
            }
        ]
        with run_gateway(_config(tmp_path, models)) as gw, pytest.raises(openai.APIStatusError) as ei:
            _chat(gw, "m")
        assert ei.value.status_code == 502
        assert "certificate is for another host name" in str(ei.value.body)
        assert "127.0.0.1" not in str(ei.value.body)


# ---- end to end: content codings --------------------------------------------------------------------
@pytest.fixture(scope="module")
def coding_gateway(
    servers_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, CodingUpstream]]:
    with coding_upstream(servers_loop) as up:
        base = f"http://127.0.0.1:{up.port}/v1"
        names = ["gzip", "deflate", "deflate-raw", "br", "gzip+br", "identity", "zstd", "corrupt-gzip"]
        models = [{"name": f"m-{n}", "base_url": base, "upstream_model": n, "proxy": "none"} for n in names]
        with run_gateway(_config(tmp_path_factory.mktemp("codings"), models)) as gw:
            yield gw, up


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw", "br", "gzip+br", "identity"])
def test_encoded_response_bodies_are_decoded(coding_gateway: tuple[str, CodingUpstream], coding: str) -> None:
    gw, up = coding_gateway
    up.seen.clear()
    assert _chat(gw, f"m-{coding}") == ANSWER
    assert up.seen[-1]["accept-encoding"] == "gzip, deflate, br" == accept_encoding()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw", "br"])
def test_encoded_streams_are_decoded_as_they_arrive(
    coding_gateway: tuple[str, CodingUpstream], coding: str
) -> None:
    gw, _ = coding_gateway
    assert _chat(gw, f"m-{coding}", stream=True) == ANSWER


@pytest.mark.parametrize(
    ("coding", "why"),
    [("zstd", "'zstd', which the gateway cannot decode"), ("corrupt-gzip", "corrupt or truncated gzip body")],
)
def test_undecodable_bodies_are_a_clean_502(
    coding_gateway: tuple[str, CodingUpstream], coding: str, why: str
) -> None:
    gw, up = coding_gateway
    with pytest.raises(openai.APIStatusError) as ei:
        _chat(gw, f"m-{coding}")
    assert ei.value.status_code == 502 and why in str(ei.value.body)
    assert str(up.port) not in str(ei.value.body)


# ---- the client itself --------------------------------------------------------------------------
def test_client_decodes_and_honours_a_callers_accept_encoding(servers_loop: LoopThread) -> None:
    with coding_upstream(servers_loop) as up:
        url = f"http://127.0.0.1:{up.port}/v1/chat/completions"

        async def main() -> None:
            c = HTTPClient(proxy=ProxySettings.none())
            body = orjson.dumps({"model": "gzip+br", "messages": []})
            r = await c.request("POST", url, {"Content-Type": "application/json"}, body)
            assert orjson.loads(r.body)["choices"][0]["message"]["content"] == ANSWER
            r = await c.request(
                "POST", url, {"Accept-Encoding": "identity"}, orjson.dumps({"model": "identity"})
            )
            assert r.status == 200 and b"piece 0" in r.body
            # a corrupt or a truncated gzip body is an error, not a short answer
            for bad in ("corrupt-gzip", "truncated-gzip"):
                with pytest.raises(HTTPError, match="corrupt or truncated gzip"):
                    await c.request("POST", url, {}, orjson.dumps({"model": bad}))
            await c.close()

        asyncio.run(main())
        assert up.accept_encodings[0] == ["gzip, deflate, br"]
        assert up.accept_encodings[1] == ["identity"]  # the caller's, and no second field
