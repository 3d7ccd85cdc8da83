"""The gateway's API families over one pipeline: every documented endpoint is served (the dispatch
table is assembled from the completion families and `api_ops`), and the same refusal or upstream
failure reaches each API in its own error shape (Anthropic error types on /v1/messages, OpenAI
error codes on /v1/chat/completions), streams broken off mid-way included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from conftest import GatewayHandle, StubRouter, loopback_config, run_gateway
from llmroute.gateway.app import Gateway, openapi_document
from llmroute.gateway.auth import hash_key

KEY_ALL = "sk-families-all-0123456789"
KEY_WEAK = "sk-families-weak-0123456789"
KEY_SLOW = "sk-families-slow-0123456789"
LONG = "Explain the proof of Fermat's little theorem in detail. " * 4  # the stub router picks fake-strong
MAX_BODY = 20_000


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("families"), max_body_bytes=MAX_BODY)
    cfg["keys"] = [
        {"id": "all", "key_sha256": hash_key(KEY_ALL)},
        {"id": "weak", "key_sha256": hash_key(KEY_WEAK), "aliases": ["fake-weak"]},
        {"id": "slow", "key_sha256": hash_key(KEY_SLOW), "rpm": 1},
    ]
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        yield url


@pytest.fixture(autouse=True)
def _clean(fake_server: Any) -> Iterator[None]:
    fake_server.clear()
    yield
    fake_server.clear()


def _anthropic(gw: GatewayHandle, key: str | None = KEY_ALL) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.root, api_key=key or "sk-unknown", max_retries=0, timeout=10)


def _openai(gw: GatewayHandle, key: str | None = KEY_ALL) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key=key or "sk-unknown", max_retries=0, timeout=10)


def _messages(c: anthropic.Anthropic, model: str = "llmroute/auto", text: str = "hi", **kw: Any) -> Any:
    return c.messages.create(model=model, max_tokens=32, messages=[{"role": "user", "content": text}], **kw)


def _chat(c: openai.OpenAI, model: str = "llmroute/auto", text: str = "hi") -> Any:
    return c.chat.completions.create(model=model, max_tokens=32, messages=[{"role": "user", "content": text}])


def test_public_names_still_import_from_gateway_app() -> None:
    assert Gateway.__module__ == "llmroute.gateway.app"
    assert callable(openapi_document)


def test_every_documented_endpoint_is_served(gw: GatewayHandle) -> None:
    h = {"authorization": f"Bearer {KEY_ALL}"}
    paths = openapi_document()["paths"]
    for path, ops in paths.items():
        (method,) = ops
        r = httpx.request(method.upper(), gw.root + path, headers=h, json={} if method == "post" else None)
        # an empty object is a 400 on every POST endpoint: served, validated, not 404/405
        assert r.status_code == (400 if method == "post" else 200), (path, r.status_code, r.text)
        other = "GET" if method == "post" else "POST"
        r = httpx.request(other, gw.root + path, headers=h)
        assert r.status_code == 405 and method.upper() in r.headers["allow"], path
        if path.startswith("/v1/messages"):  # the Messages API answers in its own error shape
            assert r.json()["type"] == "error" and "not allowed" in r.json()["error"]["message"], path
        else:
            assert r.json()["error"]["code"] == "method_not_allowed", path
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/route", "/v1/feedback", "/v1/models"):
        assert path in paths
    # the unversioned aliases the openai client reaches with base_url=<root>
    assert httpx.get(gw.root + "/models", headers=h).json()["object"] == "list"
    r = httpx.post(gw.root + "/chat/completions", headers=h, json={"model": "llmroute/auto"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.get(gw.root + "/v2/anything", headers=h)
    assert r.status_code == 404 and "/openapi.json" in r.json()["error"]["message"]


def _anthropic_error(ei: pytest.ExceptionInfo[anthropic.APIStatusError]) -> tuple[int, str, str]:
    body = ei.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    return ei.value.status_code, body["error"]["type"], body["error"]["message"]


def test_refusals_on_messages_have_anthropic_error_types(gw: GatewayHandle) -> None:
    with pytest.raises(anthropic.APIStatusError) as ei:
        _messages(_anthropic(gw, None))
    assert _anthropic_error(ei)[:2] == (401, "authentication_error")
    assert ei.value.response.headers["x-llmroute-request-id"]

    with pytest.raises(anthropic.APIStatusError) as ei:
        _messages(_anthropic(gw, KEY_WEAK))  # this key may use fake-weak only
    assert _anthropic_error(ei)[:2] == (403, "permission_error")

    slow = _anthropic(gw, KEY_SLOW)
    assert _messages(slow).content[0].text
    with pytest.raises(anthropic.APIStatusError) as ei:
        _messages(slow)
    assert _anthropic_error(ei)[:2] == (429, "rate_limit_error")
    assert int(ei.value.response.headers["retry-after"]) >= 1  # the error's own header passes through

    with pytest.raises(anthropic.APIStatusError) as ei:
        _messages(_anthropic(gw), text="x" * MAX_BODY)
    status, etype, message = _anthropic_error(ei)
    assert (status, etype) == (413, "request_too_large") and str(MAX_BODY) in message

    with pytest.raises(anthropic.APIStatusError) as ei:
        _messages(_anthropic(gw), model="no-such-model")
    assert _anthropic_error(ei)[:2] == (404, "not_found_error")

    r = httpx.post(
        gw.root + "/v1/messages",
        headers={"x-api-key": KEY_ALL},
        json={"model": "llmroute/auto", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "'max_tokens' must be a positive integer, got 0.",
        },
    }


def test_the_same_refusals_on_chat_have_openai_error_codes(gw: GatewayHandle) -> None:
    with pytest.raises(openai.AuthenticationError) as e1:
        _chat(_openai(gw, None))
    assert e1.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError) as e2:
        _chat(_openai(gw, KEY_WEAK))
    assert e2.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as e3:
        _chat(_openai(gw), text="x" * MAX_BODY)
    assert e3.value.status_code == 413 and e3.value.body["code"] == "request_too_large"  # type: ignore[index]


def test_upstream_failure_on_messages_is_an_anthropic_api_error(gw: GatewayHandle, fake_server: Any) -> None:
    fake_server.set_fault("fake-weak", "500")
    with pytest.raises(anthropic.APIStatusError) as ei:
        _messages(_anthropic(gw), model="fake-weak")
    status, etype, message = _anthropic_error(ei)
    assert status >= 500 and etype == "api_error" and "fake-weak" in message
    assert ei.value.response.headers["x-llmroute-model"] == "fake-weak"
    with pytest.raises(openai.APIStatusError) as eo:
        _chat(_openai(gw), model="fake-weak")
    assert eo.value.status_code == status and "fake-weak" in eo.value.body["message"]  # type: ignore[index]


def _sse(gw: GatewayHandle, path: str, body: dict[str, Any]) -> list[str]:
    with httpx.stream("POST", gw.root + path, headers={"x-api-key": KEY_ALL}, json=body, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        assert r.headers["x-llmroute-model"] == "fake-strong"
        return [ln for ln in r.iter_lines() if ln]


def test_streams_broken_off_end_in_each_apis_error_event(gw: GatewayHandle, fake_server: Any) -> None:
    fake_server.set_fault("fake-strong", "cut")
    msgs = [{"role": "user", "content": LONG}]
    lines = _sse(
        gw, "/v1/messages", {"model": "llmroute/auto", "max_tokens": 64, "messages": msgs, "stream": True}
    )
    assert lines[0] == "event: message_start" and lines[-2] == "event: error"
    err = orjson.loads(lines[-1].removeprefix("data: "))
    assert err["type"] == "error" and err["error"]["type"] == "api_error" and err["error"]["message"]
    assert not any("message_stop" in ln for ln in lines)

    lines = _sse(gw, "/v1/chat/completions", {"model": "llmroute/auto", "messages": msgs, "stream": True})
    assert lines[-1] == "data: [DONE]"
    err = orjson.loads(lines[-2].removeprefix("data: "))["error"]
    assert err["type"] == "upstream_error" and err["code"] == "stream_interrupted" and err["message"]

    fake_server.clear()  # the same streams, complete
    lines = _sse(
        gw, "/v1/messages", {"model": "llmroute/auto", "max_tokens": 64, "messages": msgs, "stream": True}
    )
    assert lines[-2:] == ["event: message_stop", 'data: {"type":"message_stop"}']
    lines = _sse(gw, "/v1/chat/completions", {"model": "llmroute/auto", "messages": msgs, "stream": True})
    assert lines[-1] == "data: [DONE]" and not any('"error"' in ln for ln in lines)
