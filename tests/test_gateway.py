"""Gateway end to end: the official openai client (sync, async, streaming) against a real gateway on
127.0.0.1 in front of the project's fake OpenAI server; routing, pass-through, trace headers, the
decision and feedback endpoints, models/health/metrics/OpenAPI, and bad input giving OpenAI-style 4xx."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import StubRouter, loopback_config, run_gateway


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("gw")
    cfg = loopback_config(fake_server.base_url, tmp, max_body_bytes=64 * 1024)
    cfg["aliases"]["llmroute/cheap"] = {"router": "default", "tradeoff": 1e9}
    # Generous upstream timeouts: on a loaded 2-core CI box 50 concurrent calls can take longer than the
    # fixture's 0.5 s, and a timed-out fake-weak would trip the breaker and move later tests to fake-strong.
    for m in cfg["models"]:
        m["timeout_s"] = 10
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        yield url


@pytest.fixture(autouse=True)
def _clean(fake_server: Any) -> None:
    fake_server.clear()


def _client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)


SHORT = "hi"
LONG = "Prove that there are infinitely many primes, step by step. " * 4


def test_sync_routes_by_prompt_and_sets_trace_headers(gw: str) -> None:
    c = _client(gw)
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/auto", messages=[{"role": "user", "content": SHORT}]
    )
    r = raw.parse()
    assert raw.headers["x-llmroute-model"] == "fake-weak"
    assert len(raw.headers["x-llmroute-request-id"]) >= 16
    assert "alias=llmroute/auto" in raw.headers["x-llmroute-reason"]
    assert r.choices[0].message.content == f"[fake-weak] {SHORT}"
    assert r.usage is not None and r.usage.total_tokens > 0
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/auto", messages=[{"role": "user", "content": LONG}]
    )
    assert raw.headers["x-llmroute-model"] == "fake-strong"
    # the cheap alias always picks the cheaper model
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/cheap", messages=[{"role": "user", "content": LONG}]
    )
    assert raw.headers["x-llmroute-model"] == "fake-weak"


def test_routing_reads_the_whole_conversation(gw: str) -> None:
    c = _client(gw)
    msgs = [{"role": "system", "content": LONG}, {"role": "user", "content": SHORT}]
    raw = c.chat.completions.with_raw_response.create(model="llmroute/auto", messages=msgs)
    assert raw.headers["x-llmroute-model"] == "fake-strong"


def test_per_request_policy_override(gw: str) -> None:
    c = _client(gw)
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/auto",
        messages=[{"role": "user", "content": LONG}],
        extra_body={"llmroute": {"tradeoff": 1e9}},
    )
    assert raw.headers["x-llmroute-model"] == "fake-weak"
    assert "lambda=1e+09" in raw.headers["x-llmroute-reason"]


def test_concrete_model_passes_through_with_extra_fields(gw: str, fake_server: Any) -> None:
    c = _client(gw)
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    raw = c.chat.completions.with_raw_response.create(
        model="fake-strong",
        messages=[{"role": "user", "content": SHORT}],
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        temperature=0.3,
        max_tokens=17,
        n=2,
        extra_body={"my_vendor_field": {"a": [1, 2]}, "top_k": 5},
    )
    r = raw.parse()
    assert raw.headers["x-llmroute-model"] == "fake-strong"
    assert raw.headers["x-llmroute-reason"] == "direct"
    assert len(r.choices) == 2
    assert r.choices[0].message.tool_calls[0].function.name == "lookup"
    seen = fake_server.state.last["fake-strong"]
    for k, v in {
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "temperature": 0.3,
        "max_tokens": 17,
        "n": 2,
        "my_vendor_field": {"a": [1, 2]},
        "top_k": 5,
    }.items():
        assert seen[k] == v, k


def test_streaming_sync(gw: str) -> None:
    c = _client(gw)
    stream = c.chat.completions.create(
        model="llmroute/auto", messages=[{"role": "user", "content": SHORT}], stream=True
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == f"[fake-weak] {SHORT}"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(ch.usage is None for ch in chunks)  # not asked for: the gateway's usage chunk is hidden
    stream = c.chat.completions.create(
        model="llmroute/auto",
        messages=[{"role": "user", "content": SHORT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streaming_headers_and_tool_calls(gw: str) -> None:
    c = _client(gw)
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    with c.chat.completions.with_streaming_response.create(
        model="llmroute/auto", messages=[{"role": "user", "content": LONG}], stream=True, tools=tools
    ) as resp:
        assert resp.headers["x-llmroute-model"] == "fake-strong"
        assert resp.headers["content-type"].startswith("text/event-stream")
        calls = [
            ch.choices[0].delta.tool_calls
            for ch in resp.parse()
            if ch.choices and ch.choices[0].delta.tool_calls
        ]
    assert calls and calls[0][0].function.name == "f"


def test_async_client_concurrent(gw: str) -> None:
    async def main() -> list[str]:
        c = openai.AsyncOpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)

        async def one(i: int) -> str:
            r = await c.chat.completions.create(
                model="llmroute/auto", messages=[{"role": "user", "content": f"q{i}"}]
            )
            return r.choices[0].message.content or ""

        out = await asyncio.gather(*(one(i) for i in range(50)))
        s = await c.chat.completions.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "s"}], stream=True
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])
        await c.close()
        return [*out, text]

    out = asyncio.run(main())
    assert out[:50] == [f"[fake-weak] q{i}" for i in range(50)]
    assert out[50] == "[fake-weak] s"


def test_models_route_health_openapi_metrics(gw: str) -> None:
    c = _client(gw)
    ids = [m.id for m in c.models.list()]
    assert {"llmroute/auto", "llmroute/cheap", "fake-strong", "fake-weak"} <= set(ids)
    d = httpx.post(
        gw + "/route", json={"model": "llmroute/auto", "messages": [{"role": "user", "content": LONG}]}
    ).json()
    assert d["model"] == "fake-strong"
    assert [x["model"] for x in d["ranked"]] == ["fake-strong", "fake-weak"]
    assert all(0 <= x["expected_quality"] <= 1 and x["expected_cost"] > 0 for x in d["ranked"])
    assert d["reason"].startswith("alias=llmroute/auto")
    d2 = httpx.post(gw + "/route", json={"model": "llmroute/auto", "prompt": SHORT}).json()
    assert d2["model"] == "fake-weak"
    h = httpx.get(gw.root + "/healthz").json()
    assert h["status"] == "ok" and set(h["breakers"]) == {"fake-strong", "fake-weak"}
    doc = httpx.get(gw.root + "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/chat/completions" in doc["paths"]
    text = httpx.get(gw.root + "/metrics").text
    assert "llmroute_requests_total" in text


def test_feedback(gw: str) -> None:
    c = _client(gw)
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/auto", messages=[{"role": "user", "content": SHORT}]
    )
    rid = raw.headers["x-llmroute-request-id"]
    gw.app.store.flush_sync(5)
    r = httpx.post(gw + "/feedback", json={"request_id": rid, "quality": 1.0, "comment": "good"})
    assert r.status_code == 200, r.text
    rec = gw.app.store.get(rid)
    assert rec["model"] == "fake-weak" and rec["alias"] == "llmroute/auto"
    assert rec["outcome"]["quality"] == 1.0
    assert [x["model"] for x in rec["candidates"]] == ["fake-weak", "fake-strong"]
    r = httpx.post(gw + "/feedback", json={"request_id": "nope", "quality": 1.0})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.post(gw + "/feedback", json={"request_id": rid, "quality": 7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "quality"


def _post_raw(gw: str, body: bytes, path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(gw + path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (json.dumps({"model": 5, "messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (json.dumps({"model": "llmroute/auto"}).encode(), 400, "messages"),
        (json.dumps({"model": "llmroute/auto", "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({"model": "llmroute/auto", "messages": []}).encode(), 400, "messages"),
        (
            json.dumps({"model": "llmroute/auto", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            400,
            "messages[0].role",
        ),
        (
            json.dumps({"model": "llmroute/auto", "messages": [{"role": "user", "content": 3}]}).encode(),
            400,
            "messages[0].content",
        ),
        (
            json.dumps(
                {"model": "llmroute/auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}
            ).encode(),
            400,
            "stream",
        ),
        (
            json.dumps(
                {"model": "llmroute/auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}
            ).encode(),
            400,
            "max_tokens",
        ),
        (
            json.dumps(
                {
                    "model": "llmroute/auto",
                    "messages": [{"role": "user", "content": "x"}],
                    "llmroute": {"tradeoff": "big"},
                }
            ).encode(),
            400,
            "llmroute.tradeoff",
        ),
        (
            json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}).encode(),
            404,
            "model",
        ),
        (
            json.dumps({"model": "llmroute/nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
            404,
            "model",
        ),
    ],
)
def test_bad_input_gives_openai_style_4xx(gw: str, body: bytes, status: int, param: str | None) -> None:
    r = _post_raw(gw, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert err["param"] == param
    assert r.headers["x-llmroute-request-id"]
    assert r.headers["x-llmroute-reason"].startswith(f"rejected {status}")
    assert r.headers["x-llmroute-model"] == "none"


def test_oversized_body_and_unknown_paths(gw: str) -> None:
    big = json.dumps(
        {"model": "llmroute/auto", "messages": [{"role": "user", "content": "x" * 100_000}]}
    ).encode()
    r = _post_raw(gw, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # chunked upload without content-length is limited too
    r = httpx.post(gw + "/chat/completions", content=iter([big[:50_000], big[50_000:]]))
    assert r.status_code == 413
    assert httpx.get(gw + "/nothing").status_code == 404
    r = httpx.get(gw + "/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_openai_client_sees_typed_errors(gw: str) -> None:
    c = _client(gw)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-unknown", messages=[{"role": "user", "content": "x"}])
    assert "does not exist" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="llmroute/auto", messages=[])


def test_upstream_400_is_returned_not_retried(gw: str, fake_server: Any) -> None:
    fake_server.set_fault("fake-weak", "400")
    r = _post_raw(
        gw, json.dumps({"model": "llmroute/auto", "messages": [{"role": "user", "content": "x"}]}).encode()
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_bad_request"
    assert fake_server.state.counts.get("fake-strong", 0) == 0  # the request itself was bad: no fallback
    assert fake_server.state.counts["fake-weak"] == 1  # and no retry


def test_client_disconnect_cancels_upstream(gw: str, fake_server: Any) -> None:
    """A client that goes away mid-request: the gateway cancels the upstream call and records 499."""
    fake_server.set_fault("fake-weak", "slow", delay=3.0)
    body = json.dumps({"model": "fake-weak", "messages": [{"role": "user", "content": "bye"}]}).encode()
    host, port = gw.root.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    import time

    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 5
    rec: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rec:
        gw.app.store.flush_sync(5)
        rec = gw.app.store.query(status=499, limit=5)
        time.sleep(0.05)
    assert rec and rec[0]["error"] == "client disconnected"
    fake_server.clear()


def test_missing_credentials_clear_error(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMROUTE_TEST_NO_KEY", raising=False)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"][0]["api_key_env"] = "LLMROUTE_TEST_NO_KEY"
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        c = _client(url)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="fake-strong", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 501
        assert "LLMROUTE_TEST_NO_KEY" in str(e.value) and "no credentials" in str(e.value)
        # routed requests fall back to a model that has credentials
        raw = c.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": LONG}]
        )
        assert raw.headers["x-llmroute-model"] == "fake-weak"
