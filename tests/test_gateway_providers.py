"""#16 item 2: provider presets, each end to end against a local fake that sees exactly what the
real host would: its documented URL (scheme, host, path, query), auth header and body shape.

The presets' real hosts are reached through a local forward proxy (the model's `proxy`): a
CONNECT tunnel to any https host ends at one local TLS recorder whose certificate (a `trustme` CA,
the model's `ca_bundle`) names every preset host, and plain-http requests (the local servers:
vLLM, Ollama, llama.cpp) arrive at the proxy in absolute form, naming the URL. Nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import trustme
from aiohttp import web

from conftest import StubRouter, run_gateway
from llmroute.gateway.config import ConfigError, parse_config
from llmroute.gateway.providers import PRESETS, azure_base_url

KEY_ENV = "LLMROUTE_TEST_PROVIDER_KEY"
KEY = "sk-provider-test-0123456789"
AZURE_ENDPOINT = "https://myres.openai.azure.com"

#: preset -> (the documented chat completions URL for upstream model "up-model", auth header, value)
DOCUMENTED: dict[str, tuple[str, str, str]] = {
    "azure": (
        f"{AZURE_ENDPOINT}/openai/deployments/my-deploy/chat/completions?api-version=2024-10-21",
        "api-key",
        KEY,
    ),
    "gemini": (
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        "authorization",
        f"Bearer {KEY}",
    ),
    "mistral": ("https://api.mistral.ai/v1/chat/completions", "authorization", f"Bearer {KEY}"),
    "groq": ("https://api.groq.com/openai/v1/chat/completions", "authorization", f"Bearer {KEY}"),
    "together": ("https://api.together.ai/v1/chat/completions", "authorization", f"Bearer {KEY}"),
    "deepseek": ("https://api.deepseek.com/chat/completions", "authorization", f"Bearer {KEY}"),
    "openrouter": ("https://openrouter.ai/api/v1/chat/completions", "authorization", f"Bearer {KEY}"),
    "vllm": ("http://localhost:8000/v1/chat/completions", "authorization", f"Bearer {KEY}"),
    "ollama": ("http://localhost:11434/v1/chat/completions", "", ""),
    "llamacpp": ("http://localhost:8080/v1/chat/completions", "", ""),
}
#: the default key variable of each hosted preset (the local servers take none by default)
KEY_VARS = {
    "azure": "AZURE_OPENAI_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "together": "TOGETHER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "vllm": None,
    "ollama": None,
    "llamacpp": None,
}


try:  # the optional vertex extra
    import google.auth  # noqa: F401

    _HAS_GOOGLE_AUTH = True
except ImportError:
    _HAS_GOOGLE_AUTH = False


class LoopThread:
    """An event loop in a daemon thread for the servers; `run(coro)` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="provider-fakes")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Recorder:
    """The fake provider: records each request (`url` as the client addressed it, lower-case
    `headers`, JSON `body`) and answers chat (streamed too), embeddings and completions."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.runners: list[web.AppRunner] = []
        self.http_port = 0
        #: `POST /token` (plain HTTP): Google's OAuth token endpoint for a service account; the
        #: JWT assertions it verified (with `token_key`, the account's public key PEM)
        self.token_key = ""
        self.assertions: list[dict[str, Any]] = []

    async def _token(self, request: web.Request) -> web.Response:
        from google.auth import jwt

        form = await request.post()
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        # google-auth addresses its assertions to Google's token endpoint whatever token_uri says
        aud = "https://oauth2.googleapis.com/token"
        claims = jwt.decode(str(form["assertion"]), certs=self.token_key, audience=aud)
        self.assertions.append(claims)
        return web.json_response(
            {"access_token": f"ya29.fake-{len(self.assertions)}", "expires_in": 3600, "token_type": "Bearer"}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            return await self._token(request)
        body = orjson.loads(await request.read())
        scheme = "https" if request.secure else "http"
        url = f"{scheme}://{request.headers['host']}{request.rel_url}"
        self.seen.append(
            {"url": url, "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        )
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        base = {"id": "x1", "created": 1, "model": body.get("model")}
        if request.path.endswith("/embeddings"):
            data = [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}]
            return web.json_response(
                {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
            )
        if request.path.endswith("/completions") and not request.path.endswith("/chat/completions"):
            choice = {"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}
            return web.json_response(
                {**base, "object": "text_completion", "choices": [choice], "usage": usage}
            )
        if not body.get("stream"):
            msg = {"role": "assistant", "content": "hello"}
            choice = {"index": 0, "message": msg, "finish_reason": "stop"}
            return web.json_response(
                {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        r = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await r.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        for delta, finish in (({"role": "assistant", "content": "hel"}, None), ({"content": "lo"}, "stop")):
            c = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await r.write(b"data: " + orjson.dumps(c) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await r.write(b"data: " + orjson.dumps({**chunk, "choices": [], "usage": usage}) + b"\n\n")
        await r.write(b"data: [DONE]\n\n")
        return r

    async def start(self, tls: ssl.SSLContext) -> tuple[int, int]:
        """Serve on two ports: TLS and plain HTTP; returns (tls port, http port)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        ports = []
        for ctx in (tls, None):
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
            await site.start()
            self.runners.append(runner)
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self.http_port = ports[1]
        return ports[0], ports[1]

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    with contextlib.suppress(Exception):
        w.close()


class RedirectingProxy:
    """A forward proxy that sends every CONNECT tunnel to the recorder's TLS port and every
    absolute-form request to its plain-HTTP port, whatever host they name."""

    def __init__(self, tls_port: int, http_port: int) -> None:
        self.tls_port, self.http_port = tls_port, http_port
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        if head.startswith(b"CONNECT "):
            ur, uw = await asyncio.open_connection("127.0.0.1", self.tls_port)
            w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await w.drain()
        else:  # absolute form: the recorder reads the URL from the request line's host
            ur, uw = await asyncio.open_connection("127.0.0.1", self.http_port)
            uw.write(head)
        await asyncio.gather(_pipe(r, uw), _pipe(ur, w))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, str, str]]:
    """(recorder, proxy URL, CA file): a TLS certificate for every preset host."""
    ca = trustme.CA()
    hosts = ["myres.openai.azure.com", "localhost", "us-central1-aiplatform.googleapis.com"]
    hosts += [
        p.base_url.split("/")[2] for p in PRESETS.values() if p.base_url and p.base_url.startswith("https")
    ]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(ctx)
    ca_file = tmp_path_factory.mktemp("providers") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    lt = LoopThread()
    rec = Recorder()
    tls_port, http_port = lt.run(rec.start(ctx))
    proxy = RedirectingProxy(tls_port, http_port)
    lt.run(proxy.start())
    try:
        yield rec, f"http://127.0.0.1:{proxy.port}", str(ca_file)
    finally:
        lt.run(proxy.stop())
        lt.run(rec.stop())
        lt.stop()


def _model(preset: str, proxy: str, ca_file: str) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": f"m-{preset}",
        "provider": preset,
        "upstream_model": "up-model",
        "proxy": proxy,
        "ca_bundle": ca_file,
        "input_per_mtok": 1,
        "output_per_mtok": 2,
    }
    if preset == "azure":
        m |= {"base_url": AZURE_ENDPOINT, "deployment": "my-deploy"}
    if preset in ("azure", "vllm") or KEY_VARS[preset]:
        m["api_key_env"] = KEY_ENV  # the default variable is checked in the config test
    return m


@pytest.fixture(scope="module")
def gw(upstream: tuple[Recorder, str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, proxy, ca_file = upstream
    tmp = tmp_path_factory.mktemp("providers-gw")
    vertex = {
        **_model("vllm", proxy, ca_file),
        "name": "m-vertex",
        "provider": "vertex",
        "region": "us-central1",
        "project": "my-proj",
        "upstream_model": "google/gemini-2.0-flash-001",
    }
    del vertex["api_key_env"]
    cfg = {
        "models": [*(_model(p, proxy, ca_file) for p in PRESETS), *([vertex] if _HAS_GOOGLE_AUTH else [])],
        "store": {"url": f"sqlite:///{tmp}/traces.sqlite"},
        "server": {"retries": 0},
    }
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", _service_account(upstream[0], tmp))
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield url
    finally:
        mp.undo()


def _service_account(rec: Recorder, tmp: Path) -> str:
    """A service-account key file whose token endpoint is the recorder's `/token`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    rec.token_key = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "my-proj",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "router@my-proj.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"http://127.0.0.1:{rec.http_port}/token",
    }
    path = tmp / "service-account.json"
    path.write_bytes(orjson.dumps(info))
    return str(path)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_chat_reaches_the_documented_url_with_the_documented_auth(
    preset: str, gw: str, upstream: tuple[Recorder, str, str]
) -> None:
    rec = upstream[0]
    c = openai.OpenAI(base_url=gw, api_key="client-key", max_retries=0, timeout=30)
    rec.seen.clear()
    msgs = [{"role": "user", "content": "hi"}]
    r = c.chat.completions.create(model=f"m-{preset}", messages=msgs, max_tokens=9)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "hello"
    chunks = list(c.chat.completions.create(model=f"m-{preset}", messages=msgs, stream=True))  # type: ignore[arg-type]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "hello"
    url, header, value = DOCUMENTED[preset]
    assert [s["url"] for s in rec.seen] == [url, url]
    plain, streamed = rec.seen
    for s in rec.seen:
        h = s["headers"]
        if header:
            assert h[header] == value
        else:  # no key configured: no credentials at all
            assert "authorization" not in h and "api-key" not in h
        if header == "api-key":  # Azure: the key only in api-key
            assert "authorization" not in h
        assert h["content-type"] == "application/json"
        assert "client-key" not in str(h)  # the client's own key never goes upstream
    assert plain["body"] == {"model": "up-model", "messages": msgs, "max_tokens": 9}
    expected = {"model": "up-model", "messages": msgs, "stream": True}
    if preset != "mistral":  # Mistral reports stream usage unasked (and is not sent stream_options)
        expected["stream_options"] = {"include_usage": True}
    assert streamed["body"] == expected


def test_azure_embeddings_and_completions_use_the_deployment_path(
    gw: str, upstream: tuple[Recorder, str, str]
) -> None:
    rec = upstream[0]
    c = openai.OpenAI(base_url=gw, api_key="x", max_retries=0, timeout=30)
    rec.seen.clear()
    c.embeddings.create(model="m-azure", input="hi", encoding_format="float")
    c.completions.create(model="m-azure", prompt="hi", max_tokens=3)
    base = f"{AZURE_ENDPOINT}/openai/deployments/my-deploy"
    assert [s["url"] for s in rec.seen] == [
        f"{base}/embeddings?api-version=2024-10-21",
        f"{base}/completions?api-version=2024-10-21",
    ]
    assert all(s["headers"]["api-key"] == KEY for s in rec.seen)
    assert rec.seen[0]["body"] == {"model": "up-model", "input": "hi", "encoding_format": "float"}


def test_preset_defaults_and_config_errors() -> None:
    for preset, var in KEY_VARS.items():
        m: dict[str, Any] = {"name": "m", "provider": preset}
        if preset == "azure":
            m["base_url"] = AZURE_ENDPOINT
        cfg = parse_config({"models": [m]}).models[0]
        assert cfg.api_key_env == var, preset
        assert cfg.api == "openai"
        if preset != "azure":
            assert cfg.base_url == DOCUMENTED[preset][0].removesuffix("/chat/completions"), preset
    # Azure: the deployment defaults to the upstream model, else the name; api_version is kept
    cfg = parse_config(
        {
            "models": [
                {
                    "name": "gpt4o",
                    "provider": "azure",
                    "base_url": AZURE_ENDPOINT + "/",
                    "api_version": "2025-01-01-preview",
                }
            ]
        }
    ).models[0]
    assert cfg.base_url == f"{AZURE_ENDPOINT}/openai/deployments/gpt4o?api-version=2025-01-01-preview"
    assert azure_base_url(cfg.base_url, "other", "2024-10-21") == cfg.base_url  # idempotent
    with pytest.raises(ConfigError, match="needs base_url"):
        parse_config({"models": [{"name": "m", "provider": "azure"}]})
    with pytest.raises(ConfigError, match="azure' only"):
        parse_config({"models": [{"name": "m", "provider": "groq", "deployment": "d"}]})
    # a model's own base URL and key variable win over the preset's
    own = parse_config(
        {"models": [{"name": "m", "provider": "vllm", "base_url": "http://gpu:9000/v1", "api_key_env": "K"}]}
    ).models[0]
    assert own.base_url == "http://gpu:9000/v1" and own.api_key_env == "K"


def test_missing_preset_key_is_a_clear_501(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    cfg = {"models": [{"name": "g", "provider": "groq"}], "store": {"url": "memory://"}}
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="g", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 501 and "GROQ_API_KEY" in str(e.value)


def test_vertex_bearer_token_from_a_service_account(gw: str, upstream: tuple[Recorder, str, str]) -> None:
    """Vertex AI: the documented OpenAI-compatible URL, and a Google access token obtained with a
    signed JWT (verified by the fake token endpoint) as the bearer, fetched once and reused."""
    pytest.importorskip("google.auth")
    rec = upstream[0]
    c = openai.OpenAI(base_url=gw, api_key="client-key", max_retries=0, timeout=30)
    rec.seen.clear()
    msgs = [{"role": "user", "content": "hi"}]
    assert c.chat.completions.create(model="m-vertex", messages=msgs).choices[0].message.content == "hello"  # type: ignore[arg-type]
    chunks = list(c.chat.completions.create(model="m-vertex", messages=msgs, stream=True))  # type: ignore[arg-type]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "hello"
    url = "https://us-central1-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-central1/endpoints/openapi/chat/completions"
    assert [s["url"] for s in rec.seen] == [url, url]
    assert all(s["headers"]["authorization"] == "Bearer ya29.fake-1" for s in rec.seen)
    assert rec.seen[0]["body"] == {"model": "google/gemini-2.0-flash-001", "messages": msgs}
    (claims,) = rec.assertions  # one token for both calls
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["iss"] == "router@my-proj.iam.gserviceaccount.com"
    with pytest.raises(ConfigError, match="needs project"):
        parse_config({"models": [{"name": "v", "provider": "vertex", "region": "us-central1"}]})
    g = parse_config({"models": [{"name": "v", "provider": "vertex", "region": "global", "project": "p"}]})
    assert (
        g.models[0].base_url
        == "https://aiplatform.googleapis.com/v1/projects/p/locations/global/endpoints/openapi"
    )


def test_vertex_without_google_credentials_is_a_clear_501(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("google.auth")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    m = {"name": "v", "provider": "vertex", "region": "us-central1", "project": "p"}
    with run_gateway(
        {"models": [m], "store": {"url": "memory://"}}, routers={"default": StubRouter()}
    ) as url:
        with pytest.raises(openai.APIStatusError) as e:
            openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
                model="v", messages=[{"role": "user", "content": "hi"}]
            )
        assert e.value.status_code == 501 and "GOOGLE_APPLICATION_CREDENTIALS" in str(e.value)
