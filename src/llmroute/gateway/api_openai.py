"""OpenAI chat completions (`POST /v1/chat/completions`): request validation, responses, SSE encoding.

`OPENAI_CHAT` is the API family the shared request pipeline (`llmroute.gateway.app`) runs chat
requests with. A chat body is already what backends take: it is validated against `schemas.ChatRequest`
(a 400, never a 500, before anything runs) and routed as it is, unknown fields passing through; responses and stream
chunks go back as the backends produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.asgi import bad_request
from llmroute.gateway.backends.anthropic import PROMPT_TOKENS
from llmroute.gateway.schemas import ChatRequest, validate

if TYPE_CHECKING:
    from llmroute.gateway.auth import GatewayError
    from llmroute.gateway.routing import RequestContext

__all__ = [
    "DONE",
    "OPENAI_CHAT",
    "OpenAIChat",
    "OpenAIStream",
    "check_output_fits",
    "validate_chat",
]

#: The last event of every OpenAI chat stream.
DONE = b"data: [DONE]\n\n"


def check_output_fits(body: dict[str, Any], windows: Sequence[tuple[str, int | None]]) -> None:
    """400 naming `max_tokens` (or `max_completion_tokens`) when the requested output is larger than
    the context window of every candidate in `windows` ((model, window or None: unknown) pairs)."""
    key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    want = body.get(key)
    if not isinstance(want, int) or not windows:
        return
    if any(w is None or want <= w for _, w in windows):
        return
    largest = max(w for _, w in windows if w is not None)
    names = ", ".join(f"{m} ({w})" for m, w in windows)
    raise bad_request(
        f"'{key}' is {want}, beyond the context window of every model this request can use "
        f"({names}); ask for at most {largest}.",
        key,
    )


def validate_chat(body: Any) -> dict[str, Any]:
    """The chat body checked against `schemas.ChatRequest` (a 400 naming the field, never a 500,
    before anything runs; integral floats of integer fields become ints); unknown top-level fields
    pass through, only the `llmroute` object is strict."""
    return validate(body, ChatRequest)


class OpenAIStream:
    """A chat stream's chunks as OpenAI SSE events. Stateless: one instance serves every stream."""

    __slots__ = ()

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """One chunk's event; the backends' private markers are dropped (a usage-only chunk that
        the client did not ask for sends nothing)."""
        chunk.pop(PROMPT_TOKENS, None)
        if chunk.pop("_usage_only", False):
            return b""
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def finish(self) -> bytes:
        """The end of a complete stream."""
        return DONE

    def fail(self, message: str) -> bytes:
        """The end of a stream the upstream broke off: an error event, then `[DONE]`."""
        err = {
            "error": {
                "message": message,
                "type": "upstream_error",
                "param": None,
                "code": "stream_interrupted",
            }
        }
        return b"data: " + orjson.dumps(err) + b"\n\n" + DONE


class OpenAIChat:
    """The OpenAI chat completions family of the shared pipeline (see `llmroute.gateway.app.ApiFamily`)."""

    __slots__ = ("_stream",)

    #: `RequestContext.endpoint` of its requests (rules and traces see it)
    endpoint = "chat"

    def __init__(self) -> None:
        self._stream = OpenAIStream()

    def parse(self, body: Any) -> dict[str, Any]:
        """The validated chat body, routed as it is."""
        return validate_chat(body)

    def error_body(self, e: GatewayError) -> bytes:
        """The OpenAI error body `{"error": {"message", "type", "param", "code"}}`."""
        return orjson.dumps(e.body())

    def response(self, resp: dict[str, Any], model: str) -> dict[str, Any]:
        """The backend's chat completion, as it is."""
        return resp

    def stream(self, model: str, rid: str, ctx: RequestContext) -> OpenAIStream:
        """The encoder of one streamed response (stateless, shared)."""
        return self._stream

    def replay(self, events: list[bytes], model: str, rid: str, ctx: RequestContext) -> bytes:
        """A cached response's OpenAI SSE events (`llmroute.cache.replay_sse`), as they are."""
        return b"".join(events)


OPENAI_CHAT = OpenAIChat()
