"""AWS Bedrock backend: the Converse API (`POST /model/{modelId}/converse`, and `/converse-stream`
for streams) behind the OpenAI-shaped backend interface, each request signed with SigV4.

Optional: needs `botocore` (`pip install 'llmroute[bedrock]'`), whose credential chain (environment
variables, `AWS_PROFILE` and the shared config files, container and instance roles; refreshed
before they expire) gives the keys, and whose `SigV4Auth` signs each request for service
`bedrock` in the model's `region`. The gateway's own HTTP client sends it.

Translation goes through the Anthropic Messages shapes the gateway already has
(`backends.anthropic`): an OpenAI chat request becomes a Messages request (system prompt, text /
image / tool_use / tool_result blocks, tools, tool_choice, response_format as a forced tool),
whose blocks map one to one onto Converse's (`text`, `image` with base64 bytes, `toolUse`,
`toolResult`, `toolConfig`, `inferenceConfig`); a Converse answer and the binary event stream
(`application/vnd.amazon.eventstream`) map back onto Messages answers and events, and from there
onto OpenAI chat completions and chunks. Image URLs are not fetched: Converse takes image bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson

from llmroute.gateway.backends.anthropic import (
    AnthropicToOpenAIStream,
    _rf_tool_name,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    response_format_plan,
)
from llmroute.gateway.backends.base import (
    BackendError,
    ErrorScrubber,
    classify_status,
    model_client,
    open_stream,
    os_reason,
    post_json,
)
from llmroute.gateway.backends.http import HTTPClient, join_url
from llmroute.gateway.config import ModelConfig

__all__ = ["BedrockBackend", "anthropic_to_converse", "converse_to_anthropic"]

_STOP = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "content_filtered": "refusal",
    "guardrail_intervened": "refusal",
}


def _bad(model: str, why: str) -> BackendError:
    return BackendError(
        f"model {model!r}: {why}",
        status=400,
        retryable=False,
        fallback=False,
        code="unsupported_content",
        etype="invalid_request_error",
    )


def _block(b: dict[str, Any], model: str) -> dict[str, Any] | None:
    """One Anthropic content block as a Converse content block (None: nothing to send)."""
    t = b.get("type")
    if t == "text":
        return {"text": b.get("text", "")} if b.get("text") else None
    if t == "image":
        src = b.get("source") or {}
        if src.get("type") != "base64":
            raise _bad(model, "Bedrock takes images as base64 data, not URLs; send a data: URL")
        fmt = str(src.get("media_type", "image/png")).split("/")[-1]
        return {"image": {"format": fmt, "source": {"bytes": src.get("data", "")}}}
    if t == "tool_use":
        return {
            "toolUse": {
                "toolUseId": b.get("id", ""),
                "name": b.get("name", ""),
                "input": b.get("input") or {},
            }
        }
    if t == "tool_result":
        c = b.get("content")
        text = c if isinstance(c, str) else "".join(x.get("text", "") for x in c or () if isinstance(x, dict))
        out: dict[str, Any] = {"toolUseId": b.get("tool_use_id", ""), "content": [{"text": text}]}
        if b.get("is_error"):
            out["status"] = "error"
        return {"toolResult": out}
    raise _bad(model, f"content of type {t!r} cannot be sent to Bedrock")


def anthropic_to_converse(msg: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages request (from `openai_to_anthropic_request`) as a Converse request
    body (the model id goes in the URL)."""
    messages = []
    for m in msg.get("messages") or []:
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        converted = [x for x in (_block(b, model) for b in blocks) if x is not None]
        if converted:
            messages.append({"role": m["role"], "content": converted})
    out: dict[str, Any] = {"messages": messages}
    if msg.get("system"):
        out["system"] = [{"text": msg["system"]}]
    inference = {"maxTokens": msg.get("max_tokens")}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("stop_sequences", "stopSequences")):
        if msg.get(src) is not None:
            inference[dst] = msg[src]
    out["inferenceConfig"] = {k: v for k, v in inference.items() if v is not None}
    if msg.get("tools"):
        tools = [
            {
                "toolSpec": {
                    "name": t["name"],
                    **({"description": t["description"]} if t.get("description") else {}),
                    "inputSchema": {"json": t.get("input_schema") or {"type": "object"}},
                }
            }
            for t in msg["tools"]
        ]
        config: dict[str, Any] = {"tools": tools}
        choice = (msg.get("tool_choice") or {}).get("type")
        if choice in ("auto", "any"):
            config["toolChoice"] = {choice: {}}
        elif choice == "tool":
            config["toolChoice"] = {"tool": {"name": msg["tool_choice"]["name"]}}
        out["toolConfig"] = config
    return out


def converse_to_anthropic(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """A Converse answer as an Anthropic Messages answer (for `anthropic_to_openai_response`)."""
    content = []
    for b in ((resp.get("output") or {}).get("message") or {}).get("content") or []:
        if "text" in b:
            content.append({"type": "text", "text": b["text"]})
        elif "toolUse" in b:
            u = b["toolUse"]
            content.append(
                {
                    "type": "tool_use",
                    "id": u.get("toolUseId", ""),
                    "name": u.get("name", ""),
                    "input": u.get("input") or {},
                }
            )
    usage = resp.get("usage") or {}
    return {
        "id": "chatcmpl-bedrock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP.get(str(resp.get("stopReason")), "end_turn"),
        "usage": {"input_tokens": usage.get("inputTokens", 0), "output_tokens": usage.get("outputTokens", 0)},
    }


class _Events:
    """Converse stream events in, Anthropic Messages events out (for `AnthropicToOpenAIStream`)."""

    def __init__(self, conv: AnthropicToOpenAIStream) -> None:
        self.conv = conv
        self.stop = "end_turn"
        self.done = False

    def feed(self, kind: str, ev: dict[str, Any]) -> list[dict[str, Any]]:
        c = self.conv
        if kind == "messageStart":
            return c.feed({"type": "message_start", "message": {"id": "chatcmpl-bedrock", "usage": {}}})
        i = int(ev.get("contentBlockIndex") or 0)
        if kind == "contentBlockStart":
            u = (ev.get("start") or {}).get("toolUse")
            if u:
                block = {"type": "tool_use", "id": u.get("toolUseId", ""), "name": u.get("name", "")}
                return c.feed({"type": "content_block_start", "index": i, "content_block": block})
            return []
        if kind == "contentBlockDelta":
            d = ev.get("delta") or {}
            if "text" in d:
                return c.feed(
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "text_delta", "text": d["text"]},
                    }
                )
            if "toolUse" in d:
                part = (d["toolUse"] or {}).get("input", "")
                delta = {"type": "input_json_delta", "partial_json": part}
                return c.feed({"type": "content_block_delta", "index": i, "delta": delta})
            return []
        if kind == "contentBlockStop":
            return c.feed({"type": "content_block_stop", "index": i})
        if kind == "messageStop":
            self.stop = _STOP.get(str(ev.get("stopReason")), "end_turn")
            return []
        if kind == "metadata":
            usage = ev.get("usage") or {}
            c.input_tokens = int(usage.get("inputTokens") or 0)
            self.done = True
            out = {"output_tokens": int(usage.get("outputTokens") or 0)}
            return c.feed({"type": "message_delta", "delta": {"stop_reason": self.stop}, "usage": out})
        return []


class BedrockBackend:
    """A Bedrock model (Converse API, SigV4) behind the OpenAI-shaped backend interface."""

    def __init__(self, cfg: ModelConfig) -> None:
        try:
            from botocore.auth import SigV4Auth  # noqa: F401
        except ImportError:
            raise ImportError(
                f"model {cfg.name!r}: provider 'bedrock' needs botocore; install it with "
                "pip install 'llmroute[bedrock]'"
            ) from None
        self.cfg = cfg
        model = quote(cfg.upstream, safe="")
        self.url = join_url(cfg.base_url or "", f"/model/{model}/converse")
        self.stream_url = join_url(cfg.base_url or "", f"/model/{model}/converse-stream")
        self.client: HTTPClient | None = None
        self.credentials: Any = None
        self.scrub = ErrorScrubber.for_model(cfg)

    async def start(self, client: HTTPClient) -> None:
        import botocore.session

        self.client = model_client(client, self.cfg)
        loop = asyncio.get_running_loop()  # the credential chain may read files or the network
        self.credentials = await loop.run_in_executor(
            None, lambda: botocore.session.Session().get_credentials()
        )

    async def close(self) -> None:
        self.client = None

    def _signed(
        self, url: str, body: dict[str, Any], stream: bool
    ) -> tuple[dict[str, str], bytes, str | None]:
        """(headers with the SigV4 signature, payload, response-format tool) for `body`."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self.credentials is None:
            raise BackendError(
                f"model {self.cfg.name!r} has no AWS credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with a role) and restart the gateway",
                status=501,
                retryable=False,
                code="missing_credentials",
                etype="backend_unavailable",
            )
        if self.client is None:
            raise BackendError(f"model {self.cfg.name!r}: backend not started", status=503, retryable=False)
        plan = response_format_plan(body)
        msg = openai_to_anthropic_request(dict(body, stream=stream), self.cfg.upstream, plan)
        payload = orjson.dumps(anthropic_to_converse(msg, self.cfg.name))
        creds = self.credentials.get_frozen_credentials()
        self.scrub.add_secret(creds.secret_key)
        self.scrub.add_secret(creds.token)
        headers = {"Content-Type": "application/json", **self.cfg.headers}
        if stream:
            headers["Accept"] = "application/vnd.amazon.eventstream"
        req = AWSRequest(method="POST", url=url, data=payload, headers=headers)
        SigV4Auth(creds, "bedrock", self.cfg.region or "").add_auth(req)
        return dict(req.headers.items()), payload, _rf_tool_name(plan)

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        headers, payload, rf_tool = self._signed(self.url, body, False)
        resp = await post_json(self.client, self.url, headers, payload, self.cfg.name, timeout_s, self.scrub)
        if not isinstance(resp, dict):
            raise BackendError(f"model {self.cfg.name!r}: upstream answered no JSON object")
        return anthropic_to_openai_response(
            converse_to_anthropic(resp, self.cfg.name), self.cfg.name, rf_tool
        )

    async def chat_stream(
        self, body: dict[str, Any], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        from botocore.eventstream import EventStreamBuffer

        headers, payload, rf_tool = self._signed(self.stream_url, body, True)
        assert self.client is not None
        name = self.cfg.name
        events = _Events(AnthropicToOpenAIStream(name, rf_tool))
        client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = await open_stream(self.client, self.stream_url, headers, payload, name, timeout_s)
        ok = False
        try:
            if resp.status != 200:
                async with asyncio.timeout(timeout_s):
                    raw = await resp.read()
                raise classify_status(name, resp.status, self.scrub.detail(raw, payload))
            buf = EventStreamBuffer()
            chunks = resp.chunks()
            while not events.done:
                try:
                    async with asyncio.timeout(timeout_s):
                        data = await anext(chunks, None)
                except TimeoutError:
                    raise BackendError(
                        f"model {name!r}: stream stalled for {timeout_s:.1f}s",
                        status=504,
                        code="upstream_timeout",
                    ) from None
                if data is None:
                    break
                buf.add_data(data)
                out: list[dict[str, Any]] = []
                try:
                    messages = list(buf)
                except Exception:  # a malformed frame (CRC, lengths)
                    raise BackendError(f"model {name!r}: upstream sent an invalid stream frame") from None
                for m in messages:
                    h = m.headers
                    if h.get(":message-type") != "event":
                        try:
                            detail = str(orjson.loads(m.payload).get("message", ""))
                        except (orjson.JSONDecodeError, AttributeError):
                            detail = ""
                        kind = h.get(":exception-type") or h.get(":error-code") or "error"
                        why = self.scrub.text(f"{kind}: {detail}", payload)
                        raise BackendError(f"model {name!r}: upstream stream error: {why}")
                    for chunk in events.feed(str(h.get(":event-type")), orjson.loads(m.payload or b"{}")):
                        if client_usage and chunk.get("_usage_only"):
                            del chunk["_usage_only"]
                        out.append(chunk)
                if out:
                    yield out
            if not events.done:
                raise BackendError(f"model {name!r}: upstream stream ended without its metadata event")
            async for _ in chunks:  # drain: the connection is reusable
                pass
            ok = True
        except OSError as e:
            raise BackendError(f"model {name!r}: upstream stream broke ({os_reason(e)})") from None
        finally:
            resp.release(ok)
