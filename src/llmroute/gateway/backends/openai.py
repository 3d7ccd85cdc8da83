"""OpenAI-compatible HTTP backend (OpenAI, vLLM, Ollama, OpenRouter, llama.cpp, the fake server).

Uses the gateway's pooled aiohttp `ClientSession`; the request body is forwarded as is except for
`model` (set to the upstream id) and, for streams, `stream_options.include_usage` (turned on so
the gateway can account tokens; the usage chunk is dropped again unless the client asked for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from llmroute.gateway.backends.base import BackendError, classify_status
from llmroute.gateway.config import ModelConfig

__all__ = ["OpenAIBackend", "missing_credentials"]


def missing_credentials(cfg: ModelConfig) -> BackendError:
    """The error for a hosted model whose API key env var is not set."""
    return BackendError(
        f"model {cfg.name!r} has no credentials: set the environment variable {cfg.api_key_env} "
        "and restart the gateway, or pick another model",
        status=503, retryable=False, code="missing_credentials", etype="backend_unavailable",
    )


class OpenAIBackend:
    """Chat completions against `{base_url}/chat/completions`."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        base = (cfg.base_url or "").rstrip("/")
        self.url = base + "/chat/completions"
        self.session: aiohttp.ClientSession | None = None
        self.headers: dict[str, str] = {"content-type": "application/json", **cfg.headers}
        self.key_missing = False

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        key = self.cfg.api_key()
        if key:
            self.headers["authorization"] = f"Bearer {key}"
        elif self.cfg.api_key_env:
            self.key_missing = True

    async def close(self) -> None:
        self.session = None

    def _prep(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.key_missing:
            raise missing_credentials(self.cfg)
        if self.session is None:
            raise BackendError(f"model {self.cfg.name!r}: backend not started", status=503, retryable=False)
        out = dict(body)
        out["model"] = self.cfg.upstream
        return out

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        payload = orjson.dumps(self._prep(body))
        assert self.session is not None
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.post(self.url, data=payload, headers=self.headers) as resp:
                    raw = await resp.read()
                    status = resp.status
        except TimeoutError:
            raise BackendError(f"model {self.cfg.name!r}: upstream timed out after {timeout_s:.1f}s",
                               status=504, code="upstream_timeout") from None
        except (aiohttp.ClientError, OSError) as e:
            raise BackendError(f"model {self.cfg.name!r}: upstream connection failed ({type(e).__name__})") from None
        if status != 200:
            raise classify_status(self.cfg.name, status, raw[:300].decode("utf-8", "replace"))
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendError(f"model {self.cfg.name!r}: upstream returned invalid JSON") from None
        if not isinstance(data, dict) or "choices" not in data:
            raise BackendError(f"model {self.cfg.name!r}: upstream returned no 'choices'")
        return data

    async def chat_stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        b = self._prep(body)
        b["stream"] = True
        client_usage = bool((b.get("stream_options") or {}).get("include_usage"))
        if not client_usage:
            b["stream_options"] = {**(b.get("stream_options") or {}), "include_usage": True}
        assert self.session is not None
        name = self.cfg.name
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self.session.post(self.url, data=orjson.dumps(b), headers=self.headers)
        except TimeoutError:
            raise BackendError(f"model {name!r}: upstream timed out after {timeout_s:.1f}s", status=504,
                               code="upstream_timeout") from None
        except (aiohttp.ClientError, OSError) as e:
            raise BackendError(f"model {name!r}: upstream connection failed ({type(e).__name__})") from None
        try:
            if resp.status != 200:
                async with asyncio.timeout(timeout_s):
                    raw = await resp.read()
                raise classify_status(name, resp.status, raw[:300].decode("utf-8", "replace"))
            done = False
            while True:
                try:
                    async with asyncio.timeout(timeout_s):
                        line = await resp.content.readline()
                except TimeoutError:
                    raise BackendError(f"model {name!r}: stream stalled for {timeout_s:.1f}s", status=504,
                                       code="upstream_timeout") from None
                if not line:
                    break
                line = line.strip()
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
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                    raise BackendError(f"model {name!r}: upstream stream error: {err.get('message', '')}"[:400])
                if not client_usage and not chunk.get("choices") and chunk.get("usage"):
                    chunk["_usage_only"] = True
                yield chunk
            if not done:
                raise BackendError(f"model {name!r}: upstream stream ended without [DONE]")
        except (aiohttp.ClientError, OSError) as e:
            raise BackendError(f"model {name!r}: upstream stream broke ({type(e).__name__})") from None
        finally:
            resp.release()
