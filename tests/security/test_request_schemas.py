"""#11 item 9: the request schemas (`llmroute.gateway.schemas`) are what the endpoints enforce.

The chat fields a backend's translation reads (tools, tool_choice, response_format, stop, content
parts, tool_calls) are a 400 naming the field when misshapen, on an OpenAI-compatible model and
on an Anthropic one (which translates them) alike; unknown top-level fields still reach the
upstream as they are; /v1/route takes `prompt` for `messages`; /v1/feedback wants an outcome.
Real gateway and fake upstream on 127.0.0.1, the official openai client where a client fits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from conftest import GatewayHandle, StubRouter, anthropic_model, loopback_config, run_gateway
from llmroute.gateway.auth import GatewayError
from llmroute.gateway.routing import parse_request_policy
from llmroute.gateway.schemas import ChatRequest, validate

ANTHROPIC_KEY_ENV = "LLMROUTE_TEST_SCHEMAS_ANTHROPIC_KEY"
HI = [{"role": "user", "content": "hello"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("schemas"))
    cfg["models"].append(anthropic_model(fake_server.url, ANTHROPIC_KEY_ENV, timeout_s=5))
    mp = pytest.MonkeyPatch()
    mp.setenv(ANTHROPIC_KEY_ENV, "sk-ant-test")
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield url
    finally:
        mp.undo()


def _client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)


MISSHAPEN = [
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ({"tools": [{"function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": "lookup"}}, "tool_choice.function"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 1]}, "stop[1]"),
    ({"user": 5}, "user"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0].text",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 1}]}]},
        "messages[0].content[0].image_url",
    ),
    ({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "id": "c", "function": {"name": "f"}}],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": 7}]}, "messages[0].tool_call_id"),
]


@pytest.mark.parametrize("model", ["fake-weak", "claude-fake"])
@pytest.mark.parametrize(("fields", "param"), MISSHAPEN)
def test_misshapen_fields_a_backend_reads_are_400_naming_them(
    gw: GatewayHandle, fake_server: Any, model: str, fields: dict[str, Any], param: str
) -> None:
    before = dict(fake_server.state.counts)
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw).chat.completions.create(model=model, messages=HI, extra_body=fields)  # type: ignore[arg-type]
    assert e.value.body["param"] == param, e.value.body  # type: ignore[index]
    assert e.value.body["message"].startswith(f"'{param}'"), e.value.body  # type: ignore[index]
    assert fake_server.state.counts == before  # refused before any upstream call


@pytest.mark.parametrize("model", ["fake-weak", "claude-fake"])
def test_well_shaped_fields_go_through_either_backend(gw: GatewayHandle, model: str) -> None:
    r = _client(gw).chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Look it up."}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
        ],
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        stop=["END"],
        user="u-1",
        max_tokens=32,
    )
    assert r.choices


def test_unknown_top_level_fields_pass_through_upstream(gw: GatewayHandle, fake_server: Any) -> None:
    extra = {"future_option": {"x": [1, 2]}, "seed": 7, "logit_bias": {"50256": -100}}
    r = _client(gw).chat.completions.create(model="fake-weak", messages=HI, extra_body=extra)
    assert r.choices
    sent = fake_server.state.last["fake-weak"]
    assert all(sent[k] == v for k, v in extra.items())


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "llmroute/auto"}, 400, "messages"),
        ({"model": "llmroute/auto", "prompt": None}, 400, "messages"),
        ({"model": "llmroute/auto", "prompt": 5}, 400, "prompt"),
        ({"model": "llmroute/auto", "messages": [], "prompt": "hi"}, 400, "messages"),
        ({"model": "llmroute/auto", "prompt": "hi", "llmroute": {"nope": 1}}, 400, "llmroute.nope"),
        ({"model": "llmroute/auto", "prompt": "hi"}, 200, None),
        ({"model": "llmroute/auto", "messages": HI, "prompt": 5}, 400, "prompt"),
        ({"model": "llmroute/auto", "messages": HI}, 200, None),
    ],
)
def test_route_takes_messages_or_a_prompt(
    gw: GatewayHandle, body: dict[str, Any], status: int, param: str | None
) -> None:
    r = httpx.post(f"{gw}/route", json=body, timeout=10)
    assert r.status_code == status, r.text
    if param is not None:
        assert r.json()["error"]["param"] == param
    else:
        assert r.json()["object"] == "llmroute.decision"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "request_id"),
        ({"request_id": 5, "quality": 1}, "request_id"),
        ({"request_id": "x"}, None),  # no outcome
        ({"request_id": "x", "quality": 1.01}, "quality"),
        ({"request_id": "x", "quality": -0.01}, "quality"),
        ({"request_id": "x", "quality": True}, "quality"),
    ],
)
def test_feedback_body_is_validated(gw: GatewayHandle, body: dict[str, Any], param: str | None) -> None:
    r = httpx.post(f"{gw}/feedback", json=body, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_feedback_bounds_are_inclusive(gw: GatewayHandle) -> None:
    for q in (0, 1, 0.5):
        r = httpx.post(f"{gw}/feedback", json={"request_id": "unknown", "quality": q}, timeout=10)
        assert r.status_code == 404, r.text  # valid: only the id is unknown


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": [{"role": "u" * 100_000}]}, "messages[0].role"),
        ({"tools": [{"type": "z" * 100_000}]}, "tools[0].type"),
        ({"llmroute": {"k" * 100_000: 1}}, "llmroute." + "k" * 64),
        ({"temperature": 3, "model": "m" * 100_000}, "temperature"),
    ],
)
def test_errors_stay_short_whatever_the_client_sent(extra: dict[str, Any], param: str) -> None:
    """A huge wrong value or key is shortened in the message and `param` (the client sent it)."""
    with pytest.raises(GatewayError) as e:
        validate({"model": "m", "messages": HI, **extra}, ChatRequest)
    assert e.value.param == param and len(e.value.message) < 500
    assert e.value.message.startswith(f"'{param}'")


def test_request_policy_is_checked_by_its_schema_too() -> None:
    """`parse_request_policy` (the pipeline's own check of `llmroute`) derives from RequestPolicy."""
    assert parse_request_policy(None) == {}
    assert parse_request_policy({"tradeoff": 0, "max_cost": None}) == {"tradeoff": 0, "max_cost": None}
    for obj, param in [
        ([1], "llmroute"),
        ({"tradeof": 1}, "llmroute.tradeof"),
        ({"min_quality": 1.01}, "llmroute.min_quality"),
        ({"strong_share": -0.1}, "llmroute.strong_share"),
        ({"max_cost": True}, "llmroute.max_cost"),
        ({"on_unmet": "maybe"}, "llmroute.on_unmet"),
    ]:
        with pytest.raises(GatewayError) as e:
            parse_request_policy(obj)
        assert e.value.status == 400 and e.value.param == param
        assert e.value.message.startswith(f"'{param}'")
