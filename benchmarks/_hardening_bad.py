"""The bad-input section of benchmarks/hardening.py (see its docstring): every malformed input
family of tests/security (named JSON cases, raw HTTP-level cases over sockets) and the generated
wrong-type mutations of every field of a full chat and Messages body, sent to one `llmroute serve`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from _hardening_procs import STRONG_WINDOW, Served, config, key_entry, secret

SLOW_S = 1.0  # the bad-input gateway's header and body timeouts


# ---- bad input -----------------------------------------------------------------------------------

CHAT = {"model": "llmroute/auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
MSGS = {"model": "llmroute/auto", "max_tokens": 20, "messages": [{"role": "user", "content": "hello"}]}
# a Messages body with every kind of part, whose fields the generated mutations hit one by one
MSGS_FULL: dict[str, Any] = {
    "model": "llmroute/auto",
    "max_tokens": 20,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look at this."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
    ],
    "tools": [{"name": "lookup", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["END"],
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 5,
    "metadata": {"user_id": "u1"},
}
CHAT_FULL: dict[str, Any] = {
    "model": "llmroute/auto",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "max_tokens": 20,
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "stop": ["END"],
    "llmroute": {"tradeoff": 10, "max_cost": 1.0, "min_quality": 0.1, "on_unmet": "closest"},
}
WRONG = [None, 5, -1, 1.5, "x", True, [], [1, None], {}, {"a": 1}]


def nested(levels: int) -> bytes:
    """A JSON array nested `levels` deep, as bytes (deeper than any recursive encoder goes)."""
    return b"[" * levels + b"0" + b"]" * levels


def with_(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    cur = body
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return body


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field / item path of a JSON value."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from paths(v, (*prefix, k))


def json_cases() -> list[tuple[str, str, str, bytes]]:
    """(group, case, path, body) of the named JSON inputs."""
    cases: list[tuple[str, str, str, bytes]] = []
    deep = b""  # what the placeholder "__DEEP__" stands for in the body being added

    def add(group: str, name: str, path: str, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        cases.append((group, name, path, data.replace(b'"__DEEP__"', deep)))

    chat = "/v1/chat/completions"
    for field, value in [
        ("n", 0), ("n", -1), ("n", 2.5), ("n", "2"), ("n", True), ("n", 129), ("n", 1e308),
        ("max_tokens", 2**31), ("max_tokens", 10**30), ("max_completion_tokens", 1e308),
        ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 417.5), ("max_completion_tokens", 0),
        ("max_completion_tokens", -1), ("max_completion_tokens", 1.5), ("temperature", -0.01),
        ("temperature", 2.01), ("temperature", "hot"), ("top_p", -0.01), ("top_p", 1.01),
        ("presence_penalty", 2.5), ("frequency_penalty", -2.5), ("max_tokens", STRONG_WINDOW + 1),
        ("stream", "yes"),
    ]:  # fmt: skip
        add("chat: field ranges and types", f"{field}={json.dumps(value)}", chat, {**CHAT, field: value})
    for policy in [
        {"min_quality": 1.5}, {"min_quality": -0.1}, {"strong_share": 2}, {"tradeoff": -1},
        {"max_cost": "cheap"}, {"on_unmet": "maybe"}, {"tradeof": 1}, [1], "fast", 5,
    ]:  # fmt: skip
        add("chat: llmroute object", f"llmroute={json.dumps(policy)}", chat, {**CHAT, "llmroute": policy})
    for name, fields in [
        ('messages[0].role=["user"]', {"messages": [{"role": ["user"], "content": "hi"}]}),
        ("messages[0].role={}", {"messages": [{"role": {"a": 1}, "content": "hi"}]}),
        ('messages[0].role="wizard"', {"messages": [{"role": "wizard", "content": "hi"}]}),
        ("messages[0].content=5", {"messages": [{"role": "user", "content": 5}]}),
        ("messages[0].content=[1,null]", {"messages": [{"role": "user", "content": [1, None]}]}),
        (
            "messages[0].content=[{type:nope}]",
            {"messages": [{"role": "user", "content": [{"type": "nope"}]}]},
        ),
        ('messages="hi"', {"messages": "hi"}),
        ("messages=[]", {"messages": []}),
        ("messages=[1]", {"messages": [1]}),
        ("messages missing", {"messages": None}),
        ("model=5", {"model": 5}),
        ("model missing", {"model": None}),
        ("model unknown", {"model": "no-such-model"}),
        ("model suffix @2", {"model": "llmroute/auto@2"}),
        ("model suffix on a concrete model", {"model": "fake-weak@0.3"}),
        ("tools=[1]", {"tools": [1]}),
        ("tools=[ok, null]", {"tools": [{"type": "function", "function": {"name": "f"}}, None]}),
        ('tools="f"', {"tools": "f"}),
        ("response_format=5", {"response_format": 5}),
    ]:
        body = {k: v for k, v in {**CHAT, **fields}.items() if v is not None}
        add("chat: wrongly typed parts", name, chat, body)
    for where in ("messages content", "tools", "llmroute", "metadata"):
        for levels in (65, 254, 1024, 100_000):
            deep = nested(levels)
            body = {**CHAT}
            if where == "messages content":
                body["messages"] = [{"role": "user", "content": "__DEEP__"}]
            else:
                body[where] = "__DEEP__"
            add("deep JSON", f"{levels} levels in {where}", chat, body)
    deep = nested(1024)
    add("deep JSON", "1024 levels in /v1/messages metadata", "/v1/messages", {**MSGS, "metadata": "__DEEP__"})
    add("deep JSON", "1024 levels in /v1/route", "/v1/route", {**CHAT, "metadata": "__DEEP__"})
    deep = b""
    for name, body in [
        ("not JSON", b"{not json"),
        ("empty body", b""),
        ("JSON array", b"[]"),
        ("JSON null", b"null"),
        ("JSON string", b'"hello"'),
        (
            "invalid UTF-8",
            b'{"model": "llmroute/auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        ),
        ("NaN literal", b'{"model": "llmroute/auto", "messages": [], "temperature": NaN}'),
        ("5 MB body", orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (5 << 20)}]})),
    ]:
        add("bad bodies", name, chat, body)
    msgs = "/v1/messages"
    for name, fields in [
        ("system=5", {"system": 5}),
        ("system=[1]", {"system": [1]}),
        ("content=[1,null]", {"messages": [{"role": "user", "content": [1, None]}]}),
        ("tools=[1]", {"tools": [1]}),
        (
            "tool_result.content=5",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}
                ]
            },
        ),
        ("messages=5", {"messages": 5}),
        ("role=system", {"messages": [{"role": "system", "content": "hi"}]}),
        ("max_tokens missing", {"max_tokens": None}),
        ("max_tokens=0", {"max_tokens": 0}),
        ("max_tokens=417.5", {"max_tokens": 417.5}),
        ("temperature=1.5", {"temperature": 1.5}),
        ("top_k=-1", {"top_k": -1}),
        ('stop_sequences="x"', {"stop_sequences": "x"}),
        ("content block type=foo", {"messages": [{"role": "user", "content": [{"type": "foo"}]}]}),
        (
            "image source type=file",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
        ),
        ("server tool", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ("max_tokens beyond every window", {"max_tokens": STRONG_WINDOW + 1}),
    ]:
        body = {k: v for k, v in {**MSGS, **fields}.items() if v is not None}
        add("/v1/messages: wrongly typed fields", name, msgs, body)
    for name, body in [
        ("messages=5", {"model": "llmroute/auto", "messages": 5}),
        ("no prompt or messages", {"model": "llmroute/auto"}),
        ("prompt=5", {"model": "llmroute/auto", "prompt": 5}),
    ]:
        add("/v1/route and /v1/feedback", f"route {name}", "/v1/route", body)
    for name, body in [
        ("request_id=5", {"request_id": 5, "quality": 1}),
        ("unknown request id", {"request_id": "0" * 32, "quality": 1}),
        ('quality="good"', {"request_id": "0" * 32, "quality": "good"}),
        ("body=[]", []),
    ]:
        add("/v1/route and /v1/feedback", f"feedback {name}", "/v1/feedback", body)
    return cases


def mutation_cases() -> list[tuple[str, str, bytes]]:
    """(endpoint, path, body): every field and item of a full chat and Messages body replaced in
    turn by each wrongly typed value of WRONG (some are valid: only the absence of 5xx counts)."""
    out = []
    for endpoint, base in (("/v1/chat/completions", CHAT_FULL), ("/v1/messages", MSGS_FULL)):
        for path in paths(base):
            for value in WRONG:
                out.append((endpoint, ".".join(map(str, path)), orjson.dumps(with_(base, path, value))))
    return out


def raw_exchange(port: int, data: bytes, wait_s: float = 0.0, rest: bytes = b"", safety_s: float = 30) -> int:
    """Send raw bytes (then `rest` after `wait_s`) and return the response's status (0: closed without one)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(safety_s)
    out = b""
    try:
        s.sendall(data)
        if wait_s:
            time.sleep(wait_s)
        if rest:
            with contextlib.suppress(OSError):
                s.sendall(rest)
        while b"\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else 0


def http_cases(port: int, key: str) -> list[tuple[str, str, str, int]]:
    """(group, case, path, status) of the malformed HTTP-level inputs, over raw sockets."""
    auth = f"Authorization: Bearer {key}\r\n".encode()

    def post(body: bytes, extra: bytes = b"") -> bytes:
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + auth
            + extra
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    ok = orjson.dumps(CHAT)
    g = "HTTP: headers and slow clients"
    out = [
        (g, "100 KB header", post(ok, b"X-Big: " + b"a" * 100_000 + b"\r\n"), 0.0, b""),
        (g, "101 headers", post(ok, b"".join(f"X-H{i}: v\r\n".encode() for i in range(101))), 0.0, b""),
        (g, "70 KB request line", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 0.0, b""),
        (
            g,
            f"head not complete within {SLOW_S:g} s",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n",
            0.0,
            b"",
        ),
        (g, f"body stalled for {SLOW_S:g} s", post(ok)[: -len(ok) + 10], 0.0, b""),
        (g, "garbage request line", b"\x16\x03\x01 hello\r\n\r\n", 0.0, b""),
        (g, "Content-Length not a number", post(b"")[:-4] + b"\r\nContent-Length: abc\r\n\r\n", 0.0, b""),
        (g, "GET /v1/chat/completions", b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n", 0.0, b""),
        (g, "DELETE /v1/messages", b"DELETE /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n", 0.0, b""),
        (g, "unknown path", b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n", 0.0, b""),
        (g, "no API key", post(ok).replace(auth, b""), 0.0, b""),
        (g, "wrong API key", post(ok).replace(key.encode(), b"sk-wrong-key-000000000000"), 0.0, b""),
    ]
    return [(grp, name, "raw", raw_exchange(port, data, wait, rest)) for grp, name, data, wait, rest in out]


def bad_inputs(fake: str, folder: Path) -> dict[str, Any]:
    run_dir = folder / "bad"
    run_dir.mkdir()
    cfg = config(
        fake + "/v1",
        run_dir,
        [key_entry("bad", 1000.0)],
        header_timeout_s=SLOW_S,
        body_timeout_s=SLOW_S,
    )
    served = Served(cfg, run_dir, 1, run_dir)
    key = secret("bad")
    named: list[dict[str, Any]] = []
    mutated: dict[str, collections.Counter[str]] = {}
    try:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json", "x-api-key": key}
        with httpx.Client(base_url=served.url, timeout=60) as c:

            def status(path: str, body: bytes) -> int:
                try:
                    return c.post(path, content=body, headers=headers).status_code
                except httpx.HTTPError:
                    return 0

            for group, name, path, body in json_cases():
                named.append({"group": group, "case": name, "path": path, "status": status(path, body)})
            for group, name, path, st in http_cases(served.port, key):
                named.append({"group": group, "case": name, "path": path, "status": st})
            for path, field, body in mutation_cases():
                st = status(path, body)
                mutated.setdefault(path, collections.Counter())[str(st)] += 1
                if st >= 500 or st == 0:
                    named.append({"group": "mutations (5xx)", "case": field, "path": path, "status": st})
            healthy = c.get("/healthz").status_code
    finally:
        served.stop()
    log = served.log.read_text(errors="replace")
    five = [r for r in named if r["status"] >= 500]
    dropped = [r for r in named if r["status"] == 0]
    res = {
        "named": named,
        "mutations": {p: dict(c) for p, c in mutated.items()},
        "inputs": len(named) + sum(sum(c.values()) for c in mutated.values()),
        "responses_5xx": len(five) + sum(v for c in mutated.values() for k, v in c.items() if int(k) >= 500),
        "closed_without_status": len(dropped),
        "healthz_after": healthy,
        "tracebacks_in_log": log.count("Traceback"),
        # the exception line ending each traceback (what a 5xx was)
        "exceptions_in_log": sorted(set(re.findall(r"(?m)^(\w+(?:Error|Exception)\b.*)$", log))),
    }
    res["pass"] = res["responses_5xx"] == 0 and healthy == 200
    print(json.dumps({k: v for k, v in res.items() if k != "named"}), file=sys.stderr)
    return res
