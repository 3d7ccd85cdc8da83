"""The model endpoints of the fake server (`llmroute.gateway.fake`, see its docstring): chat
completions (streamed too), legacy completions, embeddings, and the Anthropic Messages API (with
`_sample`, a deterministic value following a tool's JSON Schema for a forced tool call).

Each starts with `llmroute.gateway.fake_state._begin` (the body, the counters, the fault); the
application that routes to them is `llmroute.gateway.fake.make_app`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
from aiohttp import web

from llmroute.gateway.fake_state import _answer, _begin, _Call


def _usage(messages: Any, answer: str) -> dict[str, int]:
    pt = max(1, len(orjson.dumps(messages)) // 4) if messages else 1
    ct = max(1, len(answer) // 4)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


async def _cut(request: web.Request, r: web.StreamResponse, out: list[bytes]) -> web.StreamResponse:
    """The "cut" fault of a stream: its first two events, then the connection dropped."""
    for part in out[:2]:
        await r.write(part)
    await asyncio.sleep(0.01)
    if request.transport is not None:
        request.transport.abort()
    return r


async def _chat(request: web.Request) -> web.StreamResponse:
    call = await _begin(request, conversation=True)
    if not isinstance(call, _Call):
        return call
    state, body, model, fault, delay = call
    if state.latency_s > 0:
        await asyncio.sleep(state.latency_s)
    messages = body.get("messages")
    answer = state.reply(model, messages, fault)
    usage = _usage(messages, answer)
    tools = body.get("tools")
    tool_call = None
    if tools and body.get("tool_choice", "auto") != "none":
        fn = tools[0].get("function", {}).get("name", "tool")
        tool_call = {
            "id": "call_fake1",
            "type": "function",
            "function": {"name": fn, "arguments": '{"x": 1}'},
        }
    created = int(time.time())
    if body.get("stream"):
        return await _chat_stream(request, body, model, answer, usage, tool_call, fault, created, delay)
    n = int(body.get("n") or 1)
    msg: dict[str, Any] = {"role": "assistant", "content": None if tool_call else answer}
    if tool_call:
        msg["tool_calls"] = [tool_call]
    resp = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": msg,
                "finish_reason": "tool_calls" if tool_call else ("length" if fault == "length" else "stop"),
                "logprobs": None,
            }
            for i in range(n)
        ],
        "usage": usage,
    }
    raw = orjson.dumps(resp)
    if fault == "badjson":
        raw = b'{"id": "chatcmpl-fake", "choices": [ {not json'
    if fault == "cut":
        r = web.StreamResponse(
            status=200, headers={"content-type": "application/json", "content-length": str(len(raw))}
        )
        await r.prepare(request)
        await r.write(raw[: len(raw) // 2])
        if request.transport is not None:
            request.transport.abort()
        return r
    return web.Response(body=raw, content_type="application/json")


async def _chat_stream(
    request: web.Request,
    body: dict[str, Any],
    model: str,
    answer: str,
    usage: dict[str, int],
    tool_call: dict[str, Any] | None,
    fault: str | None,
    created: int,
    delay: float | None = None,
) -> web.StreamResponse:
    r = web.StreamResponse(
        status=200, headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await r.prepare(request)
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])
        return b"data: " + orjson.dumps(c) + b"\n\n"

    if fault == "badjson":
        await r.write(b"data: {not json\n\n")
        return r
    pieces = [answer[i : i + 8] for i in range(0, len(answer), 8)] or [""]
    out = [chunk({"role": "assistant", "content": ""})]
    if tool_call:
        out.append(chunk({"tool_calls": [dict(tool_call, index=0)]}))
    else:
        out.extend(chunk({"content": p}) for p in pieces)
    out.append(chunk({}, "tool_calls" if tool_call else ("length" if fault == "length" else "stop")))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(b"data: " + orjson.dumps(dict(base, choices=[], usage=usage)) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    if fault == "cut":
        return await _cut(request, r, out)
    if fault == "drip":
        for part in out:
            await r.write(part)
            await asyncio.sleep(delay if delay is not None else 0.2)
        return r
    await r.write(b"".join(out))
    return r


def _texts(value: Any) -> list[str]:
    """The inputs of an embeddings / completions request: a string, strings, or token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(x, int) for x in value):
        return [" ".join(map(str, value))]
    return [x if isinstance(x, str) else " ".join(map(str, x)) for x in value or []]


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit-length vector for `text`."""
    raw = b"".join(hashlib.sha256(f"{i}:{text}".encode()).digest() for i in range(dims // 8 + 1))
    v = [(b - 127.5) / 127.5 for b in raw[:dims]]
    norm = sum(x * x for x in v) ** 0.5 or 1.0
    return [x / norm for x in v]


async def _embeddings(request: web.Request) -> web.StreamResponse:
    """`POST /v1/embeddings`: a deterministic vector per input (float or base64 float32)."""
    import base64
    import struct

    call = await _begin(request)
    if not isinstance(call, _Call):
        return call
    body, model = call.body, call.model
    texts = _texts(body.get("input"))
    dims = int(body.get("dimensions") or 8)
    data = []
    for i, t in enumerate(texts):
        vec: Any = _vector(t, dims)
        if body.get("encoding_format") == "base64":
            vec = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = sum(max(1, len(t) // 4) for t in texts)
    resp = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return web.Response(body=orjson.dumps(resp), content_type="application/json")


async def _completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/completions` (legacy text completions): the echo answer per prompt, streamed too."""
    call = await _begin(request)
    if not isinstance(call, _Call):
        return call
    body, model, fault = call.body, call.model, call.fault
    prompts = _texts(body.get("prompt")) or [""]
    n = int(body.get("n") or 1)
    answers = [_answer(model, [{"role": "user", "content": p}]) for p in prompts for _ in range(n)]
    pt = sum(max(1, len(p) // 4) for p in prompts)
    ct = sum(max(1, len(a) // 4) for a in answers)
    usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
    base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": model}
    if not body.get("stream"):
        choices = [
            {"index": i, "text": a, "finish_reason": "stop", "logprobs": None} for i, a in enumerate(answers)
        ]
        return web.Response(
            body=orjson.dumps({**base, "choices": choices, "usage": usage}), content_type="application/json"
        )
    r = web.StreamResponse(
        status=200, headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await r.prepare(request)

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    out = [
        event([{"index": i, "text": a[k : k + 8], "finish_reason": None, "logprobs": None}])
        for i, a in enumerate(answers)
        for k in range(0, len(a), 8)
    ]
    out += [
        event([{"index": i, "text": "", "finish_reason": "stop", "logprobs": None}])
        for i in range(len(answers))
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(event([], usage=usage))
    out.append(b"data: [DONE]\n\n")
    if fault == "cut":
        return await _cut(request, r, out)
    await r.write(b"".join(out))
    return r


def _sample(schema: Any, text: str, root: Any = None, depth: int = 0) -> Any:
    """A deterministic value following a (simple) JSON Schema: objects with every property,
    strings (the echo answer), numbers, booleans, arrays of one item, enums' first value, local
    `$ref`s (`#/$defs/...`) and the first `anyOf`/`oneOf` branch."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 16:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _sample(target, text, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _sample(schema[key][0], text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _sample(v, text, root, depth + 1) for k, v in props.items()}
    if t == "array":
        return [_sample(schema.get("items") or {"type": "string"}, text, root, depth + 1)]
    if t == "integer":
        return 1
    if t == "number":
        return 1.5
    if t == "boolean":
        return True
    if t == "null":
        return None
    return text


async def _messages(request: web.Request) -> web.StreamResponse:
    """A fake Anthropic Messages API endpoint."""
    call = await _begin(request, conversation=True)
    if not isinstance(call, _Call):
        return call
    state, body, model, fault = call.state, call.body, call.model, call.fault
    if state.latency_s > 0:
        await asyncio.sleep(state.latency_s)
    answer = state.reply(model, body.get("messages"), fault)
    tools = body.get("tools")
    content: list[dict[str, Any]]
    choice = body.get("tool_choice") or {}
    if tools and choice.get("type") != "none":
        tool = tools[0]
        inp: Any = {"x": 1}
        if choice.get("type") == "tool":  # forced: that tool, with an input following its schema
            tool = next((t for t in tools if t.get("name") == choice.get("name")), tool)
            if (tool.get("input_schema") or {}).get("properties"):
                inp = _sample(tool["input_schema"], answer)
        content = [{"type": "tool_use", "id": "toolu_fake1", "name": tool["name"], "input": inp}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": answer}]
        stop = "end_turn"
    usage = {"input_tokens": 10, "output_tokens": max(1, len(answer) // 4)}
    if not body.get("stream"):
        msg = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return web.Response(body=orjson.dumps(msg), content_type="application/json")
    r = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
    await r.prepare(request)

    def ev(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(dict(data, type=name)) + b"\n\n"

    out = [
        ev(
            "message_start",
            {
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 0},
                }
            },
        )
    ]
    block = content[0]
    if block["type"] == "text":
        out.append(ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
        for i in range(0, len(answer), 8):
            out.append(
                ev(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": answer[i : i + 8]}},
                )
            )
    else:
        out.append(ev("content_block_start", {"index": 0, "content_block": dict(block, input={})}))
        raw = orjson.dumps(block["input"]).decode() if block["input"] != {"x": 1} else '{"x": 1}'
        for i in range(0, len(raw), 8):
            out.append(
                ev(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "input_json_delta", "partial_json": raw[i : i + 8]}},
                )
            )
    out.append(ev("content_block_stop", {"index": 0}))
    out.append(
        ev(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    out.append(ev("message_stop", {}))
    await r.write(b"".join(out))
    return r
