"""OpenAI Responses API (`POST /v1/responses`): a Responses request routed like a chat request.

`OPENAI_RESPONSES` is the API family the shared request pipeline (`llmroute.gateway.app`) runs
Responses requests with: the body is validated against `schemas.ResponsesRequest`, translated to
an OpenAI chat request (`responses_to_chat`: what every backend takes, so aliases, rules,
budgets, cascades and traces apply unchanged) and the chat answer is translated back
(`chat_to_response`; streams: `ResponsesStream`, the `response.*` events).

Translated: `input` (a string, or message / `function_call` / `function_call_output` items with
text, image, file and refusal parts), `instructions` (a system message first), function `tools`
and `tool_choice`, `parallel_tool_calls`, `max_output_tokens` (`max_tokens`), `temperature`,
`top_p`, `text.format` (`response_format`: json_object / json_schema), `reasoning.effort`
(`reasoning_effort`), `user`. Not translated: built-in tools (web search, file search, computer
use, ...), stored state (`previous_response_id`, `conversation`: a 400; `store` is ignored),
`background` (a 400), `include`, `truncation`, `metadata` (not echoed) and reasoning items.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.gateway.api_openai import OPENAI_CHAT
from llmroute.gateway.asgi import bad_request
from llmroute.gateway.backends.anthropic import PROMPT_TOKENS
from llmroute.gateway.schemas import RESPONSES_ITEMS, ResponsesRequest, validate

if TYPE_CHECKING:
    from llmroute.gateway.auth import GatewayError
    from llmroute.gateway.routing import RequestContext

__all__ = [
    "OPENAI_RESPONSES",
    "OpenAIResponses",
    "ResponsesStream",
    "chat_to_response",
    "responses_to_chat",
    "usage_of",
]

#: chat finish reasons that leave a response incomplete -> the Responses API's reason
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _parts(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Responses content parts as chat content parts (a string stays a string)."""
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for p in content:
        kind = p["type"]
        if kind in ("input_text", "output_text"):
            out.append({"type": "text", "text": p["text"]})
        elif kind == "input_image":
            image = {"url": p["image_url"]}
            if p.get("detail"):
                image["detail"] = p["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            out.append(
                {"type": "file", "file": {k: p[k] for k in ("file_data", "file_id", "filename") if p.get(k)}}
            )
        else:  # refusal
            out.append({"type": "text", "text": p["refusal"]})
    return out


def _text(content: str | list[dict[str, Any]]) -> str:
    """The text of chat content (its text parts joined)."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p.get("type") == "text")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of a validated Responses body: instructions first, then each input item."""
    msgs: list[dict[str, Any]] = []
    if body.get("instructions"):
        msgs.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        msgs.append({"role": "user", "content": items})
        return msgs
    for i, item in enumerate(items):
        kind = item.get("type", "message") if isinstance(item, dict) else "message"
        if kind is None:
            kind = "message"
        schema = RESPONSES_ITEMS.get(kind) if isinstance(kind, str) else None
        if schema is None:
            raise bad_request(
                f"'input[{i}].type' must be one of {sorted(RESPONSES_ITEMS)} (built-in tool calls, "
                "reasoning items and item references are not translated by the gateway).",
                f"input[{i}].type",
            )
        validate(item, schema, f"input[{i}]")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            content = _parts(item["content"])
            if role in ("assistant", "system"):  # plain text: what every upstream takes
                content = _text(content)
            msgs.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = msgs[-1] if msgs else None
            if last is not None and last["role"] == "assistant":  # one assistant turn: text + calls
                last.setdefault("tool_calls", []).append(call)
                if not last["content"]:
                    last["content"] = None
            else:
                msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:  # function_call_output
            msgs.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": _text(_parts(item["output"]))}
            )
    return msgs


def responses_to_chat(body: Any) -> dict[str, Any]:
    """A Responses request (validated here: a 400 naming the field) as the OpenAI chat request to
    route; the `llmroute` policy object is kept for the pipeline."""
    body = validate(body, ResponsesRequest)
    out: dict[str, Any] = {"model": body["model"], "messages": _messages(body)}
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for k in ("temperature", "top_p", "stream", "parallel_tool_calls", "user", "llmroute"):
        if body.get(k) is not None:
            out[k] = body[k]
    if body.get("tools"):
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None
                },
            }
            for t in body["tools"]
        ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        out["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format")
    if fmt and fmt["type"] == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt and fmt["type"] == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    effort = (body.get("reasoning") or {}).get("effort")
    if effort:
        out["reasoning_effort"] = effort
    return out


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage as Responses usage (input / output / total tokens and their details)."""
    if not usage:
        return None
    ti = int(usage.get("prompt_tokens") or 0)
    to = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": ti,
        "input_tokens_details": {"cached_tokens": int(cached)},
        "output_tokens": to,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(usage.get("total_tokens") or ti + to),
    }


def _message_item(
    item_id: str, text: str, status: str = "completed", refusal: bool = False
) -> dict[str, Any]:
    part = (
        {"type": "refusal", "refusal": text}
        if refusal
        else {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    )
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _response(
    rid: str,
    model: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Any,
    finish: str | None,
) -> dict[str, Any]:
    reason = _INCOMPLETE.get(finish or "") if status != "in_progress" else None
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "incomplete" if reason else status,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def chat_to_response(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """A chat completion (its first choice) as a Responses `response` object from `model`."""
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    base = str(resp.get("id") or time.time_ns())
    output: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, list):
        content = _text(content)
    if content:
        output.append(_message_item(f"msg_{base}", content))
    if msg.get("refusal"):
        output.append(_message_item(f"msg_{base}_refusal", msg["refusal"], refusal=True))
    for k, tc in enumerate(msg.get("tool_calls") or ()):
        fn = tc.get("function") or {}
        call_id = tc.get("id") or f"call_{base}_{k}"
        output.append(_call_item(f"fc_{call_id}", call_id, fn.get("name", ""), fn.get("arguments") or ""))
    created = int(resp.get("created") or time.time())
    finish = choice.get("finish_reason")
    return _response(f"resp_{base}", model, created, "completed", output, usage_of(resp.get("usage")), finish)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class ResponsesStream:
    """A chat stream's OpenAI chunks as Responses API SSE events (one per streamed response):
    `response.created` and `response.in_progress` first; per output item `output_item.added`,
    its deltas (`output_text.delta`, `function_call_arguments.delta`) and `.done` events; then
    `response.completed` (or `response.incomplete`) with the whole response and its usage."""

    __slots__ = ("created", "id", "items", "model", "open", "seq", "stop", "tools", "usage")

    def __init__(self, model: str, rid: str) -> None:
        self.model = model
        self.id = f"resp_{rid}"
        self.created = int(time.time())
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # the output so far (texts and arguments grow)
        self.open: dict[str, int] = {}  # "text" / "tool:<index>" -> position in items, while open
        self.tools: dict[int, int] = {}  # chat tool-call index -> position in items
        self.stop: str | None = None
        self.usage: dict[str, Any] | None = None

    def _ev(self, kind: str, **data: Any) -> bytes:
        out = _event(kind, {**data, "sequence_number": self.seq})
        self.seq += 1
        return out

    def _snapshot(self, status: str) -> dict[str, Any]:
        out = orjson.loads(orjson.dumps(self.items))
        return _response(self.id, self.model, self.created, status, out, usage_of(self.usage), self.stop)

    def _start(self) -> list[bytes]:
        if self.seq:
            return []
        snap = self._snapshot("in_progress")
        return [self._ev("response.created", response=snap), self._ev("response.in_progress", response=snap)]

    def _close_text(self) -> list[bytes]:
        pos = self.open.pop("text", None)
        if pos is None:
            return []
        item = self.items[pos]
        item["status"] = "completed"
        part = item["content"][0]
        ids = {"item_id": item["id"], "output_index": pos, "content_index": 0}
        return [
            self._ev("response.output_text.done", **ids, text=part["text"], logprobs=[]),
            self._ev("response.content_part.done", **ids, part=part),
            self._ev("response.output_item.done", output_index=pos, item=item),
        ]

    def _close_tool(self, key: str) -> list[bytes]:
        pos = self.open.pop(key)
        item = self.items[pos]
        item["status"] = "completed"
        return [
            self._ev(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=pos,
                name=item["name"],
                arguments=item["arguments"],
            ),
            self._ev("response.output_item.done", output_index=pos, item=item),
        ]

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        pos = self.open.get("text")
        if pos is None:
            for key in [k for k in self.open if k.startswith("tool:")]:
                out += self._close_tool(key)
            pos = self.open["text"] = len(self.items)
            item = _message_item(f"msg_{self.id[5:]}_{pos}", "", status="in_progress")
            self.items.append(item)
            added = orjson.loads(orjson.dumps(item))
            added["content"] = []
            out.append(self._ev("response.output_item.added", output_index=pos, item=added))
            out.append(
                self._ev(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=pos,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        item = self.items[pos]
        item["content"][0]["text"] += text
        out.append(
            self._ev(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=pos,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _tool_delta(self, tc: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = int(tc.get("index") or 0)
        fn = tc.get("function") or {}
        pos = self.tools.get(index)
        if pos is None:
            out += self._close_text()
            call_id = tc.get("id") or f"call_{self.id[5:]}_{index}"
            pos = self.tools[index] = len(self.items)
            self.open[f"tool:{index}"] = pos
            item = _call_item(f"fc_{call_id}", call_id, fn.get("name") or "", "", status="in_progress")
            self.items.append(item)
            out.append(self._ev("response.output_item.added", output_index=pos, item=dict(item)))
        item = self.items[pos]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        args = fn.get("arguments")
        if args:
            item["arguments"] += args
            out.append(
                self._ev(
                    "response.function_call_arguments.delta", item_id=item["id"], output_index=pos, delta=args
                )
            )
        return out

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events one chat chunk makes (`response.created` before the first)."""
        chunk.pop(PROMPT_TOKENS, None)
        chunk.pop("_usage_only", None)
        out = self._start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue  # the Responses API has one output
            delta = ch.get("delta") or {}
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str) and delta[key]:
                    out += self._text_delta(delta[key])
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    out += self._tool_delta(tc)
            if ch.get("finish_reason"):
                self.stop = ch["finish_reason"]
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of a complete stream: the open items' `.done` events, then `response.completed`
        (`response.incomplete` when the output hit `max_output_tokens`)."""
        out = self._start() + self._close_text()
        for key in list(self.open):
            out += self._close_tool(key)
        snap = self._snapshot("completed")
        kind = "response.incomplete" if snap["status"] == "incomplete" else "response.completed"
        out.append(self._ev(kind, response=snap))
        return b"".join(out)

    def fail(self, message: str) -> bytes:
        """The end of a stream the upstream broke off: an `error` event, then `response.failed`."""
        out = self._start()
        out.append(self._ev("error", code="stream_interrupted", message=message, param=None))
        snap = self._snapshot("failed")
        snap["status"] = "failed"
        snap["error"] = {"code": "server_error", "message": message}
        out.append(self._ev("response.failed", response=snap))
        return b"".join(out)


class OpenAIResponses:
    """The OpenAI Responses family of the shared pipeline (see `llmroute.gateway.app.ApiFamily`)."""

    __slots__ = ()

    #: `RequestContext.endpoint` of its requests (rules and traces see it)
    endpoint = "responses"

    def parse(self, body: Any) -> dict[str, Any]:
        """The validated Responses body as the OpenAI chat request to route."""
        return responses_to_chat(body)

    def error_body(self, e: GatewayError) -> bytes:
        """The OpenAI error body (as chat completions answer it)."""
        return OPENAI_CHAT.error_body(e)

    def response(self, resp: dict[str, Any], model: str) -> dict[str, Any]:
        """The backend's chat completion as a Responses `response` from `model`."""
        return chat_to_response(resp, model)

    def stream(self, model: str, rid: str, ctx: RequestContext) -> ResponsesStream:
        """The encoder of one streamed response."""
        return ResponsesStream(model, rid)

    def replay(self, events: list[bytes], model: str, rid: str, ctx: RequestContext) -> bytes:
        """A cached response's OpenAI SSE events (ending in `[DONE]`) as one Responses stream."""
        enc = self.stream(model, rid, ctx)
        return b"".join(enc.feed(orjson.loads(e[6:])) for e in events[:-1]) + enc.finish()


OPENAI_RESPONSES = OpenAIResponses()
