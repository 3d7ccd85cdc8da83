"""Anthropic Messages (`POST /v1/messages`): request validation, Anthropic error bodies, and the
response / stream shapes of a Messages request routed to any backend.

`ANTHROPIC_MESSAGES` is the API family the shared request pipeline (`llmroute.gateway.app`) runs
Messages requests with: the body is validated, translated to an OpenAI chat request (what every
backend takes) and routed like a chat request; the OpenAI-format answer is translated back. The
translations themselves live in `llmroute.gateway.backends.anthropic`, which the Anthropic backend
shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.backends.anthropic import (
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from llmroute.gateway.schemas import MessagesRequest, validate

if TYPE_CHECKING:
    from llmroute.gateway.auth import GatewayError
    from llmroute.gateway.routing import RequestContext

__all__ = [
    "ANTHROPIC_MESSAGES",
    "AnthropicMessages",
    "MessagesStream",
    "error_body",
    "input_tokens",
    "validate_messages",
]

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def validate_messages(body: Any) -> dict[str, Any]:
    """Check an Anthropic Messages request against `schemas.MessagesRequest`; any violation is a
    400 `GatewayError` naming the field by its path (never a 500), raised before anything else runs
    (auth, routing, budget holds), answered as an Anthropic `invalid_request_error`. A null optional
    field counts as absent; unknown fields are ignored. Integral floats (417.0) are valid integers:
    `max_tokens` and `top_k` are rewritten as ints in `body`."""
    return validate(body, MessagesRequest)


def error_body(e: GatewayError) -> bytes:
    """The Anthropic error body `{"type": "error", "error": {"type", "message"}}` for `e`."""
    etype = _ERROR_TYPES.get(e.status, "invalid_request_error" if e.status < 500 else "api_error")
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": e.message}})


def input_tokens(ctx: RequestContext) -> int:
    """The prompt's input tokens as far as the gateway can tell before any upstream usage arrives
    (about 4 characters per token: the estimate routing uses)."""
    return max(1, round(len(ctx.text) / 4))


class MessagesStream:
    """A chat stream's OpenAI chunks as Anthropic Messages SSE events (one per streamed response)."""

    __slots__ = ("_conv",)

    def __init__(self, model: str, rid: str, input_tokens: int) -> None:
        self._conv = OpenAIToAnthropicStream(model, rid, input_tokens)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events one chunk makes (`message_start` before the first)."""
        return b"".join(self._conv.feed(chunk))

    def finish(self) -> bytes:
        """The end of a complete stream (`message_delta` with the stop reason and usage, `message_stop`)."""
        return b"".join(self._conv.finish())

    def fail(self, message: str) -> bytes:
        """The end of a stream the upstream broke off: an Anthropic `error` event."""
        return OpenAIToAnthropicStream.error(message)


class AnthropicMessages:
    """The Anthropic Messages family of the shared pipeline (see `llmroute.gateway.app.ApiFamily`)."""

    __slots__ = ()

    #: `RequestContext.endpoint` of its requests (rules and traces see it)
    endpoint = "messages"

    def parse(self, body: Any) -> dict[str, Any]:
        """The validated Messages body as the OpenAI chat request to route."""
        return anthropic_to_openai_request(validate_messages(body))

    def error_body(self, e: GatewayError) -> bytes:
        """The Anthropic error body (see `error_body`)."""
        return error_body(e)

    def response(self, resp: dict[str, Any], model: str) -> dict[str, Any]:
        """The backend's chat completion as an Anthropic Message from `model`."""
        return openai_to_anthropic_response(resp, model)

    def stream(self, model: str, rid: str, ctx: RequestContext) -> MessagesStream:
        """The encoder of one streamed response."""
        return MessagesStream(model, rid, input_tokens(ctx))

    def replay(self, events: list[bytes], model: str, rid: str, ctx: RequestContext) -> bytes:
        """A cached response's OpenAI SSE events (`llmroute.cache.replay_sse`, ending in `[DONE]`) as
        one Anthropic Messages stream."""
        enc = self.stream(model, rid, ctx)
        return b"".join(enc.feed(orjson.loads(e[6:])) for e in events[:-1]) + enc.finish()


ANTHROPIC_MESSAGES = AnthropicMessages()
