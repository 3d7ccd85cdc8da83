"""The state of one fake server (`llmroute.gateway.fake`, see its docstring) and what every model
endpoint does first.

`FakeState` holds the fault registry, the counters, the skill profiles and judges; `STATE` is its
key in the aiohttp application. `_begin` reads a model call's JSON body, counts it, draws its
fault (`FAULTS`, `ANSWER_FAULTS`, `JUDGE_FAULTS`) and answers the faults that come before the
answer (`_maybe_fault_pre`). The model endpoints are in `llmroute.gateway.fake_endpoints`; the
control endpoints, the application and the server in `llmroute.gateway.fake`, which re-exports
the public names here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from llmroute.gateway.fake_skills import DEFAULT_JUDGES, DEFAULT_SKILLS, _coin, _judge, _skilled, _solve

__all__ = ["ANSWER_FAULTS", "FAULTS", "JUDGE_FAULTS", "STATE", "FakeState"]


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
