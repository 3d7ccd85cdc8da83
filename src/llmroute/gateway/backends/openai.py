"""OpenAI-compatible HTTP backend (OpenAI, the provider presets of `llmroute.gateway.providers`:
Azure, Gemini, Mistral, Groq, Together, DeepSeek, OpenRouter, vLLM, Ollama, llama.cpp; the fake server).

Uses the gateway's pooled `HTTPClient` (see `backends.http`); the request body is forwarded as is except for
`model` (set to the upstream id) and, for streams, `stream_options.include_usage` (turned on so
the gateway can account tokens, unless the preset reports usage unasked; the usage chunk is
dropped again unless the client asked for it). The key goes as `Authorization: Bearer` (Azure:
`api-key`; Vertex: a Google access token, `backends.google`). `post` / `stream` call the upstream's other endpoints (`/embeddings`, `/completions`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

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
from llmroute.gateway.config import ModelConfig

__all__ = ["OpenAIBackend", "missing_credentials"]


def missing_credentials(cfg: ModelConfig) -> BackendError:
    """The error for a hosted model whose API key env var is not set.

    HTTP 501 (the gateway cannot serve this model as configured), not retryable: the gateway
    also answers `x-should-retry: false`, so the official openai/anthropic clients, which retry
    every 5xx otherwise, do not retry a request that can only fail the same way until the
    operator sets the variable. Aliases fall back to their other candidates first."""
    return BackendError(
        f"model {cfg.name!r} has no credentials: set the environment variable {cfg.api_key_env} "
        "and restart the gateway, or pick another model",
        status=501,
        retryable=False,
        code="missing_credentials",
        etype="backend_unavailable",
    )


class OpenAIBackend:
    """Chat completions against `{base_url}/chat/completions` (a query string in `base_url`, e.g.
    `?api-version=...`, stays after the path). Upstream error text reaches the client and the trace
    only through `ErrorScrubber` (no keys, no echoed prompt, no upstream address)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.url = join_url(cfg.base_url or "", "/chat/completions")
        self.client: HTTPClient | None = None
        self.headers: dict[str, str] = {"Content-Type": "application/json", **cfg.headers}
        self.key_missing = False
        self.scrub = ErrorScrubber.for_model(cfg)
        self.token: Any = None  # provider vertex: Google access tokens (backends.google)
        if cfg.provider == "vertex":
            from llmroute.gateway.backends.google import GoogleToken

            self.token = GoogleToken(cfg.name)

    async def start(self, client: HTTPClient) -> None:
        self.client = model_client(client, self.cfg)
        key = self.cfg.api_key()
        self.scrub.add_secret(key)
        if key:
            self.headers.update(self.cfg.auth_headers(key))
        elif self.cfg.api_key_env:
            self.key_missing = True

    async def close(self) -> None:
        self.client = None

    def _prep(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.key_missing:
            raise missing_credentials(self.cfg)
        if self.client is None:
            raise BackendError(f"model {self.cfg.name!r}: backend not started", status=503, retryable=False)
        out = dict(body)
        out["model"] = self.cfg.upstream
        return out

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.token is not None:
            self.headers["Authorization"] = await self.token.header()
        payload = orjson.dumps(self._prep(body))
        data = await post_json(
            self.client, self.url, self.headers, payload, self.cfg.name, timeout_s, self.scrub
        )
        if not isinstance(data, dict) or "choices" not in data:
            raise BackendError(f"model {self.cfg.name!r}: upstream returned no 'choices'")
        return data

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """A non-streamed call of another endpoint of the upstream (`path` below `base_url`, e.g.
        "/embeddings"); the decoded JSON object it answers."""
        if self.token is not None:
            self.headers["Authorization"] = await self.token.header()
        payload = orjson.dumps(self._prep(body))
        url = join_url(self.cfg.base_url or "", path)
        data = await post_json(self.client, url, self.headers, payload, self.cfg.name, timeout_s, self.scrub)
        if not isinstance(data, dict):
            raise BackendError(f"model {self.cfg.name!r}: upstream answered no JSON object")
        return data

    def chat_stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[list[dict[str, Any]]]:
        return self._stream(self.url, body, timeout_s)

    def stream(
        self, path: str, body: dict[str, Any], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """A streamed call of another endpoint of the upstream (e.g. "/completions"): its SSE
        events' JSON objects, as `chat_stream` gives a chat stream's chunks."""
        return self._stream(join_url(self.cfg.base_url or "", path), body, timeout_s)

    async def _stream(
        self, url: str, body: dict[str, Any], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        if self.token is not None:
            self.headers["Authorization"] = await self.token.header()
        b = self._prep(body)
        b["stream"] = True
        client_usage = bool((b.get("stream_options") or {}).get("include_usage"))
        if not client_usage and self.cfg.stream_usage:
            b["stream_options"] = {**(b.get("stream_options") or {}), "include_usage": True}
        assert self.client is not None
        name = self.cfg.name
        payload = orjson.dumps(b)
        resp = await open_stream(self.client, url, self.headers, payload, name, timeout_s)
        ok = False
        try:
            if resp.status != 200:
                async with asyncio.timeout(timeout_s):
                    raw = await resp.read()
                raise classify_status(name, resp.status, self.scrub.detail(raw, payload))
            done = False
            batches = resp.line_batches()
            while not done:
                lines = await next_lines(batches, name, timeout_s)
                if lines is None:
                    break
                out: list[dict[str, Any]] = []
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise BackendError(f"model {name!r}: upstream sent an invalid stream event") from None
                    if not isinstance(chunk, dict):
                        raise BackendError(f"model {name!r}: upstream sent an invalid stream event")
                    if "error" in chunk and "choices" not in chunk:
                        err = (
                            chunk["error"]
                            if isinstance(chunk["error"], dict)
                            else {"message": str(chunk["error"])}
                        )
                        why = self.scrub.text(str(err.get("message", "")), payload)
                        raise BackendError(f"model {name!r}: upstream stream error: {why}")
                    if not client_usage and not chunk.get("choices") and chunk.get("usage"):
                        chunk["_usage_only"] = True
                    out.append(chunk)
                if out:
                    yield out
            if not done:
                raise BackendError(f"model {name!r}: upstream stream ended without [DONE]")
            async for _ in batches:  # drain to the end of the response so the connection is reusable
                pass
            ok = True
        except OSError as e:
            raise BackendError(f"model {name!r}: upstream stream broke ({os_reason(e)})") from None
        finally:
            resp.release(ok)
