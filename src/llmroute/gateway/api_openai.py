"""OpenAI chat completions (`POST /v1/chat/completions`): request validation, responses, SSE encoding.

`OPENAI_CHAT` is the API family the shared request pipeline (`llmroute.gateway.app`) runs chat
requests with. A chat body is already what backends take: it is validated (a 400, never a 500,
before anything runs) and routed as it is, unknown fields passing through; responses and stream
chunks go back as the backends produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.asgi import bad_request
from llmroute.gateway.backends.anthropic import PROMPT_TOKENS

if TYPE_CHECKING:
    from llmroute.gateway.auth import GatewayError
    from llmroute.gateway.routing import RequestContext

__all__ = [
    "DONE",
    "OPENAI_CHAT",
    "ROLES",
    "OpenAIChat",
    "OpenAIStream",
    "check_number",
    "check_output_fits",
    "validate_chat",
]

ROLES = frozenset(("system", "user", "assistant", "tool", "developer", "function"))
#: Upper bounds of `n` (OpenAI's) and of the token counts (a 32-bit int: upstream APIs take no more).
MAX_N, MAX_TOKENS = 128, 2**31 - 1
#: The chat request's numeric fields: (name, minimum, maximum, integer), as OpenAI documents them.
_NUMBERS: tuple[tuple[str, float | None, float | None, bool], ...] = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("presence_penalty", -2, 2, False),
    ("frequency_penalty", -2, 2, False),
    ("n", 1, MAX_N, True),
    ("max_tokens", 1, MAX_TOKENS, True),
    ("max_completion_tokens", 1, MAX_TOKENS, True),
)
#: The last event of every OpenAI chat stream.
DONE = b"data: [DONE]\n\n"


def check_number(
    body: dict[str, Any],
    key: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    required: bool = False,
) -> None:
    """400 naming `key` unless `body[key]` is absent/null (allowed unless `required`) or a number in
    [`lo`, `hi`] (either bound None: open). With `integer`, an integral float such as 417.0 is
    accepted and stored back as the int 417 (what upstream APIs expect); 417.5 is a 400."""
    v = body.get(key)
    if v is None and not required:
        return
    if isinstance(v, float) and integer and v.is_integer():
        v = body[key] = int(v)
    if not isinstance(v, int | float) or isinstance(v, bool) or (integer and not isinstance(v, int)):
        what = "an integer" if integer else "a number"
        raise bad_request(f"'{key}' {'is required and ' if required else ''}must be {what}.", key)
    if (lo is not None and not v >= lo) or (hi is not None and not v <= hi):  # NaN fails both
        if hi is None:
            want = f">= {lo:g}" if not (integer and lo == 1) else "a positive integer"
        elif lo is None:
            want = f"<= {hi:g}"
        else:
            want = f"between {lo:g} and {hi:g}"
        raise bad_request(f"'{key}' must be {want}, got {v}.", key)


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
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {sorted(ROLES)}.", f"messages[{i}].role")
        c = m.get("content")
        if c is not None and not isinstance(c, str | list):
            raise bad_request(
                f"messages[{i}].content must be a string or an array of content parts.",
                f"messages[{i}].content",
            )
    for k, lo, hi, integer in _NUMBERS:
        if k in body:
            check_number(body, k, lo, hi, integer=integer)
    for k, types, what in (
        ("stream", (bool,), "a boolean"),
        ("tools", (list,), "an array"),
        ("stream_options", (dict,), "an object"),
        ("llmroute", (dict,), 'an object such as {"tradeoff": 0.0, "max_cost": 0.01}'),
    ):
        v = body.get(k)
        if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
            raise bad_request(f"'{k}' must be {what}.", k)
    for i, t in enumerate(body.get("tools") or ()):
        if not isinstance(t, dict):
            raise bad_request(
                f"tools[{i}] must be an object such as {{'type': 'function', ...}}.", f"tools[{i}]"
            )


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
