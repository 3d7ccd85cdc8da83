"""Anthropic Messages API: the backend, and the translations both ways used by it and by the
gateway's own `POST /v1/messages` endpoint.

- `openai_to_anthropic_request` / `anthropic_to_openai_response` / `AnthropicToOpenAIStream`:
  an OpenAI chat request sent to an Anthropic model (the backend).
- `anthropic_to_openai_request` / `openai_to_anthropic_response` / `OpenAIToAnthropicStream`:
  an Anthropic Messages request routed to any backend (the inbound endpoint).
Text, system prompts, images (URL / base64), tool definitions, tool_choice, tool calls and tool
results, stop sequences, usage and stop reasons are translated, streaming included.

The translations live in one module per direction: `llmroute.gateway.backends.anthropic_outbound`
(OpenAI -> Anthropic, with the `response_format` rules) and
`llmroute.gateway.backends.anthropic_inbound` (Anthropic -> OpenAI). This module holds the backend
and re-exports both, so every name is importable from here as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmroute.gateway.backends.anthropic_inbound import (
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from llmroute.gateway.backends.anthropic_outbound import (
    JSON_OBJECT_INSTRUCTION,
    PROMPT_TOKENS,
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
    next_lines,
    open_stream,
    os_reason,
    post_json,
)
from llmroute.gateway.backends.http import HTTPClient, join_url
from llmroute.gateway.backends.openai import missing_credentials
from llmroute.gateway.config import ModelConfig

__all__ = [
    "JSON_OBJECT_INSTRUCTION",
    "PROMPT_TOKENS",
    "AnthropicBackend",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
    "response_format_plan",
]


# ---- the backend ------------------------------------------------------------------------------
class AnthropicBackend:
    """An Anthropic Messages API model behind the OpenAI-shaped backend interface."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.url = join_url(cfg.base_url or "https://api.anthropic.com", "/v1/messages")
        self.client: HTTPClient | None = None
        self.headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01", **cfg.headers}
        self.key_missing = False
        self.scrub = ErrorScrubber.for_model(cfg)  # upstream error text -> client and trace

    async def start(self, client: HTTPClient) -> None:
        self.client = model_client(client, self.cfg)
        key = self.cfg.api_key()
        self.scrub.add_secret(key)
        if key:
            self.headers["x-api-key"] = key
        elif self.cfg.api_key_env:
            self.key_missing = True

    async def close(self) -> None:
        self.client = None

    def _prep(self, body: dict[str, Any]) -> tuple[bytes, str | None]:
        """(the Anthropic payload, the response-format tool name or None)."""
        if self.key_missing:
            raise missing_credentials(self.cfg)
        if self.client is None:
            raise BackendError(f"model {self.cfg.name!r}: backend not started", status=503, retryable=False)
        plan = response_format_plan(body)
        payload = orjson.dumps(openai_to_anthropic_request(body, self.cfg.upstream, plan))
        return payload, _rf_tool_name(plan)

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        payload, rf_tool = self._prep(dict(body, stream=False))
        msg = await post_json(
            self.client, self.url, self.headers, payload, self.cfg.name, timeout_s, self.scrub
        )
        return anthropic_to_openai_response(msg, self.cfg.name, rf_tool)

    async def chat_stream(
        self, body: dict[str, Any], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        payload, rf_tool = self._prep(dict(body, stream=True))
        assert self.client is not None
        name = self.cfg.name
        conv = AnthropicToOpenAIStream(name, rf_tool)
        client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = await open_stream(self.client, self.url, self.headers, payload, name, timeout_s)
        ok = False
        try:
            if resp.status != 200:
                async with asyncio.timeout(timeout_s):
                    raw = await resp.read()
                raise classify_status(name, resp.status, self.scrub.detail(raw, payload))
            stopped = False
            batches = resp.line_batches()
            while not stopped:
                lines = await next_lines(batches, name, timeout_s)
                if lines is None:
                    break
                out: list[dict[str, Any]] = []
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    try:
                        ev = orjson.loads(line[5:].strip())
                    except orjson.JSONDecodeError:
                        raise BackendError(f"model {name!r}: upstream sent an invalid stream event") from None
                    if isinstance(ev, dict) and ev.get("type") == "error":
                        err = ev.get("error")
                        why = self.scrub.text(
                            str(err.get("message", "") if isinstance(err, dict) else err), payload
                        )
                        raise BackendError(f"model {name!r}: upstream stream error: {why}")
                    for chunk in conv.feed(ev):
                        if client_usage and chunk.get("_usage_only"):
                            del chunk["_usage_only"]
                        out.append(chunk)
                    if ev.get("type") == "message_stop":
                        stopped = True
                        break
                if out:
                    yield out
            if not stopped:
                raise BackendError(f"model {name!r}: upstream stream ended without message_stop")
            async for _ in batches:
                pass
            ok = True
        except OSError as e:
            raise BackendError(f"model {name!r}: upstream stream broke ({os_reason(e)})") from None
        finally:
            resp.release(ok)
