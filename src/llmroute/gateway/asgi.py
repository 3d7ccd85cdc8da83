"""ASGI plumbing every gateway endpoint shares: the callable types, one-shot responses, JSON request
bodies, error answers and the `x-llmroute-*` trace headers.

No gateway state lives here: `llmroute.gateway.app` (the shared request pipeline) and the endpoint
families (`api_openai`, `api_anthropic`, `api_ops`) call these functions with what they need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.auth import GatewayError

if TYPE_CHECKING:
    from llmroute.gateway.routing import RouteDecision

__all__ = [
    "JSON",
    "MAX_JSON_DEPTH",
    "SSE",
    "ErrorLog",
    "Handler",
    "Headers",
    "Receive",
    "Scope",
    "Send",
    "bad_request",
    "header",
    "json_too_deep",
    "read_json",
    "rejected_headers",
    "request_headers",
    "send_error",
    "send_response",
    "trace_headers",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: An endpoint: one ASGI HTTP request in, the whole response sent.
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = (b"content-type", b"application/json")
SSE = (b"content-type", b"text/event-stream")
#: Default nesting limit of a JSON request body (`server.max_json_depth`): deeper bodies are a 400.
MAX_JSON_DEPTH = 64


def header(name: bytes, value: str) -> tuple[bytes, bytes]:
    """One ASGI response header; characters latin-1 cannot carry become '?'."""
    return name, value.encode("latin-1", "replace")


def bad_request(
    message: str, param: str | None = None, status: int = 400, code: str | None = None
) -> GatewayError:
    """A client error (400 unless `status` says otherwise) naming the offending field `param`."""
    return GatewayError(status, message, param=param, code=code)


async def send_response(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """Send a complete response: `headers` (a `content-length` is appended to the list) and `body`."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, e: GatewayError, extra: Headers | None = None, body: bytes | None = None
) -> None:
    """Answer `e`: its status, the `extra` headers then the error's own (e.g. `Retry-After`), and
    `body` (an API family's error body; default the OpenAI-style `e.body()`)."""
    headers = [JSON, *(extra or ())]
    headers += [header(k.lower().encode(), v) for k, v in e.headers.items()]
    await send_response(send, e.status, orjson.dumps(e.body()) if body is None else body, headers)


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers as a dict of lower-case names (the last of repeated names wins)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _too_large(max_body: int) -> GatewayError:
    return GatewayError(
        413, f"Request body too large: the limit is {max_body} bytes.", code="request_too_large"
    )


def json_too_deep(raw: bytes, obj: Any, limit: int) -> bool:
    """Whether the parsed JSON `obj` (decoded from `raw`) nests arrays/objects more than `limit` deep.

    Cheap on the hot path: a body with at most `limit` brackets cannot be deeper (two C-speed byte
    counts, ~0.5 us); only bodies with more brackets are walked, one level at a time, stopping at
    the first level without containers (~20 us for an 80-message conversation)."""
    if raw.count(b"[") + raw.count(b"{") <= limit or not isinstance(obj, dict | list):
        return False
    level: list[Any] = [obj]
    for _ in range(limit):
        deeper: list[Any] = []
        for node in level:
            for c in node.values() if type(node) is dict else node:
                if type(c) is dict or type(c) is list:
                    deeper.append(c)
        if not deeper:
            return False
        level = deeper
    return True


async def read_json(scope: Scope, receive: Receive, max_body: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The request body parsed as JSON. A 413 beyond `max_body` bytes (by Content-Length or as
    received), a 400 for an empty or invalid body or one nesting arrays/objects deeper than
    `max_depth`; a client that disconnects while sending it cancels the request
    (`asyncio.CancelledError`)."""
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                if int(v) > max_body:
                    raise _too_large(max_body)
            except ValueError:
                raise bad_request("Invalid Content-Length header.") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise asyncio.CancelledError
        b = msg.get("body", b"")
        if b:
            size += len(b)
            if size > max_body:
                raise _too_large(max_body)
            chunks.append(b)
        if not msg.get("more_body"):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if e.msg == "depth limit exceeded":  # orjson's own limit (1024) is above any max_depth
            raise _too_deep(max_depth) from None
        raise bad_request(f"The request body is not valid JSON: {e.msg} at position {e.pos}.") from None
    if json_too_deep(raw, obj, max_depth):
        raise _too_deep(max_depth)
    return obj


def _too_deep(max_depth: int) -> GatewayError:
    return bad_request(
        f"The request body nests arrays/objects more than {max_depth} levels deep "
        "(server.max_json_depth); flatten it.",
        code="json_too_deep",
    )


class ErrorLog:
    """Logs unexpected exceptions without flooding the log: per kind (exception type and where it
    was raised) the first one in each `window_s` with its traceback, then only a count of the ones
    that followed, logged with the next one after the window."""

    def __init__(
        self, logger: logging.Logger, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.window_s = window_s
        self.clock = clock
        # kind -> [start of its window, errors suppressed in it]
        self._kinds: dict[tuple[str, str, int], list[float]] = {}

    @staticmethod
    def kind(exc: BaseException) -> tuple[str, str, int]:
        """An exception's kind: its type and the file and line it was raised at."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
        return type(exc).__qualname__, *where

    def exception(self, exc: BaseException, message: str, *args: Any) -> bool:
        """Log `exc` under `message % args` unless its kind was logged within the window; returns
        whether it was logged."""
        now = self.clock()
        k = self.kind(exc)
        row = self._kinds.get(k)
        if row is not None and now - row[0] < self.window_s:
            row[1] += 1
            return False
        suppressed = int(row[1]) if row is not None else 0
        if len(self._kinds) > 1024:  # bounded: forget old kinds
            self._kinds.clear()
        self._kinds[k] = [now, 0]
        if suppressed:
            message += f" ({suppressed} more of this kind in the last {self.window_s:g} s not logged)"
        self.logger.error(message, *args, exc_info=exc)
        return True

    def flush(self) -> None:
        """Log the count of each kind's errors not logged yet (e.g. at shutdown), and forget them."""
        for (name, path, line), row in self._kinds.items():
            if row[1]:
                self.logger.error(
                    "%d more %s errors (raised at %s:%d) not logged", int(row[1]), name, path, line
                )
        self._kinds.clear()


def trace_headers(rid: str, model: str, reason: str, decision: RouteDecision | None = None) -> Headers:
    """`x-llmroute-request-id`, `-model`, `-reason`, plus the decision's constraint / rule headers
    (`RouteDecision.headers`) when a per-request policy or a rule shaped it."""
    out = [
        header(b"x-llmroute-request-id", rid),
        header(b"x-llmroute-model", model),
        header(b"x-llmroute-reason", reason),
    ]
    if decision is not None and decision.policy:
        out += [header(k.encode(), v) for k, v in decision.headers()]
    return out


def rejected_headers(rid: str, decision: RouteDecision | None, e: GatewayError) -> Headers:
    """Trace headers for a request refused before any upstream call (no model was called)."""
    model = decision.model if decision is not None else "none"
    return trace_headers(rid, model, f"rejected {e.status} {e.code or e.type}")
