"""#16 item 2: AWS Bedrock (Converse API, SigV4 from botocore's credential chain) against a local
fake that checks the documented URL, the signature (recomputed over what arrived) and the body
shape, and streams real `application/vnd.amazon.eventstream` frames. Skipped without botocore
(the optional `bedrock` extra)."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from conftest import StubRouter, run_gateway
from llmroute.gateway.config import ConfigError, parse_config
from test_gateway_providers import LoopThread

pytest.importorskip("botocore")

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AKID, SECRET, TOKEN = "AKIDTESTBEDROCK", "secret/test+key/0123456789abcdefghij", "session-token-xyz"
MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
AUTH = re.compile(
    rf"AWS4-HMAC-SHA256 Credential={AKID}/(\d{{8}})/us-east-1/bedrock/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})"
)


def _frame(headers: dict[str, str], payload: dict[str, Any]) -> bytes:
    """One event-stream message: prelude (lengths + CRC), string headers, JSON payload, CRC."""
    hb = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        for k, v in headers.items()
    )
    body = orjson.dumps(payload)
    prelude = struct.pack(">II", 16 + len(hb) + len(body), len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + hb + body
    return msg + struct.pack(">I", zlib.crc32(msg))


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return _frame(
        {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, payload
    )


class FakeBedrock:
    """Checks each request's SigV4 signature (403 if it does not verify), records it, answers."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.fault: str | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    def _verify(self, request: web.Request, raw: bytes) -> str | None:
        m = AUTH.fullmatch(request.headers.get("Authorization", ""))
        if m is None:
            return "malformed Authorization header"
        signed = m.group(2).split(";")
        if not {"host", "x-amz-date", "content-type"} <= set(signed):
            return f"unsigned headers: {signed}"
        headers = {k: request.headers[k] for k in signed if k != "host"}
        req = AWSRequest(
            method=request.method, url=f"http://{request.host}{request.raw_path}", data=raw, headers=headers
        )
        req.context["timestamp"] = request.headers["X-Amz-Date"]
        signer = SigV4Auth(Credentials(AKID, SECRET, TOKEN), "bedrock", "us-east-1")
        canonical = signer.canonical_request(req)
        expected = signer.signature(signer.string_to_sign(req, canonical), req)
        return None if expected == m.group(3) else "signature mismatch"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        problem = self._verify(request, raw)
        if problem:
            return web.json_response({"message": problem}, status=403)
        body = orjson.loads(raw)
        self.seen.append({"path": request.raw_path, "headers": dict(request.headers), "body": body})
        usage = {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15}
        tool = (body.get("toolConfig") or {}).get("tools")
        if request.raw_path.endswith("/converse"):
            if tool:
                name = tool[0]["toolSpec"]["name"]
                content = [{"toolUse": {"toolUseId": "tu1", "name": name, "input": {"city": "Paris"}}}]
                stop = "tool_use"
            else:
                content, stop = [{"text": "hello from bedrock"}], "end_turn"
            msg = {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop}
            return web.json_response({**msg, "usage": usage, "metrics": {"latencyMs": 5}})
        r = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream"})
        await r.prepare(request)
        frames = [_event("messageStart", {"role": "assistant"})]
        if tool:
            start = {"toolUse": {"toolUseId": "tu1", "name": tool[0]["toolSpec"]["name"]}}
            frames += [
                _event("contentBlockStart", {"contentBlockIndex": 0, "start": start}),
                _event(
                    "contentBlockDelta",
                    {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"city": '}}},
                ),
                _event(
                    "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '"Paris"}'}}}
                ),
            ]
        else:
            for piece in ("hello ", "from ", "bedrock"):
                frames.append(_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}))
        if self.fault == "throttle":
            exc = {
                ":exception-type": "throttlingException",
                ":content-type": "application/json",
                ":message-type": "exception",
            }
            frames.append(_frame(exc, {"message": "Too many requests, slow down"}))
        frames += [
            _event("contentBlockStop", {"contentBlockIndex": 0}),
            _event("messageStop", {"stopReason": "tool_use" if tool else "end_turn"}),
            _event("metadata", {"usage": usage, "metrics": {"latencyMs": 5}}),
        ]
        for f in frames:  # one frame split across writes too: the parser must reassemble it
            await r.write(f[:7])
            await r.write(f[7:])
        return r

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/model/{model}/{op}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _isolate_aws(mp: pytest.MonkeyPatch, tmp: Any) -> None:
    """botocore's credential chain sees only what the test sets (no files, no instance metadata)."""
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):  # fmt: skip
        mp.delenv(var, raising=False)
    mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-credentials"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _model(url: str) -> dict[str, Any]:
    return {
        "name": "claude-bedrock",
        "provider": "bedrock",
        "region": "us-east-1",
        "base_url": url,
        "upstream_model": MODEL_ID,
        "input_per_mtok": 0.25,
        "output_per_mtok": 1.25,
    }


@pytest.fixture(scope="module")
def bedrock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeBedrock, str]]:
    lt = LoopThread()
    fake = FakeBedrock()
    lt.run(fake.start())
    tmp = tmp_path_factory.mktemp("bedrock")
    mp = pytest.MonkeyPatch()
    _isolate_aws(mp, tmp)
    mp.setenv("AWS_ACCESS_KEY_ID", AKID)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    mp.setenv("AWS_SESSION_TOKEN", TOKEN)
    cfg = {"models": [_model(fake.url)], "store": {"url": "memory://"}, "server": {"retries": 0}}
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield fake, url
    finally:
        mp.undo()
        lt.run(fake.stop())
        lt.stop()


def test_converse_signed_and_translated(bedrock: tuple[FakeBedrock, str]) -> None:
    fake, url = bedrock
    c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
    fake.seen.clear()
    r = c.chat.completions.create(
        model="claude-bedrock",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=50,
        temperature=0.5,
        stop=["END"],
    )
    assert r.choices[0].message.content == "hello from bedrock" and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 4)
    (seen,) = fake.seen
    assert seen["path"] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert seen["headers"]["X-Amz-Security-Token"] == TOKEN
    assert re.fullmatch(r"\d{8}T\d{6}Z", seen["headers"]["X-Amz-Date"])
    assert seen["body"] == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "stopSequences": ["END"]},
    }


def test_converse_stream_event_frames(bedrock: tuple[FakeBedrock, str]) -> None:
    fake, url = bedrock
    c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
    fake.seen.clear()
    chunks = list(
        c.chat.completions.create(
            model="claude-bedrock",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "hello from bedrock"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11
    assert chunks[-1].usage.completion_tokens == 4
    assert fake.seen[0]["path"].endswith("%3A0/converse-stream")
    assert fake.seen[0]["headers"]["Accept"] == "application/vnd.amazon.eventstream"


def test_tools_both_ways(bedrock: tuple[FakeBedrock, str]) -> None:
    fake, url = bedrock
    c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    fake.seen.clear()
    r = c.chat.completions.create(
        model="claude-bedrock",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, orjson.loads(call.function.arguments)) == (
        "tu1",
        "weather",
        {"city": "Paris"},
    )
    assert r.choices[0].finish_reason == "tool_calls"
    assert fake.seen[0]["body"]["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "weather",
                    "description": "Weather in a city",
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}},
                }
            }
        ],
        "toolChoice": {"tool": {"name": "weather"}},
    }
    # the call and its result go back as toolUse / toolResult blocks
    fake.seen.clear()
    c.chat.completions.create(
        model="claude-bedrock",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "tu1", "content": "sunny"},
        ],
        tools=tools,  # type: ignore[arg-type]
    )
    assert fake.seen[0]["body"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": "tu1", "name": "weather", "input": {"city": "Paris"}}}],
        },
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tu1", "content": [{"text": "sunny"}]}}]},
    ]
    chunks = list(
        c.chat.completions.create(
            model="claude-bedrock",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=tools,
            stream=True,  # type: ignore[arg-type]
        )
    )
    args = "".join(
        (ch.choices[0].delta.tool_calls or [None])[0].function.arguments or ""  # type: ignore[union-attr]
        for ch in chunks
        if ch.choices and ch.choices[0].delta.tool_calls
    )
    assert orjson.loads(args) == {"city": "Paris"}


def test_stream_exception_frame_is_an_error(bedrock: tuple[FakeBedrock, str]) -> None:
    fake, url = bedrock
    fake.fault = "throttle"
    try:
        with pytest.raises(openai.APIError, match="throttlingException"):
            list(
                openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30).chat.completions.create(
                    model="claude-bedrock", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
    finally:
        fake.fault = None


def test_no_credentials_is_a_501_and_region_is_required(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _isolate_aws(monkeypatch, tmp_path)
    cfg = {"models": [_model("http://127.0.0.1:9")], "store": {"url": "memory://"}}
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        with pytest.raises(openai.APIStatusError) as e:
            openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
                model="claude-bedrock", messages=[{"role": "user", "content": "hi"}]
            )
        assert e.value.status_code == 501 and "AWS_ACCESS_KEY_ID" in str(e.value)
    with pytest.raises(ConfigError, match="need region"):
        parse_config({"models": [{"name": "b", "provider": "bedrock"}]})
    cfg_ok = parse_config({"models": [{"name": "b", "provider": "bedrock", "region": "eu-west-3"}]})
    assert cfg_ok.models[0].base_url == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    assert cfg_ok.models[0].api == "bedrock"
