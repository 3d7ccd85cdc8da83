"""OpenAI -> Anthropic: an OpenAI chat request sent to an Anthropic model, and its answer back
(`openai_to_anthropic_request`, `anthropic_to_openai_response`, `AnthropicToOpenAIStream`): what
`AnthropicBackend` (`llmroute.gateway.backends.anthropic`) and the Bedrock backend send and read.

The seam: one module per direction. The response format plan (`response_format_plan`) ties the
request translation to the answer's (the response tool's call comes back as content), so this
direction's request, response and stream stay together; the inbound direction (an Anthropic
Messages request to any backend) is `llmroute.gateway.backends.anthropic_inbound`.

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

import re
from typing import Any

import orjson

from llmroute.gateway.backends.base import BackendError

__all__ = [
    "JSON_OBJECT_INSTRUCTION",
    "PROMPT_TOKENS",
    "AnthropicToOpenAIStream",
    "anthropic_to_openai_response",
    "openai_to_anthropic_request",
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
