"""OpenAI chat completions (`POST /v1/chat/completions`): request validation, responses, SSE encoding.

`OPENAI_CHAT` is the API family the shared request pipeline (`llmroute.gateway.app`) runs chat
requests with. A chat body is already what backends take: it is validated (a 400, never a 500,
before anything runs) and routed as it is, unknown fields passing through; responses and stream
chunks go back as the backends produced them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.asgi import bad_request
from llmroute.gateway.backends.anthropic import PROMPT_TOKENS

if TYPE_CHECKING:
    from llmroute.gateway.auth import GatewayError
    from llmroute.gateway.routing import RequestContext

__all__ = ["DONE", "OPENAI_CHAT", "ROLES", "OpenAIChat", "OpenAIStream", "validate_chat"]

ROLES = frozenset(("system", "user", "assistant", "tool", "developer", "function"))
#: The last event of every OpenAI chat stream.
DONE = b"data: [DONE]\n\n"


def validate_chat(body: Any) -> None:
    """OpenAI chat request checks that must give a 400 (never a 500) before anything runs."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(
            "'model' is required and must be a non-empty string (a model name or an alias "
            "such as 'llmroute/auto').",
            "model",
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request(
            "'messages' is required and must be a non-empty array of {role, content} objects.", "messages"
        )
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object with 'role' and 'content'.", f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {sorted(ROLES)}.", f"messages[{i}].role")
        c = m.get("content")
        if c is not None and not isinstance(c, str | list):
            raise bad_request(
                f"messages[{i}].content must be a string or an array of content parts.",
                f"messages[{i}].content",
            )
    for k, types, what in (
        ("stream", (bool,), "a boolean"),
        ("temperature", (int, float), "a number"),
        ("top_p", (int, float), "a number"),
        ("max_tokens", (int,), "an integer"),
        ("max_completion_tokens", (int,), "an integer"),
        ("n", (int,), "an integer"),
        ("tools", (list,), "an array"),
        ("stream_options", (dict,), "an object"),
        ("llmroute", (dict,), 'an object such as {"tradeoff": 0.0, "max_cost": 0.01}'),
    ):
        v = body.get(k)
        if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
            raise bad_request(f"'{k}' must be {what}.", k)
    mt = body.get("max_tokens")
    if isinstance(mt, int) and mt <= 0:
        raise bad_request("'max_tokens' must be a positive integer.", "max_tokens")


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
        validate_chat(body)
        return body  # type: ignore[no-any-return]

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
