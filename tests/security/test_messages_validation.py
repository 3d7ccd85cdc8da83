"""#11 item 4: `POST /v1/messages` validates every field like chat does and answers each violation
with a 400 and an Anthropic-shaped error body naming the field's path (never a 5xx), before any
budget hold; valid requests (text, system blocks, images, documents, tools, tool results) still
route, through an OpenAI-compatible backend and through the Anthropic backend.

Everything goes through the official `anthropic` client against a real gateway on 127.0.0.1
(`client.post` sends the deliberately wrong bodies as they are)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GatewayHandle, StubRouter, anthropic_model, loopback_config, run_gateway
from llmroute.gateway.auth import hash_key

KEY = "sk-messages-validation-0123456789"
KEY_ID = "validation"
ANTHROPIC_KEY_ENV = "LLMROUTE_TEST_SECURITY_ANTHROPIC_KEY"
#: A 64-bit-safe JSON value of any type (what a careless or hostile client may put anywhere).
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
MISSING = object()  # a required field left out


def _valid_body() -> dict[str, Any]:
    """A Messages request that uses every checked field (all of it valid)."""
    return {
        "model": "fake-weak",
        "max_tokens": 32,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in the picture and the note?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "a note"},
                        "title": "note",
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check the weather."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sunny"}],
                        "is_error": False,
                    }
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "stream": False,
        "metadata": {"user_id": "u-1"},
    }


# ---- what each field accepts (the test's own statement of the contract) -----------------------
def _str(v: Any) -> bool:
    return isinstance(v, str)


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _opt(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in allowed


def _pos_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and v == int(v) and v > 0


def _nonneg_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and v == int(v) and v >= 0


def _unit(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and 0 <= v <= 1


def _obj(v: Any) -> bool:
    return isinstance(v, dict)


def _str_or_list(v: Any) -> bool:
    return isinstance(v, str | list)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


_IMAGE_MEDIA = ("image/jpeg", "image/png", "image/gif", "image/webp")
_ALL_BLOCKS = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")
U0, A1, T2 = ("messages", 0, "content"), ("messages", 1, "content"), ("messages", 2, "content")
#: (path into `_valid_body()`, what the field accepts, required?)
FIELDS: list[tuple[tuple[Any, ...], Callable[[Any], bool], bool]] = [
    (("model",), _nonempty_str, True),
    (("max_tokens",), _pos_int, True),
    (("messages",), lambda v: isinstance(v, list) and v != [], True),
    (("messages", 0), _obj, True),
    (("messages", 0, "role"), _one_of("user", "assistant"), True),
    (("messages", 1, "role"), _one_of("user", "assistant"), True),
    (U0, _str_or_list, True),
    ((*U0, 0), _obj, True),
    ((*U0, 0, "type"), _one_of(*_ALL_BLOCKS), True),
    ((*U0, 0, "text"), _str, True),
    ((*U0, 0, "cache_control"), _opt(_obj), False),
    ((*U0, 1, "source"), _obj, True),
    ((*U0, 1, "source", "type"), _one_of("base64", "url"), True),  # "url" would need a url
    ((*U0, 1, "source", "media_type"), _one_of(*_IMAGE_MEDIA), True),
    ((*U0, 1, "source", "data"), _str, True),
    ((*U0, 2, "source"), _obj, True),
    ((*U0, 2, "source", "type"), _one_of("text", "base64", "url", "content"), True),
    ((*U0, 2, "source", "data"), _str, True),
    ((*U0, 2, "title"), _opt(_str), False),
    ((*A1, 1, "id"), _str, True),
    ((*A1, 1, "name"), _str, True),
    ((*A1, 1, "input"), _obj, True),
    ((*T2, 0, "tool_use_id"), _str, True),
    ((*T2, 0, "content"), _opt(_str_or_list), False),
    ((*T2, 0, "content", 0), _obj, True),
    ((*T2, 0, "content", 0, "type"), _one_of("text", "image", "document"), True),
    ((*T2, 0, "content", 0, "text"), _str, True),
    ((*T2, 0, "is_error"), _opt(lambda v: isinstance(v, bool)), False),
    (("system",), _opt(_str_or_list), False),
    (("system", 0), _obj, True),
    (("system", 0, "type"), _one_of("text"), True),
    (("system", 0, "text"), _str, True),
    (("tools",), _opt(lambda v: isinstance(v, list)), False),
    (("tools", 0), _obj, True),
    (("tools", 0, "name"), _nonempty_str, True),
    (("tools", 0, "description"), _opt(_str), False),
    (("tools", 0, "input_schema"), _obj, True),
    (("tools", 0, "input_schema", "type"), _one_of("object"), False),
    (("tool_choice",), _opt(_obj), False),
    (("tool_choice", "type"), _one_of("auto", "any", "tool", "none"), True),
    (("tool_choice", "name"), _nonempty_str, True),
    (("tool_choice", "disable_parallel_tool_use"), _opt(lambda v: isinstance(v, bool)), False),
    (("stop_sequences",), _opt(_str_list), False),
    (("stop_sequences", 0), _str, True),
    (("temperature",), _opt(_unit), False),
    (("top_p",), _opt(_unit), False),
    (("top_k",), _opt(_nonneg_int), False),
    (("stream",), _opt(lambda v: isinstance(v, bool)), False),
    (("metadata",), _opt(_obj), False),
    (("metadata", "user_id"), _opt(_str), False),
]


def path_str(path: tuple[Any, ...]) -> str:
    """("messages", 0, "content") -> "messages[0].content" (how the gateway names fields)."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _set(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    parent: Any = body
    for p in path[:-1]:
        parent = parent[p]
    if value is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def _bad_values(ok: Callable[[Any], bool], required: bool) -> st.SearchStrategy[Any]:
    wrong = JSON_VALUES.filter(lambda v: not ok(v))
    return st.one_of(st.just(MISSING), wrong) if required else wrong


#: A field and a value it does not accept (or MISSING for a required key; list items are not
#: deleted: the rest of the list may be valid on its own).
BAD_FIELDS = st.sampled_from(FIELDS).flatmap(
    lambda f: st.tuples(st.just(f[0]), _bad_values(f[1], f[2] and isinstance(f[0][-1], str)))
)
#: Content arrays holding something other than blocks (the issue's `content: [1, null]`).
BAD_ARRAYS = st.tuples(
    st.sampled_from([("messages",), U0, A1, T2, (*T2, 0, "content"), ("system",), ("tools",)]),
    st.lists(JSON_VALUES.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3),
)


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    """A gateway with one budgeted key, an OpenAI-compatible model (`fake-weak`) and an Anthropic one
    (`claude-fake`), both on the fake server."""
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("messages-validation"))
    cfg["models"].append(anthropic_model(fake_server.url, ANTHROPIC_KEY_ENV, timeout_s=2))
    cfg["keys"] = [{"id": KEY_ID, "key_sha256": hash_key(KEY), "budget_usd_day": 5.0}]
    mp = pytest.MonkeyPatch()
    mp.setenv(ANTHROPIC_KEY_ENV, "sk-ant-test")
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield url
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def client(gw: GatewayHandle) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


def _post(client: anthropic.Anthropic, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` as it is; the JSON answer of a 2xx (the client raises on any other status)."""
    out: dict[str, Any] = client.post("/v1/messages", cast_to=dict[str, Any], body=body)
    return out


def _assert_rejected(client: anthropic.Anthropic, body: dict[str, Any], field: str) -> str:
    """Assert a 400 with an Anthropic error body that names `field` (or a field inside it)."""
    with pytest.raises(anthropic.BadRequestError) as e:
        _post(client, body)
    err = e.value.body
    assert isinstance(err, dict) and err["type"] == "error", err
    assert err["error"]["type"] == "invalid_request_error", err
    message = err["error"]["message"]
    named = re.match(r"'([^']+)'", message)
    assert named is not None, message
    assert named.group(1).startswith(field), (field, message)
    return str(message)


def test_the_valid_body_is_accepted(client: anthropic.Anthropic, fake_server: Any) -> None:
    """The base of every negative case is itself valid (so each 400 is the mutation's doing)."""
    assert _post(client, _valid_body())["type"] == "message"
    sent = fake_server.state.last["fake-weak"]
    assert sent["max_tokens"] == 32 and sent["stop"] == ["END"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(case=BAD_FIELDS)
def test_wrongly_typed_fields_are_400_naming_the_field(
    client: anthropic.Anthropic, case: tuple[tuple[Any, ...], Any]
) -> None:
    path, value = case
    body = _valid_body()
    _set(body, path, value)
    _assert_rejected(client, body, path_str(path))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=BAD_ARRAYS)
def test_arrays_of_non_objects_are_400(
    client: anthropic.Anthropic, case: tuple[tuple[Any, ...], Any]
) -> None:
    path, value = case
    body = _valid_body()
    _set(body, path, value)
    _assert_rejected(client, body, path_str(path) + "[0]")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("system",), 5),
        (("system",), [1]),
        (U0, [1, None]),
        (("tools",), [1]),
        ((*T2, 0, "content"), 5),
        (("max_tokens",), 0),
        (("max_tokens",), 1.5),
        (("max_tokens",), True),
        (("temperature",), 1.01),
        (("temperature",), -0.01),
        (("top_p",), 2),
        (("top_k",), -1),
        (("top_k",), 2.5),
        ((*U0, 1, "source", "type"), "file"),
        (("tools", 0, "type"), "web_search_20250305"),
        (("tool_choice", "type"), "required"),
        (("stop_sequences",), "END"),
        (("model",), ""),
        (("messages",), []),
        (("tools", 0, "name"), ""),
        (("tool_choice", "name"), ""),
        (("tools", 0, "input_schema", "type"), "string"),
    ],
)
def test_the_reported_cases_and_bounds_are_400(
    client: anthropic.Anthropic, path: tuple[Any, ...], value: Any
) -> None:
    body = _valid_body()
    _set(body, path, value)
    _assert_rejected(client, body, path_str(path))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("temperature",), 0),
        (("temperature",), 1),
        (("top_p",), 1.0),
        (("top_k",), 0),
        (("max_tokens",), 1),
        (("system",), "Be brief."),
        ((*T2, 0, "content"), "sunny"),
        (("tool_choice",), {"type": "auto"}),
    ],
)
def test_boundary_values_are_accepted(client: anthropic.Anthropic, path: tuple[Any, ...], value: Any) -> None:
    body = _valid_body()
    _set(body, path, value)
    assert _post(client, body)["type"] == "message"


def test_integral_floats_are_integers(client: anthropic.Anthropic, fake_server: Any) -> None:
    body = _valid_body()
    body["max_tokens"] = 417.0
    body["top_k"] = 3.0
    assert _post(client, body)["type"] == "message"
    sent = fake_server.state.last["fake-weak"]["max_tokens"]
    assert sent == 417 and isinstance(sent, int)


def test_rejections_take_no_budget_hold(client: anthropic.Anthropic, gw: GatewayHandle) -> None:
    """Validation runs before the budget hold: many rejected requests leave nothing reserved."""
    before = gw.app.budgets.usage(KEY_ID)
    for path, value in [(("system",), 5), (U0, [1, None]), (("tools",), [1]), ((*T2, 0, "content"), 5)]:
        body = _valid_body()
        body["max_tokens"] = 100_000  # a large hold, were one taken
        _set(body, path, value)
        for _ in range(3):
            _assert_rejected(client, body, path_str(path))
    after = gw.app.budgets.usage(KEY_ID)
    assert after["day_reserved"] == before["day_reserved"] == 0.0
    assert after["day_spent"] == before["day_spent"]


# ---- valid requests through the official client ----------------------------------------------
TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.mark.parametrize(("model", "upstream"), [("fake-weak", "fake-weak"), ("claude-fake", "claude-x")])
def test_official_client_text_system_blocks_tools_and_tool_result(
    client: anthropic.Anthropic, fake_server: Any, model: str, upstream: str
) -> None:
    system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": " Use metric units."}]
    first = client.messages.create(
        model=model,
        max_tokens=64,
        system=system,
        tools=TOOLS,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
    )
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather"
    second = client.messages.create(
        model=model,
        max_tokens=64,
        system=system,
        tools=TOOLS,
        tool_choice={"type": "auto"},
        stop_sequences=["END"],
        extra_body={"temperature": 0.2, "top_k": 10},  # not parameters of this client's create()
        metadata={"user_id": "u-1"},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "content": [{"type": "text", "text": "sunny, 21 C"}],
                    },
                    {"type": "text", "text": "Thanks. Anything else?"},
                ],
            },
        ],
    )
    assert second.content and second.role == "assistant"
    sent = fake_server.state.last[upstream]
    if upstream == "fake-weak":  # the OpenAI form of the conversation
        assert sent["messages"][0] == {"role": "system", "content": "Be brief. Use metric units."}
        assert sent["messages"][2]["tool_calls"][0]["id"] == call.id
        assert sent["messages"][3] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}
    else:  # back to Anthropic form on the Anthropic backend
        assert sent["system"] == "Be brief. Use metric units."
        assert sent["messages"][1]["content"][-1]["type"] == "tool_use"
        assert {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"} in sent["messages"][
            2
        ]["content"]
    # streamed, with a system string and an image
    with client.messages.stream(
        model=model,
        max_tokens=64,
        system="Be brief.",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.png"}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    ) as s:
        final = s.get_final_message()
    assert final.content and final.stop_reason == "end_turn"


# ---- generated valid requests: never refused, never a 5xx, on either kind of backend -----------
_TEXT = st.text(max_size=12)
_CACHE = st.sampled_from([{}, {"cache_control": {"type": "ephemeral"}}])
_TEXT_BLOCK = st.builds(lambda t, cc: {"type": "text", "text": t, **cc}, _TEXT, _CACHE)
_IMAGE_BLOCK = st.one_of(
    st.builds(
        lambda m, d: {"type": "image", "source": {"type": "base64", "media_type": m, "data": d}},
        st.sampled_from(_IMAGE_MEDIA),
        st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=12),
    ),
    st.just({"type": "image", "source": {"type": "url", "url": "https://example.invalid/a.png"}}),
)
_DOCUMENT_BLOCK = st.builds(
    lambda s, title: {"type": "document", "source": s, **title},
    st.one_of(
        st.builds(lambda d: {"type": "text", "media_type": "text/plain", "data": d}, _TEXT),
        st.just({"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}),
        st.just({"type": "url", "url": "https://example.invalid/a.pdf"}),
        st.builds(
            lambda c: {"type": "content", "content": c}, st.one_of(_TEXT, st.lists(_TEXT_BLOCK, max_size=2))
        ),
    ),
    st.sampled_from([{}, {"title": "t"}, {"title": None, "context": "c"}]),
)
_TOOL_USE_BLOCK = st.builds(
    lambda i, n, inp: {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": inp},
    st.integers(0, 3),
    st.sampled_from(["get_weather", "lookup"]),
    st.dictionaries(st.sampled_from(["city", "q", "n"]), st.one_of(_TEXT, st.integers(-5, 5)), max_size=2),
)
_TOOL_RESULT_BLOCK = st.builds(
    lambda i, c, err: {"type": "tool_result", "tool_use_id": f"toolu_{i}", **c, **err},
    st.integers(0, 3),
    st.one_of(
        st.just({}),
        st.builds(lambda t: {"content": t}, _TEXT),
        st.builds(lambda b: {"content": b}, st.lists(st.one_of(_TEXT_BLOCK, _IMAGE_BLOCK), max_size=2)),
    ),
    st.sampled_from([{}, {"is_error": True}, {"is_error": False}]),
)
_THINKING_BLOCKS = st.sampled_from(
    [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xyz"},
    ]
)
_BLOCK = st.one_of(
    _TEXT_BLOCK, _IMAGE_BLOCK, _DOCUMENT_BLOCK, _TOOL_USE_BLOCK, _TOOL_RESULT_BLOCK, _THINKING_BLOCKS
)
_MESSAGE = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["user", "assistant"]),
    st.one_of(_TEXT, st.lists(_BLOCK, min_size=1, max_size=3)),
)
_TOOL_DEFS = st.lists(
    st.builds(
        lambda n, d: {
            "name": n,
            **d,
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
        st.sampled_from(["get_weather", "lookup"]),
        st.sampled_from([{}, {"description": "d"}]),
    ),
    min_size=1,
    max_size=2,
    unique_by=lambda t: t["name"],
)
_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "system": st.one_of(_TEXT, st.lists(_TEXT_BLOCK, max_size=2)),
    "tools": _TOOL_DEFS,
    "tool_choice": st.sampled_from(
        [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "get_weather"}]
    ),
    "stop_sequences": st.lists(st.text(min_size=1, max_size=4), max_size=2),
    "temperature": st.floats(0, 1),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 50),
    "metadata": st.sampled_from([{}, {"user_id": "u-1"}, {"user_id": None}]),
}
VALID_BODIES = st.builds(
    lambda model, mt, msgs, opt: {"model": model, "max_tokens": mt, "messages": msgs, **opt},
    st.sampled_from(["fake-weak", "claude-fake"]),
    st.one_of(st.integers(1, 64), st.sampled_from([16.0, 64.0])),
    st.lists(_MESSAGE, min_size=1, max_size=4),
    st.fixed_dictionaries({}, optional=_OPTIONAL),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=VALID_BODIES)
def test_generated_valid_requests_are_answered(client: anthropic.Anthropic, body: dict[str, Any]) -> None:
    out = _post(client, body)
    assert out["type"] == "message" and out["role"] == "assistant"


@pytest.mark.parametrize("levels", [40, 150, 450])  # 2 JSON levels each
def test_deeply_nested_block_fields_are_400(
    client: anthropic.Anthropic, gw: GatewayHandle, levels: int
) -> None:
    """A tool_use input nested hundreds of levels deep (the translation re-encodes it) is refused
    like any over-deep body: a 400 in the Anthropic shape, no hold taken."""
    nested: Any = {}
    for _ in range(levels):
        nested = {"a": [nested]}
    body = _valid_body()
    body["messages"][1]["content"][1]["input"] = nested
    with pytest.raises(anthropic.BadRequestError) as e:
        _post(client, body)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert gw.app.budgets.usage(KEY_ID)["day_reserved"] == 0.0
