"""Anthropic Messages API: the backend, and the translations both ways used by it and by the
gateway's own `POST /v1/messages` endpoint.

- `openai_to_anthropic_request` / `anthropic_to_openai_response` / `AnthropicToOpenAIStream`:
  an OpenAI chat request sent to an Anthropic model (the backend).
- `anthropic_to_openai_request` / `openai_to_anthropic_response` / `OpenAIToAnthropicStream`:
  an Anthropic Messages request routed to any backend (the inbound endpoint).
Text, system prompts, images (URL / base64), tool definitions, tool_choice, tool calls and tool
results, stop sequences, usage and stop reasons are translated, streaming included.

OpenAI `response_format` on an Anthropic model (see `response_format_plan`):

- `{"type": "json_schema", "json_schema": {"name", "schema", "description"?}}`: the schema is sent
  as one extra tool (`input_schema` = the schema, name sanitised to `[a-zA-Z0-9_-]{1,64}` and made
  distinct from the client's tools) that the model is forced to call; the tool_use input comes back
  as the assistant `content` (a JSON string; streamed as content deltas), `finish_reason` "stop",
  no `tool_calls`. A root schema without `"type"` is sent as an object schema; a non-object root
  type is a 400 (Anthropic tool inputs are objects). `strict` is not forwarded: adherence is the
  model's, not guaranteed by a constrained decoder.
  With the client's own tools as well, they are kept and the model must call some tool
  (`tool_choice` "auto"/absent -> Anthropic `any`; "none" -> forced response tool): a call of a
  client tool comes back as a normal `tool_calls` entry, a call of the response tool as `content`.
  With `tool_choice` "required" or a named function the response tool is not added (the answer
  is a tool call either way).
- `{"type": "json_object"}`: a short instruction to answer with a single JSON object and nothing
  else is appended to the system prompt.
- `{"type": "text"}` or absent: nothing changes.
- Anything else (not an object, unknown type, json_schema without a schema object): a 400
  `BackendError` naming the field, never retried nor sent to another model.
"""

from __future__ import annotations

import asyncio
import re
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
from llmroute.gateway.backends.openai import missing_credentials
from llmroute.gateway.config import ModelConfig

__all__ = [
    "JSON_OBJECT_INSTRUCTION",
    "PROMPT_TOKENS",
    "AnthropicBackend",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
    "response_format_plan",
]

DEFAULT_MAX_TOKENS = 4096
#: Private key on the first OpenAI chunk of an Anthropic upstream stream: the input tokens its
#: `message_start` reported, so `OpenAIToAnthropicStream` can pass them on in its own
#: `message_start` (the gateway removes the key before a chunk goes to an OpenAI client).
PROMPT_TOKENS = "_prompt_tokens"
_STOP_A2O = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
_STOP_O2A = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ---- OpenAI -> Anthropic (request) -----------------------------------------------------------
JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose before or after it and no "
    "Markdown code fences."
)
_TOOL_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]+")
_RF_TOOL_DESCRIPTION = (
    "Give your final answer by calling this tool: its input is the answer, and it must follow the "
    "input schema exactly."
)


def _bad_response_format(detail: str) -> BackendError:
    return BackendError(
        f"Invalid 'response_format': {detail}",
        status=400,
        retryable=False,
        fallback=False,
        code="invalid_response_format",
        etype="invalid_request_error",
        param="response_format",
    )


def _client_tool_names(body: dict[str, Any]) -> set[str]:
    return {
        str((t.get("function") or {}).get("name", ""))
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type", "function") == "function"
    }


def response_format_plan(body: dict[str, Any]) -> dict[str, Any] | None:
    """How an OpenAI body's `response_format` is sent to an Anthropic model.

    None for no / `text` format; `{"type": "json_object"}`; or `{"type": "json_schema", "tool":
    <Anthropic tool definition>, "force": bool}` where `tool` is None when the client's
    `tool_choice` ("required" or a named function) leaves no room for a structured answer.
    Raises a 400 `BackendError` (no fallback) for an invalid `response_format`.
    """
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise _bad_response_format('must be an object such as {"type": "json_object"}.')
    kind = rf.get("type")
    if kind in (None, "text"):
        if kind is None and rf:
            raise _bad_response_format("missing required field 'response_format.type'.")
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise _bad_response_format(
            f"unsupported value {str(kind)[:40]!r} for 'response_format.type'; "
            "supported: 'text', 'json_object', 'json_schema'."
        )
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise _bad_response_format(
            "'response_format.json_schema' is required for type 'json_schema' "
            "(an object with 'name' and 'schema')."
        )
    schema = js.get("schema")
    if not isinstance(schema, dict):
        raise _bad_response_format("'response_format.json_schema.schema' must be a JSON Schema object.")
    if "type" not in schema:
        schema = dict(schema, type="object")
    elif schema["type"] != "object":
        raise _bad_response_format(
            '\'response_format.json_schema.schema\' must have "type": "object" at its root '
            "for Anthropic models."
        )
    tc = body.get("tool_choice")
    has_tools = bool(_client_tool_names(body))
    if has_tools and (tc == "required" or isinstance(tc, dict)):
        return {"type": "json_schema", "tool": None, "force": False}
    name = _TOOL_NAME_BAD.sub("_", str(js.get("name") or "")).strip("_")[:64] or "json_response"
    taken = _client_tool_names(body)
    base, k = name, 1
    while name in taken:
        k += 1
        suffix = f"_{k}"
        name = base[: 64 - len(suffix)] + suffix
    desc = js.get("description")
    tool = {
        "name": name,
        "description": str(desc) if isinstance(desc, str) and desc else _RF_TOOL_DESCRIPTION,
        "input_schema": schema,
    }
    return {"type": "json_schema", "tool": tool, "force": not has_tools or tc == "none"}


def _rf_tool_name(plan: dict[str, Any] | None) -> str | None:
    if plan is None or plan["type"] != "json_schema" or plan["tool"] is None:
        return None
    return str(plan["tool"]["name"])


def _o2a_content(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[dict[str, Any]] = []
    for p in content:
        if not isinstance(p, dict):
            continue
        t = p.get("type")
        if t == "text":
            out.append({"type": "text", "text": p.get("text", "")})
        elif t == "image_url":
            url = (p.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                head, data = url.split(";base64,", 1)
                out.append(
                    {"type": "image", "source": {"type": "base64", "media_type": head[5:], "data": data}}
                )
            else:
                out.append({"type": "image", "source": {"type": "url", "url": url}})
    return out


def openai_to_anthropic_request(
    body: dict[str, Any], model: str, plan: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An OpenAI chat-completions body as an Anthropic Messages body for `model`.

    `plan` is `response_format_plan(body)` when the caller already has it (computed here
    otherwise; an invalid `response_format` raises a 400 `BackendError`)."""
    if plan is None:
        plan = response_format_plan(body)
    system: list[str] = []
    msgs: list[dict[str, Any]] = []

    def push(role: str, blocks: list[dict[str, Any]]) -> None:
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"].extend(blocks)
        else:
            msgs.append({"role": role, "content": list(blocks)})

    for m in body.get("messages") or []:
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(b["text"] for b in _o2a_content(m.get("content")) if b["type"] == "text")
        elif role == "user":
            push("user", _o2a_content(m.get("content")))
        elif role == "assistant":
            blocks = _o2a_content(m.get("content"))
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    args = {"_raw": fn.get("arguments")}
                blocks.append(
                    {"type": "tool_use", "id": tc.get("id", ""), "name": fn.get("name", ""), "input": args}
                )
            push("assistant", blocks)
        elif role == "tool":
            c = m.get("content")
            text = c if isinstance(c, str) else "".join(b.get("text", "") for b in _o2a_content(c))
            push("user", [{"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""), "content": text}])
    out: dict[str, Any] = {
        "model": model,
        "messages": msgs,
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS,
    }
    if plan is not None and plan["type"] == "json_object":
        system.append(JSON_OBJECT_INSTRUCTION)
    if system:
        out["system"] = "\n\n".join(system)
    for k in ("temperature", "top_p", "stream"):
        if body.get(k) is not None:
            out[k] = body[k]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in body["tools"]
            if isinstance(t, dict) and t.get("type", "function") == "function"
        ]
    tc = body.get("tool_choice")
    if tc is not None and out.get("tools"):
        if tc == "auto":
            out["tool_choice"] = {"type": "auto"}
        elif tc == "required":
            out["tool_choice"] = {"type": "any"}
        elif tc == "none":
            out["tool_choice"] = {"type": "none"}
        elif isinstance(tc, dict):
            out["tool_choice"] = {"type": "tool", "name": (tc.get("function") or {}).get("name", "")}
    if plan is not None and plan["type"] == "json_schema" and plan["tool"] is not None:
        out["tools"] = [*out.get("tools", []), plan["tool"]]
        out["tool_choice"] = (
            {"type": "tool", "name": plan["tool"]["name"]} if plan["force"] else {"type": "any"}
        )
    user = body.get("user")
    if isinstance(user, str):
        out["metadata"] = {"user_id": user}
    return out


def anthropic_to_openai_response(
    msg: dict[str, Any], model: str, response_tool: str | None = None
) -> dict[str, Any]:
    """An Anthropic Messages response as an OpenAI chat completion.

    `response_tool`: the name of the tool that carries a `json_schema` response format (see
    `response_format_plan`); its tool_use input becomes the message content (a JSON string)."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    structured: str | None = None
    for b in msg.get("content") or []:
        if b.get("type") == "text":
            text.append(b.get("text", ""))
        elif b.get("type") == "tool_use" and response_tool is not None and b.get("name") == response_tool:
            structured = orjson.dumps(b.get("input") or {}).decode()
        elif b.get("type") == "tool_use":
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
    if structured is not None:
        text = [structured]  # any preamble text is not part of the structured answer
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    finish = _STOP_A2O.get(msg.get("stop_reason") or "end_turn", "stop")
    if structured is not None and not calls and finish == "tool_calls":
        finish = "stop"
    u = msg.get("usage") or {}
    pt, ct = int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0)
    return {
        "id": msg.get("id", "chatcmpl-anthropic"),
        "object": "chat.completion",
        "created": 0,
        "model": msg.get("model", model),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    }


class AnthropicToOpenAIStream:
    """Stateful: Anthropic stream events in, OpenAI chunk dicts out.

    `response_tool`: as in `anthropic_to_openai_response`; that tool's `input_json_delta`s are
    sent as content deltas (and `{}` if it streamed no input), not as tool calls."""

    def __init__(self, model: str, response_tool: str | None = None) -> None:
        self.model = model
        self.id = "chatcmpl-anthropic"
        self.tool_index: dict[int, int] = {}
        self.input_tokens = 0
        self.response_tool = response_tool
        self.rf_blocks: dict[int, bool] = {}  # block index -> some input streamed
        self.rf_used = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        """OpenAI chunks for one Anthropic event."""
        t = ev.get("type")
        if t == "message_start":
            m = ev.get("message") or {}
            self.id = m.get("id", self.id)
            self.input_tokens = int((m.get("usage") or {}).get("input_tokens") or 0)
            first = self._chunk({"role": "assistant", "content": ""})
            if self.input_tokens:
                first[PROMPT_TOKENS] = self.input_tokens
            return [first]
        if t == "content_block_start":
            b = ev.get("content_block") or {}
            if (
                b.get("type") == "tool_use"
                and self.response_tool is not None
                and b.get("name") == self.response_tool
            ):
                self.rf_blocks[int(ev.get("index", 0))] = False
                self.rf_used = True
                return []
            if b.get("type") == "tool_use":
                k = len(self.tool_index)
                self.tool_index[int(ev.get("index", 0))] = k
                return [
                    self._chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": k,
                                    "id": b.get("id", ""),
                                    "type": "function",
                                    "function": {"name": b.get("name", ""), "arguments": ""},
                                }
                            ]
                        }
                    )
                ]
            if b.get("type") == "text" and b.get("text"):
                return [self._chunk({"content": b["text"]})]
            return []
        if t == "content_block_delta":
            d = ev.get("delta") or {}
            if d.get("type") == "text_delta":
                return [self._chunk({"content": d.get("text", "")})]
            if d.get("type") == "input_json_delta" and int(ev.get("index", 0)) in self.rf_blocks:
                part = d.get("partial_json", "")
                if not part:
                    return []
                self.rf_blocks[int(ev.get("index", 0))] = True
                return [self._chunk({"content": part})]
            if d.get("type") == "input_json_delta":
                k = self.tool_index.get(int(ev.get("index", 0)), 0)
                return [
                    self._chunk(
                        {"tool_calls": [{"index": k, "function": {"arguments": d.get("partial_json", "")}}]}
                    )
                ]
            return []
        if t == "content_block_stop" and self.rf_blocks.get(int(ev.get("index", 0))) is False:
            self.rf_blocks[int(ev.get("index", 0))] = True
            return [self._chunk({"content": "{}"})]
        if t == "message_delta":
            stop = (ev.get("delta") or {}).get("stop_reason") or "end_turn"
            ct = int((ev.get("usage") or {}).get("output_tokens") or 0)
            finish = _STOP_A2O.get(stop, "stop")
            if self.rf_used and not self.tool_index and finish == "tool_calls":
                finish = "stop"
            fin = self._chunk({}, finish)
            usage = dict(
                self._chunk({}),
                choices=[],
                usage={
                    "prompt_tokens": self.input_tokens,
                    "completion_tokens": ct,
                    "total_tokens": self.input_tokens + ct,
                },
            )
            usage["_usage_only"] = True
            return [fin, usage]
        if t == "error":
            err = ev.get("error") or {}
            raise BackendError(f"model {self.model!r}: upstream stream error: {err.get('message', '')}"[:400])
        return []


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


# ---- the backend ------------------------------------------------------------------------------
class AnthropicBackend:
    """An Anthropic Messages API model behind the OpenAI-shaped backend interface."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.url = join_url(cfg.base_url or "https://api.anthropic.com", "/v1/messages")
        self.client: HTTPClient | None = None
        self.headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01", **cfg.headers}
        self.key_missing = False
        self.scrub = ErrorScrubber.for_model(cfg)  # upstream error text -> client and trace

    async def start(self, client: HTTPClient) -> None:
        self.client = model_client(client, self.cfg)
        key = self.cfg.api_key()
        self.scrub.add_secret(key)
        if key:
            self.headers["x-api-key"] = key
        elif self.cfg.api_key_env:
            self.key_missing = True

    async def close(self) -> None:
        self.client = None

    def _prep(self, body: dict[str, Any]) -> tuple[bytes, str | None]:
        """(the Anthropic payload, the response-format tool name or None)."""
        if self.key_missing:
            raise missing_credentials(self.cfg)
        if self.client is None:
            raise BackendError(f"model {self.cfg.name!r}: backend not started", status=503, retryable=False)
        plan = response_format_plan(body)
        payload = orjson.dumps(openai_to_anthropic_request(body, self.cfg.upstream, plan))
        return payload, _rf_tool_name(plan)

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        payload, rf_tool = self._prep(dict(body, stream=False))
        msg = await post_json(
            self.client, self.url, self.headers, payload, self.cfg.name, timeout_s, self.scrub
        )
        return anthropic_to_openai_response(msg, self.cfg.name, rf_tool)

    async def chat_stream(
        self, body: dict[str, Any], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        payload, rf_tool = self._prep(dict(body, stream=True))
        assert self.client is not None
        name = self.cfg.name
        conv = AnthropicToOpenAIStream(name, rf_tool)
        client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = await open_stream(self.client, self.url, self.headers, payload, name, timeout_s)
        ok = False
        try:
            if resp.status != 200:
                async with asyncio.timeout(timeout_s):
                    raw = await resp.read()
                raise classify_status(name, resp.status, self.scrub.detail(raw, payload))
            stopped = False
            batches = resp.line_batches()
            while not stopped:
                lines = await next_lines(batches, name, timeout_s)
                if lines is None:
                    break
                out: list[dict[str, Any]] = []
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    try:
                        ev = orjson.loads(line[5:].strip())
                    except orjson.JSONDecodeError:
                        raise BackendError(f"model {name!r}: upstream sent an invalid stream event") from None
                    if isinstance(ev, dict) and ev.get("type") == "error":
                        err = ev.get("error")
                        why = self.scrub.text(
                            str(err.get("message", "") if isinstance(err, dict) else err), payload
                        )
                        raise BackendError(f"model {name!r}: upstream stream error: {why}")
                    for chunk in conv.feed(ev):
                        if client_usage and chunk.get("_usage_only"):
                            del chunk["_usage_only"]
                        out.append(chunk)
                    if ev.get("type") == "message_stop":
                        stopped = True
                        break
                if out:
                    yield out
            if not stopped:
                raise BackendError(f"model {name!r}: upstream stream ended without message_stop")
            async for _ in batches:
                pass
            ok = True
        except OSError as e:
            raise BackendError(f"model {name!r}: upstream stream broke ({os_reason(e)})") from None
        finally:
            resp.release(ok)
