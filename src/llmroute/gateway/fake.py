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
The prompts, the skilled answers and the judge are in `llmroute.gateway.fake_skills`; the state and
the faults in `llmroute.gateway.fake_state`; the model endpoints in `llmroute.gateway.fake_endpoints`.
This module holds the control endpoints, the application, the server and re-exports the public names.

Run it: `python -m llmroute.gateway.fake --port 9000 [--latency-ms 15]` (binds 127.0.0.1), or
in a background thread of the current process with `serve_in_thread()` (what the tests and
`llmroute serve --fake-upstream`, the keyless demo, use).
"""

from __future__ import annotations

import asyncio
import os
import threading

import orjson
from aiohttp import web

from llmroute.gateway.fake_endpoints import _chat, _completions, _embeddings, _messages
from llmroute.gateway.fake_skills import (
    DEFAULT_JUDGES,
    DEFAULT_SKILLS,
    SKILL_CATEGORIES,
    is_right,
    skill_prompts,
)
from llmroute.gateway.fake_state import ANSWER_FAULTS, FAULTS, JUDGE_FAULTS, STATE, FakeState, _error

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
