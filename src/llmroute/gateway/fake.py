"""A fake OpenAI-compatible (and Anthropic Messages) server for tests and benchmarks.

Answers instantly by default (a deterministic echo), streams, and injects faults on demand:

- per request: header `x-fake-fault: <fault>` (and `x-fake-delay: <seconds>` for `slow`/`timeout`);
- per model: `POST /_control/fault {"model": "fake-strong" | "*", "fault": "<fault>", "count": N | null,
  "delay": s}`; `DELETE /_control/fault` clears every fault; `GET /_control/stats` gives request counts
  per model; `GET /_control/last?model=M` returns the last request body seen for model M.

Upstream latency (a real model takes time): `--latency-ms MS` (or the environment variable
`LLMROUTE_FAKE_LATENCY_MS`), or at run time `POST /_control/latency {"ms": 15}` (`GET` reads it),
makes every successful chat / messages answer wait that long before its first byte (server-wide,
default 0; `DELETE /_control/fault` leaves it as is). Faults answer without it; `slow` adds its
delay on top.

Faults: `500`, `503`, `429`, `400`, `context` (a 400 saying the context length is exceeded), `timeout` (never answers within `delay`, default 30 s), `reset`
(connection closed without a response), `cut` (stream cut after two chunks; non-stream body cut
midway), `length` (a normal chat answer whose finish_reason is `length`, as if cut at max_tokens),
`badjson` (200 with an invalid JSON body / SSE line), `drip` (streams: one chunk every
`delay` s, default 0.2), `slow` (first byte after `delay`,
default 0.5 s, then a normal answer), `hold` (like `slow`, but the first byte waits until the
test calls `FakeState.release_holds()`, at most `delay`, default 60 s: a request kept in flight
for exactly as long as a test needs, however slow the machine), `echo` / `echo500` (a careless upstream: 400 / 500 whose
error message repeats the request line, every request header, credentials included, and the
body, prompt included; for testing that the gateway never forwards such text).

`POST /v1/embeddings` answers a deterministic unit vector per input (`dimensions`, default 8;
float or base64 float32) and `POST /v1/completions` the echo answer per prompt (streamed too);
the per-model faults apply to both.

With tools, answers with a tool call of the first tool (arguments `{"x": 1}`); on `/v1/messages` a
forced `tool_choice` (`{"type": "tool", "name": N}`) calls tool N with an input built from its
`input_schema` (streamed as `input_json_delta`s of 8 characters).

Skill profiles and a judge (for `llmroute profile`): a model named in `FakeState.skills` (default
`DEFAULT_SKILLS`: `skill-math` right on maths, `skill-code` on code, `skill-chat` cheap and fine on
chit-chat) answers the prompts of `skill_prompts()` right with its probability for the prompt's
category (a seeded coin per model and prompt, so a repeated call gives the same answer), in a form
the graders read (the final number, the letter, a Python function, a friendly reply), and wrong
otherwise. A model named in `FakeState.judges` (default `fake-judge`) grades the answer it is
shown in the `llmroute.profile.judge` templates: `Rating: [[9]]` for a right answer, `[[2]]` for
a wrong one; pairwise `[[A]]` / `[[B]]` for the right one, and `[[A]]` (position bias) when both
are right or both wrong. `POST /_control/skills {"skills": {model: {category: p}}, "seed": 0}`
replaces the profiles. The judge fault `unparseable` (`JUDGE_FAULTS`, set like the others) answers
200 with text that holds no score; `timeout` works as for any model. `state.calls` counts requests
per (model, last message text) as they arrive (faulted ones too).
The prompts, the skilled answers and the judge are in `llmroute.gateway.fake_skills`.

Run it: `python -m llmroute.gateway.fake --port 9000 [--latency-ms 15]` (binds 127.0.0.1), or
in a background thread of the current process with `serve_in_thread()` (what the tests and
`llmroute serve --fake-upstream`, the keyless demo, use).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections import Counter
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from llmroute.gateway.fake_skills import (
    DEFAULT_JUDGES,
    DEFAULT_SKILLS,
    SKILL_CATEGORIES,
    _coin,
    _judge,
    _skilled,
    _solve,
    is_right,
    skill_prompts,
)

__all__ = [
    "ANSWER_FAULTS",
    "DEFAULT_JUDGES",
    "DEFAULT_SKILLS",
    "FAULTS",
    "JUDGE_FAULTS",
    "SKILL_CATEGORIES",
    "STATE",
    "FakeState",
    "RunningFake",
    "is_right",
    "main",
    "make_app",
    "serve_in_thread",
    "skill_prompts",
]

FAULTS = (
    "500",
    "503",
    "429",
    "400",
    "timeout",
    "reset",
    "cut",
    "badjson",
    "slow",
    "hold",
    "drip",
    "echo",
    "echo500",
)
#: faults that still answer 200, only differently (set like `FAULTS`; not upstream failures)
ANSWER_FAULTS = ("length",)
#: faults of a judge's answer (a 200 whose text holds no score), set like `FAULTS`
JUDGE_FAULTS = ("unparseable",)


class FakeState:
    """Fault registry and counters of one fake server."""

    def __init__(
        self,
        latency_s: float = 0.0,
        skills: dict[str, dict[str, float]] | None = None,
        judges: tuple[str, ...] = DEFAULT_JUDGES,
        seed: int = 0,
    ) -> None:
        self.faults: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, Any] = {}
        self.latency_s = latency_s  # wait before every successful answer's first byte
        self.skills: dict[str, dict[str, float]] = dict(DEFAULT_SKILLS if skills is None else skills)
        self.judges: set[str] = set(judges)
        self.seed = seed
        #: calls per (model, text of the last message)
        self.calls: Counter[tuple[str, str]] = Counter()
        #: set by `release_holds` (from any thread): requests held by the `hold` fault answer
        self.holds_released = threading.Event()

    def release_holds(self) -> None:
        """Let every request waiting in the `hold` fault answer (later ones are held again)."""
        released, self.holds_released = self.holds_released, threading.Event()
        released.set()

    def reply(self, model: str, messages: Any, fault: str | None = None) -> str:
        """The answer text of `model`: a judge's verdict, a skilled answer, or the echo."""
        text = _text_of(messages)
        if fault == "unparseable":
            return "I think the answer is quite good overall, with some room for improvement."
        if model in self.judges:
            return _judge(text)
        skill = self.skills.get(model)
        if skill is not None:
            task = _solve(text)
            coin = _coin(self.seed, model, text)
            return _skilled(task, text, coin < float(skill.get(task.category, 0.0)), coin)
        return _answer(model, messages)

    def take_fault(
        self, model: str, header: str | None, delay: str | None
    ) -> tuple[str | None, float | None]:
        """The fault for this request (header wins over the per-model registry)."""
        if header:
            return header, float(delay) if delay else None
        spec = self.faults.get(model) or self.faults.get("*")
        if not spec:
            return None, None
        rem = spec.get("count")
        if rem is not None:
            if rem <= 0:
                return None, None
            spec["count"] = rem - 1
        return spec["fault"], spec.get("delay")


STATE: web.AppKey[FakeState] = web.AppKey("state", FakeState)


def _text_of(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        return ""
    content = messages[-1].get("content") if isinstance(messages[-1], dict) else ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _answer(model: str, messages: Any) -> str:
    return f"[{model}] {_text_of(messages)[:60]}"


def _usage(messages: Any, answer: str) -> dict[str, int]:
    pt = max(1, len(orjson.dumps(messages)) // 4) if messages else 1
    ct = max(1, len(answer) // 4)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def _error(status: int, message: str, etype: str) -> web.Response:
    body = orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": None}})
    headers = {"retry-after": "0"} if status == 429 else None
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def _maybe_fault_pre(
    request: web.Request, fault: str | None, delay: float | None
) -> web.StreamResponse | None:
    if fault is None:
        return None
    if fault in ("500", "503"):
        return _error(int(fault), "fake upstream failure", "server_error")
    if fault == "429":
        return _error(429, "fake rate limit", "rate_limit_error")
    if fault == "400":
        return _error(400, "fake bad request", "invalid_request_error")
    if fault == "context":
        return _error(400, "This model's maximum context length is 8 tokens.", "invalid_request_error")
    if fault in ("echo", "echo500"):
        heads = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
        body = (await request.read()).decode("utf-8", "replace")
        msg = f"cannot serve {request.method} {request.url} headers: {heads} body: {body}"
        return _error(400 if fault == "echo" else 500, msg, "invalid_request_error")
    if fault == "timeout":
        await asyncio.sleep(delay if delay is not None else 30.0)
        return _error(504, "fake timeout elapsed", "server_error")
    if fault == "reset":
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    if fault == "slow":
        await asyncio.sleep(delay if delay is not None else 0.5)
    if fault == "hold":
        released = request.app[STATE].holds_released
        end = time.monotonic() + (delay if delay is not None else 60.0)
        while not released.is_set() and time.monotonic() < end:
            await asyncio.sleep(0.01)  # polled: the event is set from the test's thread
    return None


async def _request_body(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
    """The JSON object of a request, or the 400 to answer."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None, _error(400, "invalid JSON body", "invalid_request_error")
    if not isinstance(body, dict):
        return None, _error(400, "body must be a JSON object", "invalid_request_error")
    return body, None


class _Call(NamedTuple):
    """A model call to answer: the server's state, the request's JSON object, its model, and the
    fault it drew (with the fault's delay)."""

    state: FakeState
    body: dict[str, Any]
    model: str
    fault: str | None
    delay: float | None


async def _begin(request: web.Request, *, conversation: bool = False) -> _Call | web.StreamResponse:
    """What every model endpoint does first: read the JSON object body (else answer 400), count
    the call per model (and, with `conversation`, per (model, last message text) in `calls`),
    keep the body as the model's last, and draw the fault (header, else the per-model registry).
    Returns the call, or the response to send instead (a 400, or the fault's early answer)."""
    state: FakeState = request.app[STATE]
    body, bad = await _request_body(request)
    if body is None:
        return bad  # type: ignore[return-value]
    model = str(body.get("model", ""))
    state.counts[model] = state.counts.get(model, 0) + 1
    if conversation:
        state.calls[(model, _text_of(body.get("messages")))] += 1
    state.last[model] = body
    fault, delay = state.take_fault(
        model, request.headers.get("x-fake-fault"), request.headers.get("x-fake-delay")
    )
    early = await _maybe_fault_pre(request, fault, delay)
    if early is not None:
        return early
    return _Call(state, body, model, fault, delay)


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
        for part in out[:2]:
            await r.write(part)
        await asyncio.sleep(0.01)
        if request.transport is not None:
            request.transport.abort()
        return r
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
        for part in out[:2]:
            await r.write(part)
        await asyncio.sleep(0.01)
        if request.transport is not None:
            request.transport.abort()
        return r
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


async def _models(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"object": "list", "data": []}), content_type="application/json")


async def _set_fault(request: web.Request) -> web.Response:
    state: FakeState = request.app[STATE]
    spec = orjson.loads(await request.read())
    if spec.get("fault") not in FAULTS + JUDGE_FAULTS + ANSWER_FAULTS:
        return _error(
            400, f"fault must be one of {FAULTS + JUDGE_FAULTS + ANSWER_FAULTS}", "invalid_request_error"
        )
    state.faults[str(spec.get("model", "*"))] = {
        "fault": spec["fault"],
        "count": spec.get("count"),
        "delay": spec.get("delay"),
    }
    return web.Response(body=b'{"ok": true}', content_type="application/json")


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return web.Response(body=b'{"ok": true}', content_type="application/json")


async def _set_latency(request: web.Request) -> web.Response:
    try:
        spec = orjson.loads(await request.read())
        ms = float(spec["ms"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return _error(400, 'send {"ms": <milliseconds >= 0>}', "invalid_request_error")
    if not ms >= 0:
        return _error(400, "ms must be >= 0", "invalid_request_error")
    request.app[STATE].latency_s = ms / 1000.0
    return web.Response(body=orjson.dumps({"ms": ms}), content_type="application/json")


async def _get_latency(request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps({"ms": request.app[STATE].latency_s * 1000.0}), content_type="application/json"
    )


async def _set_skills(request: web.Request) -> web.Response:
    state: FakeState = request.app[STATE]
    try:
        spec = orjson.loads(await request.read())
        skills = {str(m): {str(c): float(p) for c, p in cats.items()} for m, cats in spec["skills"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return _error(
            400, 'send {"skills": {model: {category: probability}}, "seed": 0}', "invalid_request_error"
        )
    state.skills = skills
    state.seed = int(spec.get("seed") or 0)
    return web.Response(body=orjson.dumps({"skills": skills}), content_type="application/json")


async def _stats(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(request.app[STATE].counts), content_type="application/json")


async def _last(request: web.Request) -> web.Response:
    last = request.app[STATE].last.get(request.query.get("model", ""))
    return web.Response(body=orjson.dumps(last), content_type="application/json")


def make_app(latency_ms: float = 0.0) -> web.Application:
    """The fake server as an aiohttp application (state in `app[STATE]`); `latency_ms` delays every
    successful answer (see the module docstring)."""
    if not latency_ms >= 0:
        raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = FakeState(latency_s=latency_ms / 1000.0)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/chat/completions", _chat)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/_control/fault", _set_fault)
    app.router.add_delete("/_control/fault", _clear_faults)
    app.router.add_post("/_control/latency", _set_latency)
    app.router.add_get("/_control/latency", _get_latency)
    app.router.add_get("/_control/stats", _stats)
    app.router.add_post("/_control/skills", _set_skills)
    app.router.add_get("/_control/last", _last)
    return app


class RunningFake:
    """A fake server running in a background thread (see `serve_in_thread`).

    `url` is its root ("http://127.0.0.1:PORT"), `base_url` the OpenAI base ("<url>/v1"),
    `state` its `FakeState`; `stop()` (or leaving the `with` block) shuts it down."""

    def __init__(self, host: str, port: int, state: FakeState, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.base_url = f"{self.url}/v1"
        self.state = state
        self._loop = loop
        self._thread: threading.Thread | None = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server and join its thread (idempotent)."""
        t, self._thread = self._thread, None
        if t is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            t.join(timeout_s)

    def __enter__(self) -> RunningFake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0.0) -> RunningFake:
    """Start the fake server on `host:port` (0: a free port) in a daemon thread with its own event
    loop; returns once it accepts connections. Raises `OSError` if the port cannot be bound."""
    import concurrent.futures
    import logging

    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # aborted calls are normal here
    app = make_app(latency_ms)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    bound: concurrent.futures.Future[int] = concurrent.futures.Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, host, port).start())
            bound.set_result(int(runner.addresses[0][1]))
        except BaseException as e:
            bound.set_exception(e)
        else:
            loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name="llmroute-fake-upstream")
    thread.start()
    try:
        fake = RunningFake(host, bound.result(timeout=30), app[STATE], loop)
    except BaseException:
        thread.join(10)
        raise
    fake._thread = thread
    return fake


def main(argv: list[str] | None = None) -> None:
    """`python -m llmroute.gateway.fake --port N [--host 127.0.0.1] [--latency-ms MS]`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m llmroute.gateway.fake", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=float(os.environ.get("LLMROUTE_FAKE_LATENCY_MS") or 0),
        help="wait this long before every successful answer (default: $LLMROUTE_FAKE_LATENCY_MS or 0)",
    )
    args = ap.parse_args(argv)
    if args.latency_ms < 0:
        ap.error("--latency-ms must be >= 0")
    import logging

    # aborted connections (the gateway cancelling calls) are normal here: do not log tracebacks
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        pass
    web.run_app(make_app(args.latency_ms), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
