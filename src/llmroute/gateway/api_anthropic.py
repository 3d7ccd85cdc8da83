"""Anthropic Messages (`POST /v1/messages`): request validation, Anthropic error bodies, and the
response / stream shapes of a Messages request routed to any backend.

`ANTHROPIC_MESSAGES` is the API family the shared request pipeline (`llmroute.gateway.app`) runs
Messages requests with: the body is validated, translated to an OpenAI chat request (what every
backend takes) and routed like a chat request; the OpenAI-format answer is translated back. The
translations themselves live in `llmroute.gateway.backends.anthropic`, which the Anthropic backend
shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.api_openai import check_number
from llmroute.gateway.asgi import bad_request
from llmroute.gateway.backends.anthropic import (
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)

if TYPE_CHECKING:
    from llmroute.gateway.auth import GatewayError
    from llmroute.gateway.routing import RequestContext

__all__ = [
    "ANTHROPIC_MESSAGES",
    "MESSAGE_BLOCKS",
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


# ---- request validation ----------------------------------------------------------------------
# Every check names the offending field by its JSON path (`messages[0].content[2].source.data`)
# in the message and in the error's `param`; the endpoint answers it as an Anthropic
# `invalid_request_error` (see `error_body`).
_ROLES = ("user", "assistant")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_CHOICES = ("auto", "any", "tool", "none")


def _bad(path: str, what: str) -> GatewayError:
    return bad_request(f"'{path}' {what}", path)


def _string(v: Any, path: str, *, required: bool = True) -> None:
    if v is None and not required:
        return
    if not isinstance(v, str):
        raise _bad(path, "must be a string." if required else "must be a string when given.")


def _object(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(path, "must be an object.")
    return v


def _cache_control(b: dict[str, Any], path: str) -> None:
    cc = b.get("cache_control")
    if cc is not None and not isinstance(cc, dict):
        raise _bad(f"{path}.cache_control", 'must be an object such as {"type": "ephemeral"}.')


def _text_block(b: dict[str, Any], path: str) -> None:
    _string(b.get("text"), f"{path}.text")
    _cache_control(b, path)
    if b.get("citations") is not None and not isinstance(b["citations"], list):
        raise _bad(f"{path}.citations", "must be an array when given.")


def _image_block(b: dict[str, Any], path: str) -> None:
    s = _object(b.get("source"), f"{path}.source")
    kind = s.get("type")
    if kind == "base64":
        if s.get("media_type") not in _IMAGE_TYPES:
            raise _bad(f"{path}.source.media_type", f"must be one of {list(_IMAGE_TYPES)}.")
        _string(s.get("data"), f"{path}.source.data")
    elif kind == "url":
        _string(s.get("url"), f"{path}.source.url")
    else:
        raise _bad(f"{path}.source.type", "must be 'base64' or 'url' (file sources are not supported).")
    _cache_control(b, path)


def _document_block(b: dict[str, Any], path: str) -> None:
    s = _object(b.get("source"), f"{path}.source")
    kind = s.get("type")
    if kind in ("base64", "text"):
        _string(s.get("media_type"), f"{path}.source.media_type")
        _string(s.get("data"), f"{path}.source.data")
    elif kind == "url":
        _string(s.get("url"), f"{path}.source.url")
    elif kind == "content":
        c = s.get("content")
        if isinstance(c, list):
            _blocks(c, f"{path}.source.content", ("text", "image"))
        elif not isinstance(c, str):
            raise _bad(f"{path}.source.content", "must be a string or an array of text / image blocks.")
    else:
        raise _bad(
            f"{path}.source.type",
            "must be 'base64', 'text', 'url' or 'content' (file sources are not supported).",
        )
    for k in ("title", "context"):
        _string(b.get(k), f"{path}.{k}", required=False)
    if b.get("citations") is not None and not isinstance(b["citations"], dict):
        raise _bad(f"{path}.citations", 'must be an object such as {"enabled": true} when given.')
    _cache_control(b, path)


def _tool_use_block(b: dict[str, Any], path: str) -> None:
    _string(b.get("id"), f"{path}.id")
    _string(b.get("name"), f"{path}.name")
    _object(b.get("input"), f"{path}.input")
    _cache_control(b, path)


def _tool_result_block(b: dict[str, Any], path: str) -> None:
    _string(b.get("tool_use_id"), f"{path}.tool_use_id")
    c = b.get("content")
    if isinstance(c, list):
        _blocks(c, f"{path}.content", ("text", "image", "document"))
    elif c is not None and not isinstance(c, str):
        raise _bad(f"{path}.content", "must be a string or an array of text / image blocks.")
    if b.get("is_error") is not None and not isinstance(b["is_error"], bool):
        raise _bad(f"{path}.is_error", "must be a boolean.")
    _cache_control(b, path)


def _thinking_block(b: dict[str, Any], path: str) -> None:
    _string(b.get("thinking"), f"{path}.thinking")
    _string(b.get("signature"), f"{path}.signature")


def _redacted_thinking_block(b: dict[str, Any], path: str) -> None:
    _string(b.get("data"), f"{path}.data")


_BLOCKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "text": _text_block,
    "image": _image_block,
    "document": _document_block,
    "tool_use": _tool_use_block,
    "tool_result": _tool_result_block,
    "thinking": _thinking_block,
    "redacted_thinking": _redacted_thinking_block,
}
#: The content block types a message may hold.
MESSAGE_BLOCKS = tuple(_BLOCKS)


def _blocks(blocks: list[Any], path: str, allowed: tuple[str, ...]) -> None:
    """Check every block of a content array (`allowed`: the block types this array may hold)."""
    for j, b in enumerate(blocks):
        bp = f"{path}[{j}]"
        if not isinstance(b, dict):
            raise _bad(bp, f"must be a content block object with a 'type' (one of {list(allowed)}).")
        t = b.get("type")
        if not isinstance(t, str) or t not in allowed:
            raise _bad(f"{bp}.type", f"must be one of {list(allowed)}.")
        _BLOCKS[t](b, bp)


def _tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _bad("tools", "must be an array of {name, description, input_schema} objects.")
    for i, t in enumerate(tools):
        tp = f"tools[{i}]"
        if not isinstance(t, dict):
            raise _bad(tp, "must be an object {name, description, input_schema}.")
        if t.get("type") not in (None, "custom"):
            raise _bad(f"{tp}.type", "must be 'custom' when given (server tools are not supported).")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise _bad(f"{tp}.name", "is required and must be a non-empty string.")
        _string(t.get("description"), f"{tp}.description", required=False)
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(
                f"{tp}.input_schema",
                'is required and must be a JSON Schema object ({"type": "object", ...}).',
            )
        if schema.get("type", "object") != "object":
            raise _bad(f"{tp}.input_schema.type", "must be 'object'.")
        _cache_control(t, tp)


def _tool_choice(tc: Any) -> None:
    if not isinstance(tc, dict):
        raise _bad("tool_choice", 'must be an object such as {"type": "auto"}.')
    kind = tc.get("type")
    if not isinstance(kind, str) or kind not in _TOOL_CHOICES:
        raise _bad("tool_choice.type", f"must be one of {list(_TOOL_CHOICES)}.")
    if kind == "tool" and (not isinstance(tc.get("name"), str) or not tc["name"]):
        raise _bad("tool_choice.name", "is required for type 'tool' and must be a non-empty string.")
    dp = tc.get("disable_parallel_tool_use")
    if dp is not None and not isinstance(dp, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "must be a boolean.")


def validate_messages(body: Any) -> None:
    """Check an Anthropic Messages request; any violation is a 400 `GatewayError` naming the field
    by its path (never a 500), raised before anything else runs (auth, routing, budget holds).

    Checked: `model` (non-empty string), `max_tokens` (positive integer), `messages` (non-empty
    array of {role: user | assistant, content: string | array of text, image, document, tool_use,
    tool_result, thinking, redacted_thinking blocks}; tool_result content a string or text / image
    / document blocks), `system` (string or text blocks), `tools` ({name, description?,
    input_schema}), `tool_choice`, `stop_sequences` (strings), `temperature` and `top_p` ([0, 1]),
    `top_k` (integer >= 0), `stream` (boolean), `metadata` (object; `user_id` a string). A null
    optional field counts as absent; other fields are ignored. Integral floats (417.0) are valid
    integers: `max_tokens` and `top_k` are rewritten as ints in `body`.
    """
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model", "is required and must be a non-empty string (a model name or an alias).")
    check_number(body, "max_tokens", 1, integer=True, required=True)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "is required and must be a non-empty array of {role, content} objects.")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", "must be an object {role, content}.")
        if m.get("role") not in _ROLES:
            raise _bad(f"messages[{i}].role", "must be 'user' or 'assistant'.")
        c = m.get("content")
        if isinstance(c, list):
            _blocks(c, f"messages[{i}].content", MESSAGE_BLOCKS)
        elif not isinstance(c, str):
            raise _bad(f"messages[{i}].content", "must be a string or an array of content blocks.")
    system = body.get("system")
    if isinstance(system, list):
        _blocks(system, "system", ("text",))
    elif system is not None and not isinstance(system, str):
        raise _bad("system", "must be a string or an array of text blocks.")
    if body.get("tools") is not None:
        _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"])
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list):
            raise _bad("stop_sequences", "must be an array of strings.")
        for i, s in enumerate(stop):
            _string(s, f"stop_sequences[{i}]")
    check_number(body, "temperature", 0, 1)
    check_number(body, "top_p", 0, 1)
    check_number(body, "top_k", 0, integer=True)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _bad("stream", "must be a boolean.")
    meta = body.get("metadata")
    if meta is not None:
        _object(meta, "metadata")
        _string(meta.get("user_id"), "metadata.user_id", required=False)


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
        validate_messages(body)
        return anthropic_to_openai_request(body)

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
