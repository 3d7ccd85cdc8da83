"""#16 item 3: `/v1/embeddings` and `/v1/completions` passed through to a named model (budgets,
traces), and Anthropic's `/v1/messages/count_tokens`, each with its official client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import GatewayHandle, StubRouter, anthropic_model, loopback_config, run_gateway
from llmroute.gateway.api_passthrough import PassThrough
from llmroute.gateway.app import Gateway
from llmroute.gateway.auth import hash_key
from llmroute.gateway.backends.anthropic import anthropic_to_openai_request
from llmroute.gateway.config import parse_config
from llmroute.gateway.tokens import TokenCounter, estimate_input_tokens

KEY = "sk-passthrough-test-key"
ANTHROPIC_KEY_ENV = "LLMROUTE_TEST_PASSTHROUGH_ANTHROPIC_KEY"


def _config(fake_url: str, base_url: str, tmp: Any) -> dict[str, Any]:
    cfg = loopback_config(base_url, tmp)
    cfg["models"].append(anthropic_model(fake_url, ANTHROPIC_KEY_ENV))
    cfg["models"][1]["upstream_model"] = "weak-upstream-id"
    cfg["keys"] = [{"id": "team", "key_sha256": hash_key(KEY), "budget_usd_day": 100.0}]
    return cfg


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = _config(fake_server.url, fake_server.base_url, tmp_path_factory.mktemp("passthrough"))
    mp = pytest.MonkeyPatch()
    mp.setenv(ANTHROPIC_KEY_ENV, "sk-ant-test")
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield url
    finally:
        mp.undo()


def _client(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=30)


def _spent(gw: GatewayHandle) -> float:
    return float(gw.app.budgets.usage("team")["day_spent"])


def _trace(gw: GatewayHandle, rid: str) -> dict[str, Any]:
    gw.app.store.flush_sync(5)
    rows = gw.app.store.query(request_id=rid, limit=1)
    assert rows, rid
    return rows[0]


def test_embeddings_pass_through_billed_and_traced(gw: GatewayHandle, fake_server: Any) -> None:
    c = _client(gw)
    before = _spent(gw)
    raw = c.embeddings.with_raw_response.create(model="fake-weak", input=["hello", "world"], dimensions=4)
    e = raw.parse()
    assert [d.index for d in e.data] == [0, 1] and all(len(d.embedding) == 4 for d in e.data)
    assert e.data[0].embedding != e.data[1].embedding
    sent = fake_server.state.last["weak-upstream-id"]  # the upstream id, the body as it was
    assert sent["input"] == ["hello", "world"] and sent["dimensions"] == 4
    assert sent["encoding_format"] == "base64"  # what the openai client asks for (and decodes)
    assert raw.headers["x-llmroute-model"] == "fake-weak"
    cost = e.usage.prompt_tokens * 0.2 / 1e6
    assert e.usage.prompt_tokens > 0 and _spent(gw) - before == pytest.approx(cost)
    row = _trace(gw, raw.headers["x-llmroute-request-id"])
    assert row["model"] == "fake-weak" and row["status"] == 200 and row["cost_usd"] == pytest.approx(cost)
    assert row["tokens_in"] == e.usage.prompt_tokens and row["alias"] is None
    # token arrays pass too
    assert len(c.embeddings.create(model="fake-weak", input=[[1, 2, 3], [4]]).data) == 2
    # integral floats are JSON Schema integers: sent upstream as ints
    r = httpx.post(
        gw + "/embeddings",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "fake-weak", "input": [[1.0, 2]], "dimensions": 3.0, "stream": True},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["object"] == "list", r.text  # embeddings never stream
    sent = fake_server.state.last["weak-upstream-id"]
    assert sent["input"] == [[1, 2]] and type(sent["input"][0][0]) is int and sent["dimensions"] == 3


def test_completions_pass_through_streamed_and_not(gw: GatewayHandle, fake_server: Any) -> None:
    c = _client(gw)
    before = _spent(gw)
    r = c.completions.create(model="fake-strong", prompt="Say hi", max_tokens=30, n=2)
    assert [ch.index for ch in r.choices] == [0, 1] and r.choices[0].text
    assert fake_server.state.last["fake-strong"]["max_tokens"] == 30
    cost = (r.usage.prompt_tokens * 10 + r.usage.completion_tokens * 30) / 1e6
    assert _spent(gw) - before == pytest.approx(cost)
    # streamed: the same text; the usage event only when asked for, but billed either way
    before = _spent(gw)
    chunks = list(c.completions.create(model="fake-strong", prompt="Say hi", max_tokens=30, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    assert all(ch.usage is None for ch in chunks)
    assert fake_server.state.last["fake-strong"]["stream_options"] == {"include_usage": True}
    one = (r.usage.prompt_tokens * 10 + r.usage.completion_tokens // 2 * 30) / 1e6
    assert _spent(gw) - before == pytest.approx(one)
    chunks = list(
        c.completions.create(
            model="fake-strong", prompt="Say hi", stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_completion_stream_broken_off_is_an_error_event(gw: GatewayHandle, fake_server: Any) -> None:
    fake_server.set_fault("fake-strong", "cut")
    try:
        with pytest.raises(openai.APIError, match="upstream"):
            list(_client(gw).completions.create(model="fake-strong", prompt="Tell a long story", stream=True))
    finally:
        fake_server.clear()


def test_aliases_other_providers_and_unknown_models_are_refused(gw: GatewayHandle) -> None:
    c = _client(gw)
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="llmroute/auto", input="x")
    body = e.value.body
    assert isinstance(body, dict) and body["param"] == "model" and body["code"] == "alias_not_supported"
    assert "fake-strong" in body["message"] and "named model" in body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="llmroute/auto@tradeoff=5", prompt="x")
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "alias_not_supported"
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="claude-fake", input="x")
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "endpoint_not_supported"
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="fake-weak", input=["a", 1])  # type: ignore[list-item]
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "input"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw, api_key="bad", max_retries=0).embeddings.create(
            model="fake-weak", input="x"
        )


def test_budget_hold_covers_every_prompt_choice_and_best_of(fake_server: Any, tmp_path: Any) -> None:
    cfg = _config(fake_server.url, fake_server.base_url, tmp_path)
    p = PassThrough(Gateway(parse_config(cfg), routers={"default": StubRouter()}))
    # fake-strong: 10 / 30 USD per Mtok, counted in UTF-8 bytes (not an OpenAI model name)
    body = {"prompt": ["ab", "cde"], "max_tokens": 10, "n": 2, "best_of": 3, "suffix": "z"}
    assert p._hold("fake-strong", body, "completions") == pytest.approx((6 * 10 + 10 * 3 * 2 * 30) / 1e6)
    body = {"prompt": [1, 2, 3], "max_tokens": 10, "n": 4}
    assert p._hold("fake-strong", body, "completions") == pytest.approx((3 * 10 + 10 * 4 * 30) / 1e6)
    # no max_tokens: the model's default output bound (4096 without a context window)
    assert p._hold("fake-strong", {"prompt": "ab"}, "completions") == pytest.approx(
        (2 * 10 + 4096 * 30) / 1e6
    )
    assert p._hold("fake-strong", {"input": [[1, 2], [3]]}, "embeddings") == pytest.approx(3 * 10 / 1e6)


def test_count_tokens_with_the_anthropic_client(gw: GatewayHandle) -> None:
    c = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0)
    msgs = [{"role": "user", "content": "hello world"}]
    n = c.messages.count_tokens(model="llmroute/auto", messages=msgs).input_tokens  # type: ignore[arg-type]
    expected = estimate_input_tokens(
        anthropic_to_openai_request({"model": "m", "max_tokens": 1, "messages": msgs}), TokenCounter.central()
    )
    assert n == expected and 0 < n < 20
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}
    more = c.messages.count_tokens(
        model="claude-fake",
        system="You are terse.",
        messages=msgs,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
    ).input_tokens
    assert more >= n + 400  # the tool-use allowance and the system prompt count
    with pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="nope", messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.count_tokens(model="claude-fake", messages=[])
    assert isinstance(e.value.body, dict) and e.value.body["type"] == "error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.root, api_key="bad", max_retries=0).messages.count_tokens(
            model="claude-fake",
            messages=msgs,  # type: ignore[arg-type]
        )
