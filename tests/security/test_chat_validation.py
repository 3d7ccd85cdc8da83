"""Issue #11 item 8: chat validation gaps are 400s naming the field (`param`), before any hold.

`n` >= 1, `max_tokens` / `max_completion_tokens` >= 1, `temperature` in [0, 2], `top_p` in [0, 1],
penalties in [-2, 2]; integral floats (417.0) are integers; `max_tokens` beyond the context window
of every candidate (of the model, for a concrete one) is a 400 on chat, /v1/route and /v1/messages;
per-request `llmroute` policy fields in range and no unknown ones; a 405 names the allowed methods
in `Allow`. Real gateway and fake upstream on 127.0.0.1, official openai/anthropic clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import GatewayHandle, StubRouter, loopback_config, run_gateway
from llmroute.gateway.auth import GatewayError, hash_key
from llmroute.gateway.schemas import ChatRequest, MessagesRequest, validate

KEY = "sk-validation-0123456789ab"
HI = [{"role": "user", "content": "hello"}]
STRONG_WINDOW, WEAK_WINDOW = 8000, 4000


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("validation"))
    cfg["models"][0]["context_window"] = STRONG_WINDOW
    cfg["models"][1]["context_window"] = WEAK_WINDOW
    cfg["aliases"]["llmroute/weak-only"] = {"router": "default", "candidates": ["fake-weak"]}
    cfg["keys"] = [{"id": "k", "key_sha256": hash_key(KEY), "budget_usd_day": 100.0}]
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        yield url


def _client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=10)


def _param_of_400(gw: GatewayHandle, model: str = "llmroute/auto", **fields: Any) -> str:
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw).chat.completions.create(model=model, messages=HI, extra_body=fields)  # type: ignore[arg-type]
    assert gw.app.budgets.usage("k")["day_reserved"] == 0.0  # refused before any hold
    return str(e.value.body["param"])  # type: ignore[index]


BAD = [
    ("n", 0),
    ("n", -1),
    ("n", 2.5),
    ("n", "2"),
    ("n", True),
    ("n", 129),
    ("n", 1e308),
    ("max_tokens", 2**31),
    ("max_tokens", 10**30),
    ("max_completion_tokens", 1e308),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 417.5),
    ("max_completion_tokens", 0),
    ("max_completion_tokens", -1),
    ("max_completion_tokens", 1.5),
    ("temperature", -0.01),
    ("temperature", 2.01),
    ("temperature", "hot"),
    ("top_p", -0.01),
    ("top_p", 1.01),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -2.5),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_out_of_range_fields_are_a_400_naming_the_field(gw: GatewayHandle, field: str, value: Any) -> None:
    assert _param_of_400(gw, **{field: value}) == field


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0, "top_p": 0},
        {"temperature": 2, "top_p": 1},
        {"temperature": 1.5, "top_p": 0.5, "presence_penalty": -2, "frequency_penalty": 2},
        {"n": 1, "max_tokens": 1},
        {"max_completion_tokens": 1},
    ],
)
def test_bounds_are_inclusive(gw: GatewayHandle, fields: dict[str, Any]) -> None:
    r = _client(gw).chat.completions.create(model="llmroute/auto", messages=HI, extra_body=fields)  # type: ignore[arg-type]
    assert r.choices


def test_integral_floats_are_integers_and_go_upstream_as_ints(gw: GatewayHandle, fake_server: Any) -> None:
    r = _client(gw).chat.completions.create(
        model="fake-weak",
        messages=HI,
        extra_body={"max_tokens": 417.0, "n": 1.0, "max_completion_tokens": 300.0},
    )
    assert r.choices
    sent = fake_server.state.last["fake-weak"]
    assert sent["max_tokens"] == 417 and isinstance(sent["max_tokens"], int)
    assert isinstance(sent["n"], int) and isinstance(sent["max_completion_tokens"], int)


@pytest.mark.parametrize(
    ("policy", "param"),
    [
        ({"min_quality": 1.5}, "llmroute.min_quality"),
        ({"min_quality": -0.1}, "llmroute.min_quality"),
        ({"strong_share": 2}, "llmroute.strong_share"),
        ({"tradeoff": -1}, "llmroute.tradeoff"),
        ({"max_cost": "cheap"}, "llmroute.max_cost"),
        ({"on_unmet": "maybe"}, "llmroute.on_unmet"),
        ({"tradeof": 1}, "llmroute.tradeof"),
        ([1], "llmroute"),
    ],
)
def test_request_policy_is_validated(gw: GatewayHandle, policy: Any, param: str) -> None:
    assert _param_of_400(gw, llmroute=policy) == param


def test_request_policy_bounds_are_inclusive(gw: GatewayHandle) -> None:
    for q in (0, 1, 0.0, 1.0):
        r = _client(gw).chat.completions.create(
            model="llmroute/auto", messages=HI, extra_body={"llmroute": {"min_quality": q}}
        )
        assert r.choices


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": {"a": 1}, "content": "hi"}]}, "messages[0].role"),
        ({"tools": [1]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}, None]}, "tools[1]"),
    ],
)
def test_wrongly_typed_parts_are_a_400_not_a_5xx(
    gw: GatewayHandle, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "llmroute/auto", "messages": HI, **fields}
    for path in ("/chat/completions", "/route"):
        r = httpx.post(f"{gw}{path}", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, r.text)


def test_n_and_token_counts_up_to_their_maximum(gw: GatewayHandle) -> None:
    body = {"model": "llmroute/auto", "messages": HI, "n": 128, "max_tokens": STRONG_WINDOW}
    r = httpx.post(f"{gw}/route", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200, r.text


# ---- context windows -----------------------------------------------------------------------------


def test_max_tokens_beyond_every_candidates_window(gw: GatewayHandle) -> None:
    # an alias: only beyond the largest window of its candidates
    assert _param_of_400(gw, max_tokens=STRONG_WINDOW + 1) == "max_tokens"
    assert _param_of_400(gw, max_completion_tokens=STRONG_WINDOW + 1) == "max_completion_tokens"
    r = _client(gw).chat.completions.create(
        model="llmroute/auto", messages=HI, extra_body={"max_tokens": STRONG_WINDOW}
    )
    assert r.choices
    # an alias of one model, and a concrete model: that model's window
    assert _param_of_400(gw, "llmroute/weak-only", max_tokens=WEAK_WINDOW + 1) == "max_tokens"
    assert _param_of_400(gw, "fake-weak", max_tokens=WEAK_WINDOW + 1) == "max_tokens"
    r = _client(gw).chat.completions.create(model="fake-weak", messages=HI, max_tokens=WEAK_WINDOW)
    assert r.choices


def test_window_message_says_what_to_ask_for(gw: GatewayHandle) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw).chat.completions.create(model="fake-weak", messages=HI, max_tokens=10**6)
    msg = e.value.body["message"]  # type: ignore[index]
    assert f"fake-weak ({WEAK_WINDOW})" in msg and f"at most {WEAK_WINDOW}" in msg


def test_window_check_on_route_and_messages(gw: GatewayHandle) -> None:
    r = httpx.post(
        f"{gw}/route",
        json={"model": "fake-weak", "messages": HI, "max_tokens": WEAK_WINDOW + 1},
        headers={"authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    c = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10)
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="fake-weak", max_tokens=WEAK_WINDOW + 1, messages=HI)  # type: ignore[arg-type]
    assert "max_tokens" in str(e.value)
    assert gw.app.budgets.usage("k")["day_reserved"] == 0.0
    ok = c.messages.create(model="fake-weak", max_tokens=WEAK_WINDOW, messages=HI)  # type: ignore[arg-type]
    assert ok.content


def test_unknown_windows_never_refuse(fake_server: Any, tmp_path: Any) -> None:
    """A candidate without a configured context_window might fit anything: no window 400."""
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"][1]["context_window"] = WEAK_WINDOW  # fake-strong: unknown window
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=10)
        r = c.chat.completions.create(model="llmroute/auto", messages=HI, max_tokens=10**6)
        assert r.choices
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="fake-weak", messages=HI, max_tokens=WEAK_WINDOW + 1)


# ---- 405 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/messages", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/healthz", "GET"),
    ],
)
def test_405_carries_allow(gw: GatewayHandle, method: str, path: str, allow: str) -> None:
    r = httpx.request(method, f"{gw.root}{path}", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    if path == "/v1/messages":  # the Messages API answers in its own (Anthropic) error shape
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    else:
        assert r.json()["error"]["code"] == "method_not_allowed"


# ---- the shared validator (schemas.validate) ------------------------------------------------------


def test_validate_unit() -> None:
    hi = [{"role": "user", "content": "hi"}]
    body: dict[str, Any] = {"model": "m", "messages": hi, "n": 3.0, "temperature": None, "future": [1]}
    assert validate(body, ChatRequest) is body  # the same dict: unknown fields stay
    assert body["n"] == 3 and isinstance(body["n"], int)  # integral float -> int
    assert body["temperature"] is None and body["future"] == [1]  # null: absent
    for bad, param in [
        ({"temperature": float("nan")}, "temperature"),  # NaN is out of every range
        ({"n": 3.5}, "n"),
        ({"n": 129}, "n"),
        ({"max_tokens": True}, "max_tokens"),
        ({"llmroute": {"tradeoff": 1, "x": 2}}, "llmroute.x"),
    ]:
        with pytest.raises(GatewayError) as e:
            validate({"model": "m", "messages": hi, **bad}, ChatRequest)
        assert e.value.status == 400 and e.value.param == param
        assert e.value.message.startswith(f"'{param}'")
    m: dict[str, Any] = {"model": "m", "max_tokens": 5.0, "top_k": 0.0, "messages": hi}
    validate(m, MessagesRequest)
    assert isinstance(m["max_tokens"], int) and isinstance(m["top_k"], int)
    with pytest.raises(GatewayError) as e:
        validate([], ChatRequest)
    assert e.value.param is None and "JSON object" in e.value.message
