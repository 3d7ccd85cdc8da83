"""OpenAI `response_format` on the Anthropic backend: pure translations (request, response, stream)
and end to end with the official `openai` client through the gateway to the fake server's
Anthropic Messages endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from llmroute.gateway.backends.anthropic import (
    JSON_OBJECT_INSTRUCTION,
    AnthropicToOpenAIStream,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    response_format_plan,
)
from llmroute.gateway.backends.base import BackendError

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temp_c": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "unit": {"enum": ["C", "F"]},
    },
    "required": ["city", "temp_c"],
    "additionalProperties": False,
}
RF = {"type": "json_schema", "json_schema": {"name": "weather report!", "schema": SCHEMA, "strict": True}}
MSGS = [{"role": "system", "content": "sys"}, {"role": "user", "content": "weather in Paris?"}]
TOOLS = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
]


# ---- request ------------------------------------------------------------------------------------
def test_json_schema_request_forces_a_sanitised_tool() -> None:
    out = openai_to_anthropic_request({"messages": MSGS, "response_format": RF}, "claude-x")
    assert out["tools"] == [
        {"name": "weather_report", "description": out["tools"][0]["description"], "input_schema": SCHEMA}
    ]
    assert out["tools"][0]["description"]
    assert out["tool_choice"] == {"type": "tool", "name": "weather_report"}
    assert out["system"] == "sys"  # no extra instruction for json_schema
    assert "response_format" not in out and "strict" not in json.dumps(out["tools"])


def test_json_schema_name_rules_and_description() -> None:
    long = {"type": "json_schema", "json_schema": {"name": "ä" * 3 + "x" * 100, "schema": {"properties": {}}}}
    tool = openai_to_anthropic_request({"messages": MSGS, "response_format": long}, "m")["tools"][0]
    assert tool["name"] == "x" * 64
    assert tool["input_schema"] == {"properties": {}, "type": "object"}  # root type filled in
    nameless = {"type": "json_schema", "json_schema": {"schema": SCHEMA, "description": "the answer"}}
    tool = openai_to_anthropic_request({"messages": MSGS, "response_format": nameless}, "m")["tools"][0]
    assert tool["name"] == "json_response" and tool["description"] == "the answer"


def test_json_schema_with_client_tools() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "lookup", "schema": SCHEMA}}  # clashes
    out = openai_to_anthropic_request({"messages": MSGS, "tools": TOOLS, "response_format": rf}, "m")
    assert [t["name"] for t in out["tools"]] == ["lookup", "lookup_2"]
    assert out["tool_choice"] == {"type": "any"}  # a client tool call or the structured answer
    body = {"messages": MSGS, "tools": TOOLS, "tool_choice": "auto", "response_format": RF}
    assert openai_to_anthropic_request(body, "m")["tool_choice"] == {"type": "any"}
    out = openai_to_anthropic_request(dict(body, tool_choice="none"), "m")
    assert out["tool_choice"] == {"type": "tool", "name": "weather_report"}
    for tc in ("required", {"type": "function", "function": {"name": "lookup"}}):
        out = openai_to_anthropic_request(dict(body, tool_choice=tc), "m")
        assert [t["name"] for t in out["tools"]] == ["lookup"]  # the answer is a tool call anyway
        assert response_format_plan(dict(body, tool_choice=tc)) == {
            "type": "json_schema",
            "tool": None,
            "force": False,
        }


def test_json_object_and_text_requests() -> None:
    out = openai_to_anthropic_request({"messages": MSGS, "response_format": {"type": "json_object"}}, "m")
    assert out["system"] == "sys\n\n" + JSON_OBJECT_INSTRUCTION and "tools" not in out
    out = openai_to_anthropic_request({"messages": MSGS[1:], "response_format": {"type": "json_object"}}, "m")
    assert out["system"] == JSON_OBJECT_INSTRUCTION
    plain = openai_to_anthropic_request({"messages": MSGS}, "m")
    assert openai_to_anthropic_request({"messages": MSGS, "response_format": {"type": "text"}}, "m") == plain
    assert openai_to_anthropic_request({"messages": MSGS, "response_format": None}, "m") == plain


@pytest.mark.parametrize(
    ("rf", "field"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"json_schema": {"schema": SCHEMA}}, "response_format.type"),
        ("json", "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "n"}}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "n", "schema": "{}"}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_invalid_response_format_is_a_client_error(rf: Any, field: str) -> None:
    with pytest.raises(BackendError) as e:
        openai_to_anthropic_request({"messages": MSGS, "response_format": rf}, "m")
    err = e.value
    assert err.status == 400 and not err.fallback and not err.retryable
    assert err.etype == "invalid_request_error" and err.code == "invalid_response_format"
    assert field in err.message


# ---- response -----------------------------------------------------------------------------------
def _msg(content: list[dict[str, Any]], stop: str = "tool_use") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "content": content,
        "stop_reason": stop,
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }


def test_response_tool_use_becomes_content() -> None:
    answer = {"city": "Paris", "temp_c": 11.5}
    msg = _msg([{"type": "tool_use", "id": "t1", "name": "weather_report", "input": answer}])
    r = anthropic_to_openai_response(msg, "m", "weather_report")
    ch = r["choices"][0]
    assert ch["finish_reason"] == "stop" and "tool_calls" not in ch["message"]
    assert json.loads(ch["message"]["content"]) == answer
    # without the response tool name it is an ordinary tool call (unchanged behaviour)
    r = anthropic_to_openai_response(msg, "m")
    assert r["choices"][0]["finish_reason"] == "tool_calls" and r["choices"][0]["message"]["content"] is None
    # cut by max_tokens stays "length"
    r = anthropic_to_openai_response(dict(msg, stop_reason="max_tokens"), "m", "weather_report")
    assert r["choices"][0]["finish_reason"] == "length"


def test_response_with_client_tool_call_keeps_tool_calls() -> None:
    msg = _msg([{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": 1}}])
    r = anthropic_to_openai_response(msg, "m", "weather_report")
    ch = r["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None
    assert ch["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"q":1}'}
    both = _msg(
        [
            {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}},
            {"type": "tool_use", "id": "t2", "name": "weather_report", "input": {"city": "x"}},
        ]
    )
    ch = anthropic_to_openai_response(both, "m", "weather_report")["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and len(ch["message"]["tool_calls"]) == 1
    assert json.loads(ch["message"]["content"]) == {"city": "x"}


# ---- stream -------------------------------------------------------------------------------------
def _events(name: str, parts: list[str], stop: str = "tool_use") -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_s", "usage": {"input_tokens": 5}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": name, "input": {}},
        },
    ]
    evs += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}
        for p in parts
    ]
    evs += [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]
    return evs


def _run(conv: AnthropicToOpenAIStream, evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for ev in evs for c in conv.feed(ev)]


def test_stream_partial_json_becomes_content_deltas() -> None:
    parts = ['{"city": "Pa', 'ris", "temp', '_c": 11}']
    chunks = _run(AnthropicToOpenAIStream("m", "weather_report"), _events("weather_report", parts))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert all("tool_calls" not in d for d in deltas)
    assert [d["content"] for d in deltas if d.get("content")] == parts
    assert json.loads("".join(d.get("content") or "" for d in deltas)) == {"city": "Paris", "temp_c": 11}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    # an empty input still gives valid JSON
    chunks = _run(AnthropicToOpenAIStream("m", "weather_report"), _events("weather_report", [""]))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "{}"


def test_stream_client_tool_is_still_a_tool_call() -> None:
    chunks = _run(AnthropicToOpenAIStream("m", "weather_report"), _events("lookup", ['{"q"', ": 1}"]))
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "lookup" and calls[0]["index"] == 0
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"q": 1}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


# ---- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw(anthropic_gw: Any) -> Any:
    """The shared Anthropic-backed gateway (conftest `anthropic_gw`)."""
    return anthropic_gw


def test_end_to_end_json_schema(gw: str, fake_server: Any) -> None:
    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)
    r = c.chat.completions.create(model="claude-fake", messages=MSGS, response_format=RF)
    ch = r.choices[0]
    assert ch.finish_reason == "stop" and not ch.message.tool_calls
    data = json.loads(ch.message.content)
    assert set(data) == {"city", "temp_c", "tags", "unit"} and data["unit"] == "C"
    sent = fake_server.state.last["claude-x"]
    assert sent["tool_choice"] == {"type": "tool", "name": "weather_report"}
    assert sent["tools"][0]["input_schema"] == SCHEMA

    stream = c.chat.completions.create(model="claude-fake", messages=MSGS, response_format=RF, stream=True)
    chunks = [ch for ch in stream if ch.choices]
    assert not any(ch.choices[0].delta.tool_calls for ch in chunks)
    streamed = [ch.choices[0].delta.content for ch in chunks if ch.choices[0].delta.content]
    assert len(streamed) > 1 and json.loads("".join(streamed)) == data
    assert chunks[-1].choices[0].finish_reason == "stop"

    async def run() -> str:
        ac = openai.AsyncOpenAI(base_url=gw, api_key="unused", max_retries=0)
        s = await ac.chat.completions.create(
            model="llmroute/claude",
            messages=[{"role": "user", "content": "Explain the proof of Fermat's little theorem. " * 4}],
            response_format=RF,
            stream=True,
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])
        await ac.close()
        return text

    assert set(json.loads(asyncio.run(run()))) == {"city", "temp_c", "tags", "unit"}


def test_end_to_end_json_object_and_client_tools(gw: str, fake_server: Any) -> None:
    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)
    r = c.chat.completions.create(model="claude-fake", messages=MSGS, response_format={"type": "json_object"})
    assert r.choices[0].message.content.startswith("[claude-x]")
    assert fake_server.state.last["claude-x"]["system"].endswith(JSON_OBJECT_INSTRUCTION)
    # own tools + json_schema: the fake calls the first (client) tool -> a normal tool call
    r = c.chat.completions.create(model="claude-fake", messages=MSGS, tools=TOOLS, response_format=RF)
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "lookup"
    assert [t["name"] for t in fake_server.state.last["claude-x"]["tools"]] == ["lookup", "weather_report"]
    # ... and with tool_choice "none" the structured answer is forced
    r = c.chat.completions.create(
        model="claude-fake", messages=MSGS, tools=TOOLS, tool_choice="none", response_format=RF
    )
    assert r.choices[0].finish_reason == "stop" and json.loads(r.choices[0].message.content)["unit"] == "C"


def test_end_to_end_invalid_response_format_is_400_without_fallback(gw: str, fake_server: Any) -> None:
    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)
    before = dict(fake_server.state.counts)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(
                model="llmroute/claude",
                messages=[{"role": "user", "content": "Explain the proof of Fermat's little theorem. " * 4}],
                response_format={"type": "json_schema", "json_schema": {"name": "x"}},
                stream=stream,
            )
        assert "response_format.json_schema.schema" in str(e.value)
        assert e.value.body["code"] == "invalid_response_format"
        assert e.value.body["param"] == "response_format"
    assert fake_server.state.counts == before  # nothing sent upstream, no fallback to fake-weak


def test_end_to_end_openai_parse_with_pydantic(gw: str, fake_server: Any) -> None:
    from pydantic import BaseModel

    class Step(BaseModel):
        explanation: str
        output: int

    class Solution(BaseModel):
        steps: list[Step]
        final_answer: str
        confident: bool

    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)
    r = c.chat.completions.parse(model="claude-fake", messages=MSGS, response_format=Solution)
    sol = r.choices[0].message.parsed
    assert isinstance(sol, Solution) and sol.steps[0].output == 1 and sol.confident is True
    sent = fake_server.state.last["claude-x"]
    assert sent["tool_choice"] == {"type": "tool", "name": "Solution"}
    assert sent["tools"][0]["input_schema"]["$defs"]["Step"]["required"] == ["explanation", "output"]
