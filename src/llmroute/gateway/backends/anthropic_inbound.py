"""Anthropic -> OpenAI: an Anthropic Messages request routed to any backend, for the gateway's
own `POST /v1/messages` endpoint (`llmroute.gateway.api_anthropic`), and the OpenAI-shaped answer
back as a Messages response or event stream (`anthropic_to_openai_request`,
`openai_to_anthropic_response`, `OpenAIToAnthropicStream`).

The seam: one module per direction; the other one (an OpenAI request sent to an Anthropic model)
is `llmroute.gateway.backends.anthropic_outbound`, whose `PROMPT_TOKENS` chunk key this stream
reads.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmroute.gateway.backends.anthropic_outbound import PROMPT_TOKENS

__all__ = ["OpenAIToAnthropicStream", "anthropic_to_openai_request", "openai_to_anthropic_response"]

_STOP_O2A = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ---- Anthropic -> OpenAI (request), for the inbound /v1/messages endpoint ---------------------
def _document_text(block: dict[str, Any]) -> str:
    """A text-source Anthropic document block as plain text: its title and context, then the text."""
    src = block.get("source") or {}
    body = src.get("data") if src.get("type") == "text" else src.get("content")
    if not isinstance(body, str):
        body = "".join(x.get("text", "") for x in (body or []) if x.get("type") == "text")
    head = [str(block[k]) for k in ("title", "context") if block.get(k)]
    return "\n\n".join([*head, body or ""])


def _a2o_blocks(content: Any) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """(openai content, tool_calls, tool messages) for one Anthropic message content."""
    if isinstance(content, str):
        return content, [], []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []
    for b in content or []:
        t = b.get("type")
        if t == "text":
            parts.append({"type": "text", "text": b.get("text", "")})
        elif t == "image":
            s = b.get("source") or {}
            url = (
                s.get("url")
                if s.get("type") == "url"
                else f"data:{s.get('media_type')};base64,{s.get('data')}"
            )
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif t == "tool_use":
            calls.append(
                {
                    "id": b.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": b.get("name", ""),
                        "arguments": orjson.dumps(b.get("input") or {}).decode(),
                    },
                }
            )
        elif t == "document" and (b.get("source") or {}).get("type") in ("text", "content"):
            # a text document reaches any model as text (title and context first); base64/URL
            # (PDF) documents have no OpenAI chat equivalent yet and are not forwarded
            parts.append({"type": "text", "text": _document_text(b)})
        elif t == "tool_result":
            c = b.get("content")
            text = (
                c
                if isinstance(c, str)
                else "".join(x.get("text", "") for x in (c or []) if x.get("type") == "text")
            )
            tools.append({"role": "tool", "tool_call_id": b.get("tool_use_id", ""), "content": text})
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts), calls, tools
    return parts, calls, tools


def anthropic_to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body as an OpenAI chat-completions body (model name kept)."""
    msgs: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = system if isinstance(system, str) else "".join(b.get("text", "") for b in system)
        msgs.append({"role": "system", "content": text})
    for m in body.get("messages") or []:
        content, calls, tool_msgs = _a2o_blocks(m.get("content"))
        msgs.extend(tool_msgs)
        if m.get("role") == "assistant":
            out: dict[str, Any] = {"role": "assistant", "content": content or None}
            if calls:
                out["tool_calls"] = calls
            msgs.append(out)
        elif content or not tool_msgs:
            msgs.append({"role": m.get("role", "user"), "content": content})
    out_body: dict[str, Any] = {
        "model": body.get("model"),
        "messages": msgs,
        "max_tokens": body.get("max_tokens"),
    }
    for k in ("temperature", "top_p", "stream"):
        if body.get(k) is not None:
            out_body[k] = body[k]
    if body.get("stop_sequences"):
        out_body["stop"] = body["stop_sequences"]
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out_body["user"] = user
    if body.get("llmroute") is not None:  # the per-request policy, read (and removed) by the pipeline
        out_body["llmroute"] = body["llmroute"]
    if body.get("tools"):
        out_body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {},
                },
            }
            for t in body["tools"]
        ]
    tc = body.get("tool_choice")
    if isinstance(tc, dict):
        kind = tc.get("type")
        out_body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or {
            "type": "function",
            "function": {"name": tc.get("name", "")},
        }
    return out_body


def openai_to_anthropic_response(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic Messages response."""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {}
        content.append(
            {"type": "tool_use", "id": tc.get("id", ""), "name": fn.get("name", ""), "input": args}
        )
    u = resp.get("usage") or {}
    return {
        "id": resp.get("id", "msg_llmroute"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_O2A.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(u.get("prompt_tokens") or 0),
            "output_tokens": int(u.get("completion_tokens") or 0),
        },
    }


def _sse(name: str, data: dict[str, Any]) -> bytes:
    data = dict(data, type=name)
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class OpenAIToAnthropicStream:
    """Stateful: OpenAI chunk dicts in, Anthropic SSE event bytes out.

    `model`: the `model` of the message (the gateway passes the concrete model that answers).
    Usage follows Anthropic: `message_start` carries the input tokens (those an Anthropic
    upstream reported in its own `message_start`, marked `PROMPT_TOKENS` on the first chunk,
    else `input_tokens`, the caller's estimate), and the closing `message_delta` carries the
    final input and output tokens (the upstream's exact counts when it sent usage)."""

    def __init__(self, model: str, request_id: str, input_tokens: int = 0) -> None:
        self.model = model
        self.id = f"msg_{request_id}"
        self.started = False
        self.block: str | None = None  # "text" | "tool:<k>"
        self.index = -1
        self.stop = "end_turn"
        self.usage = {"input_tokens": int(input_tokens), "output_tokens": 0}

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return [
            _sse(
                "message_start",
                {
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": dict(self.usage),
                    }
                },
            )
        ]

    def _close_block(self) -> list[bytes]:
        if self.block is None:
            return []
        self.block = None
        return [_sse("content_block_stop", {"index": self.index})]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """Anthropic events for one OpenAI chunk."""
        if not self.started and chunk.get(PROMPT_TOKENS):
            self.usage["input_tokens"] = int(chunk[PROMPT_TOKENS])
        out = self._start()
        if chunk.get("usage"):
            u = chunk["usage"]
            self.usage = {
                "input_tokens": int(u.get("prompt_tokens") or 0) or self.usage["input_tokens"],
                "output_tokens": int(u.get("completion_tokens") or 0),
            }
        for ch in chunk.get("choices") or []:
            d = ch.get("delta") or {}
            if d.get("content"):
                if self.block != "text":
                    out += self._close_block()
                    self.index += 1
                    self.block = "text"
                    out.append(
                        _sse(
                            "content_block_start",
                            {"index": self.index, "content_block": {"type": "text", "text": ""}},
                        )
                    )
                out.append(
                    _sse(
                        "content_block_delta",
                        {"index": self.index, "delta": {"type": "text_delta", "text": d["content"]}},
                    )
                )
            for tc in d.get("tool_calls") or []:
                key = f"tool:{tc.get('index', 0)}"
                fn = tc.get("function") or {}
                if self.block != key:
                    out += self._close_block()
                    self.index += 1
                    self.block = key
                    out.append(
                        _sse(
                            "content_block_start",
                            {
                                "index": self.index,
                                "content_block": {
                                    "type": "tool_use",
                                    "id": tc.get("id", ""),
                                    "name": fn.get("name", ""),
                                    "input": {},
                                },
                            },
                        )
                    )
                if fn.get("arguments"):
                    out.append(
                        _sse(
                            "content_block_delta",
                            {
                                "index": self.index,
                                "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]},
                            },
                        )
                    )
            if ch.get("finish_reason"):
                self.stop = _STOP_O2A.get(ch["finish_reason"], "end_turn")
        return out

    def finish(self) -> list[bytes]:
        """The closing events."""
        out = self._start() + self._close_block()
        out.append(
            _sse(
                "message_delta",
                {
                    "delta": {"stop_reason": self.stop, "stop_sequence": None},
                    "usage": dict(self.usage),
                },
            )
        )
        out.append(_sse("message_stop", {}))
        return out

    @staticmethod
    def error(message: str, etype: str = "api_error") -> bytes:
        """An Anthropic error event."""
        return _sse("error", {"error": {"type": etype, "message": message}})
