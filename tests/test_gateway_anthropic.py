"""Anthropic both ways: the official `anthropic` client against the gateway's /v1/messages (routed to
OpenAI-compatible backends), and the gateway's Anthropic backend (OpenAI clients in, Anthropic
Messages API out) against the fake server's /v1/messages; plus the pure translations."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.gateway.backends.anthropic import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)

LONG = "Explain the proof of Fermat's little theorem in detail. " * 4


@pytest.fixture(scope="module")
def gw(anthropic_gw: Any) -> Any:
    """The shared Anthropic-backed gateway (conftest `anthropic_gw`)."""
    return anthropic_gw


def _anthropic(gw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.root, api_key="unused", max_retries=0, timeout=10)


def test_messages_endpoint_routes_and_answers(gw: Any) -> None:
    c = _anthropic(gw)
    raw = c.messages.with_raw_response.create(
        model="llmroute/auto", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    msg = raw.parse()
    assert raw.headers["x-llmroute-model"] == "fake-weak"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "[fake-weak] hi"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0
    assert msg.model == "fake-weak"  # the concrete model that answered, not the alias


def test_messages_endpoint_carries_policy_user_and_text_documents(gw: Any, fake_server: Any) -> None:
    """The `llmroute` object steers the route on /v1/messages as on chat completions;
    metadata.user_id becomes the upstream's `user`; a text document reaches the model as text."""
    c = _anthropic(gw)
    raw = c.messages.with_raw_response.create(
        model="llmroute/auto",
        max_tokens=50,
        messages=[{"role": "user", "content": LONG}],
        metadata={"user_id": "u-42"},
        extra_body={"llmroute": {"tradeoff": 1e9}},
    )
    assert raw.headers["x-llmroute-model"] == "fake-weak"  # without the policy: fake-strong (LONG)
    assert "lambda=1e+09" in raw.headers["x-llmroute-reason"]
    sent = fake_server.state.last["fake-weak"]
    assert sent["user"] == "u-42" and "llmroute" not in sent
    doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The tide table: high at 6."},
        "title": "Tides",
    }
    c.messages.create(
        model="fake-weak",
        max_tokens=50,
        messages=[{"role": "user", "content": [doc, {"type": "text", "text": "When is high tide?"}]}],
    )
    text = fake_server.state.last["fake-weak"]["messages"][-1]["content"]
    assert "Tides\n\nThe tide table: high at 6." in text and "When is high tide?" in text
    with pytest.raises(anthropic.BadRequestError):  # the policy object is checked as on chat
        c.messages.create(
            model="llmroute/auto",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"llmroute": {"nope": 1}},
        )


def test_messages_endpoint_streaming(gw: Any) -> None:
    c = _anthropic(gw)
    with c.messages.stream(
        model="llmroute/auto", max_tokens=50, messages=[{"role": "user", "content": LONG}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.startswith("[fake-strong]")
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_messages_endpoint_tools_roundtrip(gw: Any, fake_server: Any) -> None:
    c = _anthropic(gw)
    tools = [
        {
            "name": "get_weather",
            "description": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    msg = c.messages.create(
        model="fake-weak",
        max_tokens=50,
        tools=tools,
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert msg.stop_reason == "tool_use"
    block = next(b for b in msg.content if b.type == "tool_use")
    assert block.name == "get_weather" and block.input == {"x": 1}
    # the tool result goes back as an OpenAI tool message
    msg2 = c.messages.create(
        model="fake-weak",
        max_tokens=50,
        tools=tools,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": block.id, "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}],
            },
        ],
    )
    assert msg2.content
    sent = fake_server.state.last["fake-weak"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == block.id
    assert sent[2] == {"role": "tool", "tool_call_id": block.id, "content": "sunny"}
    # streaming tool use
    with c.messages.stream(
        model="fake-weak", max_tokens=50, tools=tools, messages=[{"role": "user", "content": "weather?"}]
    ) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"x": 1}


def test_messages_endpoint_errors_are_anthropic_shaped(gw: Any) -> None:
    c = _anthropic(gw)
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model="llmroute/auto", max_tokens=0, messages=[{"role": "user", "content": "x"}])


def test_anthropic_backend_sync_stream_async(gw: Any, fake_server: Any) -> None:
    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/claude",
        max_tokens=40,
        stop=["END"],
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": LONG}],
    )
    r = raw.parse()
    assert raw.headers["x-llmroute-model"] == "claude-fake"
    assert r.choices[0].message.content.startswith("[claude-x]")
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 0
    sent = fake_server.state.last["claude-x"]
    assert sent["system"] == "sys" and sent["max_tokens"] == 40 and sent["stop_sequences"] == ["END"]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": LONG}]}]
    chunks = list(
        c.chat.completions.create(
            model="claude-fake",
            messages=[{"role": "user", "content": "yo"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "[claude-x] yo"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    r = c.chat.completions.create(
        model="claude-fake", messages=[{"role": "user", "content": "t"}], tools=tools, tool_choice="required"
    )
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "f"
    assert fake_server.state.last["claude-x"]["tool_choice"] == {"type": "any"}

    async def run() -> str:
        ac = openai.AsyncOpenAI(base_url=gw, api_key="unused", max_retries=0)
        s = await ac.chat.completions.create(
            model="claude-fake", messages=[{"role": "user", "content": "a"}], stream=True, tools=tools
        )
        names = [
            tc.function.name
            async for ch in s
            if ch.choices and ch.choices[0].delta.tool_calls
            for tc in ch.choices[0].delta.tool_calls
            if tc.function and tc.function.name
        ]
        await ac.close()
        return ",".join(names)

    assert asyncio.run(run()) == "f"


def test_anthropic_backend_falls_back_on_failure(gw: Any, fake_server: Any) -> None:
    fake_server.set_fault("claude-x", "503")
    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/claude", messages=[{"role": "user", "content": LONG}]
    )
    assert raw.headers["x-llmroute-model"] == "fake-weak"
    fake_server.clear()


def test_anthropic_backend_without_key(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMROUTE_TEST_ANTHROPIC_KEY2", raising=False)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"].append(
        {
            "name": "claude-nokey",
            "provider": "anthropic",
            "base_url": fake_server.url,
            "api_key_env": "LLMROUTE_TEST_ANTHROPIC_KEY2",
        }
    )
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="claude-nokey", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 501 and "LLMROUTE_TEST_ANTHROPIC_KEY2" in str(e.value)
        assert e.value.response.headers["x-should-retry"] == "false"


def test_translations_roundtrip() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "temperature": 0.1,
        "tool_choice": "auto",
        "messages": [
            {"role": "system", "content": "S"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "R"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
            }
        ],
    }
    a = openai_to_anthropic_request(body, "claude")
    assert a["system"] == "S" and a["model"] == "claude" and a["tool_choice"] == {"type": "auto"}
    assert a["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
    }
    assert a["messages"][1]["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]
    assert a["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "c1", "content": "R"}]
    assert a["tools"] == [{"name": "f", "description": "d", "input_schema": {"type": "object"}}]
    back = anthropic_to_openai_request(dict(a, model="m"))
    assert back["messages"][0] == {"role": "system", "content": "S"}
    assert back["messages"][2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert back["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "R"}
    assert back["tools"][0]["function"]["name"] == "f"

    msg = {
        "id": "msg_1",
        "model": "claude",
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
        "content": [
            {"type": "text", "text": "ok"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"b": 2}},
        ],
    }
    o = anthropic_to_openai_response(msg, "claude")
    assert o["choices"][0]["finish_reason"] == "tool_calls" and o["usage"]["total_tokens"] == 7
    a2 = openai_to_anthropic_response(o, "alias")
    assert a2["content"] == msg["content"] and a2["stop_reason"] == "tool_use" and a2["model"] == "alias"


def test_stream_translators() -> None:
    conv = AnthropicToOpenAIStream("claude")
    events = [
        {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "he"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "llo"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t1", "name": "f"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ": 1}"},
        },
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    chunks = [c for e in events for c in conv.feed(e)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    args = "".join(
        tc["function"].get("arguments", "")
        for c in chunks
        if c["choices"]
        for tc in c["choices"][0]["delta"].get("tool_calls") or []
    )
    assert text == "hello" and args == '{"a": 1}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    # and back to Anthropic events
    back = OpenAIToAnthropicStream("alias", "r1")
    out = b"".join(b for c in chunks for b in back.feed(c)) + b"".join(back.finish())
    s = out.decode()
    assert s.count("event: content_block_start") == 2 and s.count("event: content_block_stop") == 2
    assert '"stop_reason":"tool_use"' in s and s.endswith(
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
