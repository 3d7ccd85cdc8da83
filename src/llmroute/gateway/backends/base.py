"""The backend contract: one upstream model behind a uniform OpenAI-chat-shaped interface.

Every backend takes an OpenAI chat-completions request body (a dict; fields it does not know are
passed through untouched where the upstream API allows it) and returns an OpenAI chat-completion
dict, or, for streams, an async iterator of lists of OpenAI `chat.completion.chunk` dicts (the
chunks that arrived together). Failures raise
`BackendError`, which says whether the same backend may be retried and whether the gateway may
fall back to another candidate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from llmroute.gateway.config import ModelConfig

__all__ = ["Backend", "BackendError", "classify_status"]


class BackendError(Exception):
    """An upstream call failed.

    `status` is what the client sees if no fallback succeeds; `retryable`: the same backend may
    succeed on a retry (timeouts, resets, 429, 5xx); `fallback`: another model may be tried (False
    for errors caused by the request itself, e.g. an upstream 400, which go straight back).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        retryable: bool = True,
        fallback: bool = True,
        code: str = "upstream_error",
        etype: str = "upstream_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.fallback = fallback
        self.code = code
        self.etype = etype
        self.param = param  # the request field at fault, for client errors


def classify_status(model: str, status: int, detail: str = "") -> BackendError:
    """The `BackendError` for an upstream HTTP error status."""
    detail = detail[:300]
    if status == 429:
        return BackendError(
            f"model {model!r}: upstream rate limit (429) {detail}".strip(),
            status=429,
            code="upstream_rate_limited",
            etype="rate_limit_error",
        )
    if status >= 500 or status == 408:
        return BackendError(f"model {model!r}: upstream error {status} {detail}".strip(), status=502)
    if status in (401, 403):
        return BackendError(
            f"model {model!r}: upstream rejected the gateway's credentials ({status})",
            status=502,
            retryable=False,
            code="upstream_auth_failed",
        )
    return BackendError(
        f"model {model!r}: upstream rejected the request ({status}) {detail}".strip(),
        status=status if 400 <= status < 500 else 502,
        retryable=False,
        fallback=False,
        code="upstream_bad_request",
        etype="invalid_request_error",
    )


class Backend(Protocol):
    """One upstream model."""

    cfg: ModelConfig

    async def start(self, session: Any) -> None:
        """Bind to the shared aiohttp session (called once at gateway startup)."""
        ...

    async def close(self) -> None:
        """Release resources (the shared session is closed by the gateway)."""
        ...

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One non-streaming completion in OpenAI format."""
        ...

    def chat_stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[list[dict[str, Any]]]:
        """Lists of OpenAI chunk dicts, one list per burst that arrived together (forwarded in one
        write); `timeout_s` bounds the wait for each burst."""
        ...


async def post_json(
    client: Any, url: str, headers: dict[str, str], payload: bytes, model: str, timeout_s: float
) -> Any:
    """POST `payload` and return the decoded JSON answer of a non-streamed call (at most `timeout_s`).

    Timeouts, connection failures, non-200 statuses and invalid JSON become `BackendError`.
    """
    try:
        async with asyncio.timeout(timeout_s):
            resp = await client.request("POST", url, headers, payload)
    except TimeoutError:
        raise BackendError(
            f"model {model!r}: upstream timed out after {timeout_s:.1f}s", status=504, code="upstream_timeout"
        ) from None
    except OSError as e:
        raise BackendError(f"model {model!r}: upstream connection failed ({e})") from None
    if resp.status != 200:
        raise classify_status(model, resp.status, resp.body[:300].decode("utf-8", "replace"))
    try:
        return orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        raise BackendError(f"model {model!r}: upstream returned invalid JSON") from None


async def open_stream(
    client: Any, url: str, headers: dict[str, str], payload: bytes, model: str, timeout_s: float
) -> Any:
    """POST `payload` and wait (at most `timeout_s`) for the response head of a streamed call.

    Returns the client's stream response; timeouts and connection failures become `BackendError`.
    """
    ctx = client.stream("POST", url, headers, payload)
    try:
        async with asyncio.timeout(timeout_s):
            return await ctx.__aenter__()
    except TimeoutError:
        raise BackendError(
            f"model {model!r}: upstream timed out after {timeout_s:.1f}s", status=504, code="upstream_timeout"
        ) from None
    except OSError as e:
        raise BackendError(f"model {model!r}: upstream connection failed ({e})") from None


async def next_lines(batches: AsyncIterator[list[bytes]], model: str, timeout_s: float) -> list[bytes] | None:
    """The next batch of stream lines (None at the end); a stall longer than `timeout_s` is a `BackendError`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await anext(batches, None)
    except TimeoutError:
        raise BackendError(
            f"model {model!r}: stream stalled for {timeout_s:.1f}s", status=504, code="upstream_timeout"
        ) from None
