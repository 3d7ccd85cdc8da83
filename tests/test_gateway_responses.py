"""#16 item 3: `POST /v1/responses` (OpenAI Responses API) routed like chat, with the official client.

A real gateway (StubRouter; two OpenAI-compatible models and an Anthropic one on the fake
upstream) on 127.0.0.1. What the fake upstream received (`state.last`) shows the translation to
chat; what the client gets shows the translation back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from conftest import GatewayHandle, StubRouter, anthropic_model, loopback_config, run_gateway
from llmroute.gateway.api_responses import ResponsesStream, responses_to_chat
from llmroute.gateway.auth import GatewayError, hash_key

KEY = "sk-responses-test-key"
ANTHROPIC_KEY_ENV = "LLMROUTE_TEST_RESPONSES_ANTHROPIC_KEY"
LONG = "Explain in detail how a compiler turns source code into machine code. " * 4


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("responses"))
    cfg["models"].append(anthropic_model(fake_server.url, ANTHROPIC_KEY_ENV))
    cfg["keys"] = [{"id": "team", "key_sha256": hash_key(KEY), "budget_usd_day": 100.0}]
    mp = pytest.MonkeyPatch()
    mp.setenv(ANTHROPIC_KEY_ENV, "sk-ant-test")
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield url
    finally:
        mp.undo()


def _client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=30)


def _trace(gw: GatewayHandle, rid: str) -> dict[str, Any]:
    gw.app.store.flush_sync(5)
    rows = gw.app.store.query(request_id=rid, limit=1)
    assert rows, rid
    return rows[0]


def test_create_routes_translates_and_bills(gw: GatewayHandle, fake_server: Any) -> None:
    c = _client(gw)
    spent0 = gw.app.budgets.usage("team")["day_spent"]
    raw = c.responses.with_raw_response.create(
        model="llmroute/auto",
        input="What is 2+2?",
        instructions="Answer briefly.",
        max_output_tokens=64,
        temperature=0.5,
    )
    r = raw.parse()
    model = raw.headers["x-llmroute-model"]
    assert model in ("fake-strong", "fake-weak")
    sent = fake_server.state.last[model]
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert sent["max_tokens"] == 64 and sent["temperature"] == 0.5
    assert "input" not in sent and "instructions" not in sent and "max_output_tokens" not in sent
    assert r.object == "response" and r.status == "completed" and r.model == model
    assert r.output_text and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # the same bill as the upstream's usage at the model's prices, in the key's budget
    cfg = gw.app.config.model(model)
    cost = (r.usage.input_tokens * cfg.input_per_mtok + r.usage.output_tokens * cfg.output_per_mtok) / 1e6
    assert gw.app.budgets.usage("team")["day_spent"] - spent0 == pytest.approx(cost)
    row = _trace(gw, raw.headers["x-llmroute-request-id"])
    assert row["alias"] == "llmroute/auto" and row["model"] == model and row["status"] == 200
    assert row["cost_usd"] == pytest.approx(cost)


def test_routed_by_prompt_like_chat(gw: GatewayHandle) -> None:
    """The stub router prefers the strong model on long prompts, the weak one on short ones."""
    c = _client(gw)
    short = c.responses.with_raw_response.create(model="llmroute/auto", input="hi")
    long = c.responses.with_raw_response.create(
        model="llmroute/auto", input=[{"role": "user", "content": [{"type": "input_text", "text": LONG}]}]
    )
    assert short.headers["x-llmroute-model"] == "fake-weak"
    assert long.headers["x-llmroute-model"] == "fake-strong"
    # a per-request policy in the model name, as on chat
    cheap = c.responses.with_raw_response.create(model="llmroute/auto@tradeoff=9999", input=LONG)
    assert cheap.headers["x-llmroute-model"] == "fake-weak"


def test_stream_events_match_the_non_streamed_answer(gw: GatewayHandle, fake_server: Any) -> None:
    c = _client(gw)
    plain = c.responses.create(model="fake-weak", input="Tell me a story.")
    events = list(c.responses.create(model="fake-weak", input="Tell me a story.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == plain.output_text
    done = events[-1].response
    assert done.status == "completed" and done.output_text == plain.output_text
    assert done.usage is not None and done.usage.output_tokens == plain.usage.output_tokens
    # the gateway asked for usage upstream (to bill), the client gets it only in response.completed
    assert fake_server.state.last["fake-weak"]["stream_options"] == {"include_usage": True}
    # the SDK's stream helper accumulates the same response from the events
    with c.responses.stream(model="fake-weak", input="Tell me a story.") as s:
        final = s.get_final_response()
    assert final.output_text == plain.output_text


def test_function_tools_round_trip(gw: GatewayHandle, fake_server: Any) -> None:
    c = _client(gw)
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        }
    ]
    r = c.responses.create(model="fake-weak", input="Weather in Paris?", tools=tools, tool_choice="auto")
    sent = fake_server.state.last["fake-weak"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        }
    ]
    assert sent["tool_choice"] == "auto"
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_fake1"
    assert json.loads(call.arguments) == {"x": 1}
    # the call and its output go back as items: an assistant tool call and a tool message
    c.responses.create(
        model="fake-weak",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=tools,
        tool_choice={"type": "function", "name": "get_weather"},
    )
    sent = fake_server.state.last["fake-weak"]
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_fake1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"x": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_fake1", "content": "sunny"},
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    # streamed: the call's item and its argument deltas
    events = list(c.responses.create(model="fake-weak", input="Weather?", tools=tools, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    out = events[-1].response.output
    assert [o.type for o in out] == ["function_call"] and out[0].arguments == '{"x": 1}'
    assert out[0].call_id == "call_fake1" and out[0].name == "get_weather"


def test_text_format_and_reasoning_translate(gw: GatewayHandle, fake_server: Any) -> None:
    c = _client(gw)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    c.responses.create(
        model="fake-weak",
        input=[{"role": "developer", "content": "JSON only."}, {"role": "user", "content": "a?"}],
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
        reasoning={"effort": "low"},
        parallel_tool_calls=False,
    )
    sent = fake_server.state.last["fake-weak"]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert sent["reasoning_effort"] == "low" and sent["parallel_tool_calls"] is False
    assert sent["messages"][0] == {"role": "system", "content": "JSON only."}  # developer -> system
    c.responses.create(model="fake-weak", input="x", text={"format": {"type": "json_object"}})
    assert fake_server.state.last["fake-weak"]["response_format"] == {"type": "json_object"}
    c.responses.create(model="fake-weak", input="x", text={"format": {"type": "text"}})
    assert "response_format" not in fake_server.state.last["fake-weak"]


def test_anthropic_upstream(gw: GatewayHandle, fake_server: Any) -> None:
    """A Responses request served by an Anthropic model (chat -> Messages translation underneath)."""
    c = _client(gw)
    r = c.responses.create(model="claude-fake", input="Say hello.", max_output_tokens=100)
    assert r.output_text and r.model == "claude-fake"
    assert fake_server.state.last["claude-x"]["max_tokens"] == 100
    events = list(c.responses.create(model="claude-fake", input="Say hello.", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == r.output_text


def test_untranslatable_requests_are_clear_400s(gw: GatewayHandle) -> None:
    c = _client(gw)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "whole conversation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "function"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type", "not translated"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
            "required",
        ),
        ({"input": []}, "input", "length"),
        ({"max_output_tokens": 0}, "max_output_tokens", "positive"),
        ({"background": True}, "background", "not supported"),
        ({"tool_choice": {"name": "f"}}, "tool_choice.type", "required"),
        ({"tools": [{"name": "f"}]}, "tools[0].type", "required"),
    ]
    for extra, param, words in cases:
        body = {"model": "fake-weak", "input": "x", **extra}
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(**body)
        err = e.value.body
        assert isinstance(err, dict) and err["param"] == param, (extra, err)
        assert words in err["message"], (extra, err["message"])
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="no-such-model", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw, api_key="wrong", max_retries=0).responses.create(
            model="fake-weak", input="x"
        )


def test_stream_broken_off_ends_with_error_and_failed(gw: GatewayHandle, fake_server: Any) -> None:
    fake_server.set_fault("fake-weak", "cut")
    try:
        events = list(_client(gw).responses.create(model="fake-weak", input="Tell me a story.", stream=True))
    finally:
        fake_server.clear()
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]
    assert events[-1].response.status == "failed" and events[-1].response.error is not None
    assert "response.completed" not in kinds


def test_translation_units() -> None:
    chat = responses_to_chat(
        {
            "model": "m",
            "input": [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "1"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "see"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"},
                    ],
                },
            ],
            "llmroute": {"tradeoff": 5},
            "store": True,
        }
    )
    msgs = chat["messages"]
    # text and both calls are one assistant turn
    assert msgs[0]["role"] == "assistant" and msgs[0]["content"] == "Hi"
    assert [t["id"] for t in msgs[0]["tool_calls"]] == ["c1", "c2"]
    assert msgs[1] == {"role": "tool", "tool_call_id": "c1", "content": "1"}
    assert msgs[2]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
    }
    assert chat["llmroute"] == {"tradeoff": 5} and "store" not in chat
    with pytest.raises(GatewayError) as e:
        responses_to_chat({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": ""}]})
    assert e.value.param == "input[0].call_id"
    # a length stop makes the response incomplete, streamed or not
    enc = ResponsesStream("m", "r1")
    enc.feed({"choices": [{"index": 0, "delta": {"content": "ab"}, "finish_reason": "length"}]})
    tail = enc.finish().decode()
    assert "event: response.incomplete" in tail and '"reason":"max_output_tokens"' in tail


def test_cache_replay_and_cascade_answer_as_responses(fake_server: Any, tmp_path: Any) -> None:
    """A cached chat answer is replayed as a response and as response.* events; a cascade alias
    answers through the same family."""
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["cache"] = {
        "backend": "sqlite",
        "path": str(tmp_path / "cache.sqlite"),
        "ttl_s": 600,
        "threshold": 0.9,
    }
    cfg["aliases"]["c/two"] = {
        "candidates": ["fake-weak", "fake-strong"],
        "cascade": {"models": ["fake-weak", "fake-strong"], "max_steps": 2},
    }
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
        q = "How do I parse a CSV file in Go?"
        first = c.responses.with_raw_response.create(model="llmroute/auto", input=q)
        assert "cache: miss" in first.headers["x-llmroute-reason"]
        text = first.parse().output_text
        calls = sum(fake_server.state.counts.values())
        again = c.responses.with_raw_response.create(model="llmroute/auto", input=q)
        assert "cache: hit;kind=exact" in again.headers["x-llmroute-reason"]
        assert again.parse().output_text == text and again.parse().object == "response"
        events = list(c.responses.create(model="llmroute/auto", input=q, stream=True))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert events[-1].response.output_text == text
        assert sum(fake_server.state.counts.values()) == calls  # both answered from the cache
        r = c.responses.with_raw_response.create(model="c/two", input="What is the capital of France?")
        assert r.parse().output_text and r.headers["x-llmroute-model"] in ("fake-weak", "fake-strong")
        events = list(c.responses.create(model="c/two", input="Name a prime number.", stream=True))
        assert events[-1].type == "response.completed" and events[-1].response.output_text
