"""#11 item 5: no secrets, prompt text or internal addresses leak through errors, traces or /v1/route.

Unit tests pin each scrubbing rule (`ErrorScrubber`, `join_url`, `public_url`); end-to-end tests run
a real gateway on 127.0.0.1 in front of the fake server's `echo` / `echo500` faults (an upstream
that repeats the request's headers, credentials included, and body, prompt included, in its error)
and check what the official clients see and what the trace store holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from conftest import FakeServer, StubRouter, anthropic_model, free_port, loopback_config, run_gateway
from llmroute.gateway.backends.base import DETAIL_MAX_CHARS, ErrorScrubber
from llmroute.gateway.backends.http import join_url, public_url
from llmroute.gateway.store import open_store

PROVIDER_KEY = "pk-live-0123456789abcdefSECRET"  # not shaped like a known key: only the literal rule hides it
ANTHROPIC_KEY = "sk-ant-api03-leakcheck-0123456789abcdefghij"
PROMPT = "The merger with Globex closes on 14 March; tell nobody about the price of 3.2 billion."
PROMPT_PIECES = ("merger with Globex", "closes on 14 March", "price of 3.2 billion")


def _assert_clean(text: str, *, port: int | None = None) -> None:
    """No key, no Authorization value, no prompt text, no upstream address in `text`."""
    assert PROVIDER_KEY not in text and ANTHROPIC_KEY not in text
    assert "SECRET" not in text and "leakcheck" not in text
    for piece in PROMPT_PIECES:
        assert piece not in text
    assert "127.0.0.1" not in text
    if port is not None:
        assert str(port) not in text


# ---- units: URLs ---------------------------------------------------------------------------------
def test_join_url_puts_the_path_before_the_query() -> None:
    assert join_url("https://h/v1?api-version=2024", "/chat/completions") == (
        "https://h/v1/chat/completions?api-version=2024"
    )
    assert join_url("https://h/v1/", "/chat/completions") == "https://h/v1/chat/completions"
    assert join_url("http://h:8000", "/v1/messages") == "http://h:8000/v1/messages"
    assert join_url("https://h/openai/v1?a=1&b=2", "chat/completions") == (
        "https://h/openai/v1/chat/completions?a=1&b=2"
    )


def test_public_url_drops_userinfo_query_and_fragment() -> None:
    assert public_url("https://user:pw@h.example:8443/v1?key=tok#frag") == "https://h.example:8443/v1"
    assert public_url("http://h/v1") == "http://h/v1"
    assert public_url("http://admin@[::1]:9000/v1") == "http://[::1]:9000/v1"
    assert public_url(None) is None


# ---- units: the scrubber, one rule each -----------------------------------------------------------
def _scrubber() -> ErrorScrubber:
    return ErrorScrubber("m1", "http://u:p@10.1.2.3:8123/v1?token=q", [PROVIDER_KEY, "hdr-value-secret"])


def test_scrubber_removes_configured_secrets() -> None:
    out = _scrubber().text(f"bad key {PROVIDER_KEY} and header hdr-value-secret")
    assert PROVIDER_KEY not in out and "hdr-value-secret" not in out
    assert out.startswith("bad key [REDACTED]")


def test_scrubber_removes_credential_headers_and_bearer_tokens() -> None:
    s = _scrubber()
    out = s.text("headers: Authorization: Bearer abcdefghijklmnop; X-Api-Key: zyxwvutsrq; Accept: */*")
    assert "abcdefghijklmnop" not in out and "zyxwvutsrq" not in out
    assert "Accept: */*" in out  # other headers are not secrets
    out = s.text("{'authorization': 'Basic dXNlcjpwYXNzd29yZA=='}")
    assert "dXNlcjpwYXNzd29yZA" not in out
    out = s.text("token Bearer qwertyuiopasdfgh rejected")
    assert "qwertyuiopasdfgh" not in out and out.endswith("rejected")


def test_scrubber_removes_key_like_tokens_it_was_not_told_about() -> None:
    out = _scrubber().text("invalid api key sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234 given")
    assert "ABCDEFGHIJKLMNOP" not in out and out == "invalid api key [REDACTED] given"


def test_scrubber_replaces_the_upstream_address_with_the_model() -> None:
    out = _scrubber().text("cannot reach 10.1.2.3:8123 (host 10.1.2.3)")
    assert "10.1.2.3" not in out and "8123" not in out
    assert "[m1 upstream]" in out
    # a host name is replaced as a word only: other words that contain it stay readable
    s = ErrorScrubber("local", "http://vllm:8000/v1")
    assert s.text("vllm:8000 refused; see vllm-docs on vllm") == (
        "[local upstream] refused; see vllm-docs on [local upstream]"
    )


def test_scrubber_strips_urls_to_scheme_host_path() -> None:
    out = ErrorScrubber("m").text("see https://bob:hunter22@docs.example/errors?sig=abc123 for help")
    assert "hunter22" not in out and "sig=abc123" not in out and "bob" not in out
    assert "https://docs.example/errors" in out


def test_scrubber_removes_echoed_request_text_and_keeps_the_rest() -> None:
    payload = orjson.dumps({"model": "x", "messages": [{"role": "user", "content": PROMPT}]})
    out = ErrorScrubber("m").text(f"content policy: '{PROMPT}' was refused, rephrase it", payload)
    for piece in PROMPT_PIECES:
        assert piece not in out
    assert out.startswith("content policy: '[request text]") and out.endswith("was refused, rephrase it")
    # a message that shares no 12-character run with the request is left alone
    plain = "This model's maximum context length is 8192 tokens."
    assert ErrorScrubber("m").text(plain, payload) == plain


def test_scrubber_catches_non_ascii_prompt_echoed_as_json_escapes() -> None:
    prompt = "Передайте пароль от сервера бухгалтерии завтра утром"
    payload = orjson.dumps({"messages": [{"role": "user", "content": prompt}]})
    echoed = orjson.dumps(prompt).decode()  # raw UTF-8 form
    ascii_echo = __import__("json").dumps(prompt)  # \\uXXXX form
    for msg in (echoed, ascii_echo):
        out = ErrorScrubber("m").text(f"bad: {msg}", payload)
        assert "пароль от сервера" not in out and "\\u041f\\u0435\\u0440" not in out


def test_scrubber_caps_the_length_and_drops_control_characters() -> None:
    out = ErrorScrubber("m").text("line one\r\n\x1b[31mred\x00" + "x" * 5000)
    assert len(out) <= DETAIL_MAX_CHARS
    assert not any(ord(c) < 32 for c in out) and out.startswith("line one [31mred x")


def test_scrubber_detail_keeps_only_the_error_message_of_json_bodies() -> None:
    body = orjson.dumps(
        {"error": {"message": "model overloaded", "debug": {"headers": {"x": PROVIDER_KEY}}}, "echo": PROMPT}
    )
    assert ErrorScrubber("m").detail(body) == "model overloaded"
    assert ErrorScrubber("m").detail(b'{"error": "ollama says no"}') == "ollama says no"
    assert ErrorScrubber("m").detail(b'{"detail": "vllm says no"}') == "vllm says no"
    assert ErrorScrubber("m").detail(orjson.dumps({"request": PROMPT})) == ""  # no message: nothing


# ---- end to end --------------------------------------------------------------------------------------
@pytest.fixture()
def leaky(
    fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A gateway whose OpenAI-style models carry a provider key, plus an Anthropic model, with traces."""
    monkeypatch.setenv("LLMROUTE_TEST_LEAK_KEY", PROVIDER_KEY)
    monkeypatch.setenv("LLMROUTE_TEST_LEAK_ANTHROPIC_KEY", ANTHROPIC_KEY)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    for m in cfg["models"]:
        m["api_key_env"] = "LLMROUTE_TEST_LEAK_KEY"
        m["timeout_s"] = 10  # an upstream timeout on a loaded box would replace the echoed error
    cfg["models"].append(anthropic_model(fake_server.url, "LLMROUTE_TEST_LEAK_ANTHROPIC_KEY", timeout_s=10))
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
            yield gw, cfg
    finally:
        fake_server.clear()


def _traces(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    with open_store(cfg["store"]["url"]) as st:
        return st.query(limit=None)


def test_echoing_upstream_leaks_nothing_to_clients_or_traces(
    leaky: tuple[Any, dict[str, Any]], fake_server: FakeServer
) -> None:
    gw, _ = leaky
    client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=20)
    msgs = [{"role": "user", "content": PROMPT}]
    seen: list[str] = []

    fake_server.set_fault("*", "echo")  # a 400: the request's fault, answered as is
    for model in ("fake-weak", "claude-fake"):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, messages=msgs)  # type: ignore[arg-type]
        seen.append(str(e.value.body))
        assert "upstream rejected the request (400)" in str(e.value.body)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, messages=msgs, stream=True)  # type: ignore[arg-type]
        seen.append(str(e.value.body))
    raw = httpx.post(
        f"{gw.root}/v1/messages", json={"model": "fake-weak", "max_tokens": 20, "messages": msgs}
    )
    assert raw.status_code == 400
    seen.append(raw.text)

    fake_server.set_fault("*", "echo500")  # retried, then the other candidate, then 502
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="llmroute/auto", messages=msgs)  # type: ignore[arg-type]
    assert "all candidate models failed" in str(e.value.body)
    seen.append(str(e.value.body))
    ac = anthropic.Anthropic(base_url=gw.root, api_key="unused", max_retries=0, timeout=20)
    with pytest.raises(anthropic.APIStatusError) as ae:
        ac.messages.create(model="claude-fake", max_tokens=20, messages=msgs)  # type: ignore[arg-type]
    seen.append(str(ae.value.body))

    for text in seen:
        # the upstream really did echo its headers: the key was there and is gone
        assert "Authorization: [REDA" in text or "x-api-key: [REDA" in text, text  # (capped: 200 chars)
        _assert_clean(text, port=fake_server.port)


def test_traces_hold_only_scrubbed_errors(
    fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMROUTE_TEST_LEAK_KEY", PROVIDER_KEY)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    for m in cfg["models"]:
        m["api_key_env"] = "LLMROUTE_TEST_LEAK_KEY"
        m["timeout_s"] = 10  # an upstream timeout on a loaded box would replace the echoed error
    msgs = [{"role": "user", "content": PROMPT}]
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
            client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=20)
            fake_server.set_fault("*", "echo")
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="fake-weak", messages=msgs)  # type: ignore[arg-type]
            fake_server.set_fault("*", "echo500")
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="llmroute/auto", messages=msgs, stream=True)  # type: ignore[arg-type]
    finally:
        fake_server.clear()
    rows = _traces(cfg)
    failed = [r for r in rows if r["status"] >= 400]
    assert len(failed) == 2
    for r in failed:
        assert r["error"] and "[REDACTED]" in r["error"]
        _assert_clean(r["error"], port=fake_server.port)
        for f in r["fallbacks"]:
            _assert_clean(str(f["error"]), port=fake_server.port)
        assert r["prompt"] is None
    assert any(len(r["fallbacks"]) >= 2 for r in failed)  # the 502: every try's error is stored


def test_connection_errors_name_the_model_not_the_address(fake_server: FakeServer, tmp_path: Path) -> None:
    dead = free_port()
    cfg = loopback_config(f"http://127.0.0.1:{dead}/v1", tmp_path)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=20)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="fake-weak", messages=[{"role": "user", "content": "hi"}])
    text = str(e.value.body)
    assert "fake-weak" in text and "cannot connect" in text
    assert str(dead) not in text and "127.0.0.1" not in text
    rows = _traces(cfg)
    assert rows and all(str(dead) not in (r["error"] or "") for r in rows)
    assert all(str(dead) not in str(r["fallbacks"]) for r in rows)


def test_route_shows_no_base_url_credentials_and_query_base_urls_work(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    host = fake_server.base_url.split("//", 1)[1]  # 127.0.0.1:PORT/v1
    cfg = loopback_config(f"http://alice:pa55word@{host}?api-version=2024&token=tok-987654", tmp_path)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        r = httpx.post(f"{gw}/route", json={"model": "llmroute/auto", "prompt": "hello"})
        assert r.status_code == 200, r.text
        urls = [c["base_url"] for c in r.json()["ranked"]]
        assert urls and all(u == fake_server.base_url for u in urls), urls
        assert "pa55word" not in r.text and "alice" not in r.text and "tok-987654" not in r.text
        models = httpx.get(f"{gw}/models").text
        assert "pa55word" not in models and "tok-987654" not in models
        # the query stays after the joined path: the upstream answers (a wrong join is a 404 there)
        client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=20)
        resp = client.chat.completions.create(model="fake-weak", messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content


def test_config_error_never_prints_a_base_url_with_credentials() -> None:
    from llmroute.gateway.config import ConfigError, parse_config

    bad = {"models": [{"name": "m", "base_url": "ftp://admin:hunter2@internal.example:9000/v1?token=s3cr3t"}]}
    with pytest.raises(ConfigError) as e:
        parse_config(bad)
    msg = str(e.value)
    assert "base_url must start with http:// or https://" in msg and "'ftp'" in msg
    assert "hunter2" not in msg and "s3cr3t" not in msg and "internal.example" not in msg
