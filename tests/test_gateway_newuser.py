"""What a new user hits first, on the wire (issue 10, item 6), through the official `openai` and
`anthropic` clients against a real gateway in front of the project's fake server:

- `POST /v1/messages` answers with the concrete model that answered (streamed or not), and a
  streamed answer carries the input tokens in `message_start` (exact when the upstream is an
  Anthropic model, else the gateway's estimate) and the exact counts in the closing `message_delta`;
- a model without credentials is a 501 with `x-should-retry: false`: the clients do not retry it;
- budget errors print amounts with enough digits;
- `GET /v1/models` lists only what the caller's key may use;
- `POST /v1/route` decisions are counted in /metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.gateway.auth import format_usd, hash_key

LONG = "Explain the proof of Fermat's little theorem in detail. " * 4
KEY_ALL = "sk-newuser-all-0123456789"
KEY_WEAK = "sk-newuser-weak-0123456789"
KEY_ALIASES = "sk-newuser-aliases-0123456789"
KEY_BUDGET = "sk-newuser-budget-0123456789"


def _anthropic(gw: Any, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.root, api_key="unused", max_retries=retries, timeout=10)


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# ---- /v1/messages: model and usage --------------------------------------------------------------


def test_messages_names_the_model_that_answered(anthropic_gw: Any) -> None:
    c = _anthropic(anthropic_gw)
    for text, expected in (("hi", "fake-weak"), (LONG, "fake-strong")):
        raw = c.messages.with_raw_response.create(
            model="llmroute/auto", max_tokens=50, messages=[{"role": "user", "content": text}]
        )
        assert raw.headers["x-llmroute-model"] == expected
        assert raw.parse().model == expected
    with c.messages.stream(
        model="llmroute/auto", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        events = list(s)
        final = s.get_final_message()
    assert events[0].type == "message_start" and events[0].message.model == "fake-weak"
    assert final.model == "fake-weak"


def test_streamed_messages_carry_input_tokens_from_the_start(anthropic_gw: Any, fake_server: Any) -> None:
    c = _anthropic(anthropic_gw)
    # an OpenAI-compatible upstream reports usage only at the end: message_start has the
    # gateway's estimate, the closing message_delta the upstream's exact count
    with c.messages.stream(
        model="llmroute/auto", max_tokens=50, messages=[{"role": "user", "content": LONG}]
    ) as s:
        events = list(s)
        final = s.get_final_message()
    start = events[0]
    assert start.type == "message_start" and start.message.model == "fake-strong"
    assert start.message.usage.input_tokens == round(len(LONG) / 4)
    sent = fake_server.state.last["fake-strong"]["messages"]
    exact = max(1, len(orjson.dumps(sent)) // 4)  # what the fake upstream reports
    assert exact != round(len(LONG) / 4)
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.usage.input_tokens == exact
    assert final.usage.input_tokens == exact and final.usage.output_tokens > 0

    # an Anthropic upstream reports input tokens in its own message_start: passed on as they are
    with c.messages.stream(
        model="claude-fake", max_tokens=50, messages=[{"role": "user", "content": LONG}]
    ) as s:
        events = list(s)
        final = s.get_final_message()
    assert events[0].message.model == "claude-fake"
    assert events[0].message.usage.input_tokens == 10  # the fake Anthropic server's count
    assert final.usage.input_tokens == 10


def test_openai_clients_never_see_the_private_prompt_token_field(anthropic_gw: Any) -> None:
    with httpx.stream(
        "POST",
        f"{anthropic_gw}/chat/completions",
        json={"model": "claude-fake", "stream": True, "messages": [{"role": "user", "content": "yo"}]},
        timeout=10,
    ) as r:
        body = r.read()
    chunks = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    assert r.status_code == 200
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks) == "[claude-x] yo"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("_prompt_tokens" not in ch for ch in chunks)


# ---- a model without credentials ------------------------------------------------------------------


def test_missing_key_is_a_501_the_clients_do_not_retry(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMROUTE_TEST_UNSET_KEY", raising=False)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"][0]["api_key_env"] = "LLMROUTE_TEST_UNSET_KEY"
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        oc = openai.OpenAI(base_url=url, api_key="unused", max_retries=2, timeout=10)
        with pytest.raises(openai.APIStatusError) as e:
            oc.chat.completions.create(model="fake-strong", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 501 and "LLMROUTE_TEST_UNSET_KEY" in str(e.value)
        assert e.value.body["code"] == "missing_credentials"  # type: ignore[index]
        assert e.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(anthropic.APIStatusError) as ae:
            _anthropic(url, retries=2).messages.create(
                model="fake-strong", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert ae.value.status_code == 501 and "LLMROUTE_TEST_UNSET_KEY" in str(ae.value)
        # one request each reached the gateway: neither client retried
        reqs = url.app.metrics.snapshot()["requests"]
        assert reqs[("", "", "501")] == 2
        # an alias still falls back to a candidate that has credentials
        raw = oc.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": LONG}]
        )
        assert raw.headers["x-llmroute-model"] == "fake-weak"


# ---- budgets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "text"),
    [
        (0, "$0"),
        (0.0004, "$0.0004"),
        (0.00043721, "$0.000437"),
        (0.0995, "$0.0995"),
        (0.5, "$0.50"),
        (5, "$5.00"),
        (12.3456, "$12.35"),
        (1234.5, "$1,234.50"),
        (4.21e-7, "$0.000000421"),
    ],
)
def test_format_usd(usd: float, text: str) -> None:
    assert format_usd(usd) == text


def test_budget_error_prints_meaningful_amounts(fake_server: Any, tmp_path: Path) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["keys"] = [{"id": "tiny", "key_sha256": hash_key(KEY_BUDGET), "budget_usd_day": 0.0001}]
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        c = openai.OpenAI(base_url=url, api_key=KEY_BUDGET, max_retries=0, timeout=10)
        c.chat.completions.create(model="fake-strong", messages=[{"role": "user", "content": "hello"}])
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="fake-strong", messages=[{"role": "user", "content": "hello"}])
        spent = url.app.budgets.usage("tiny")["day_spent"]
    msg = e.value.body["message"]  # type: ignore[index]
    assert 0 < spent < 0.001
    assert "daily budget $0.0001," in msg
    assert f"spent {format_usd(spent)} " in msg and format_usd(spent) not in ("$0.00", "$0.0000")
    assert "(+$0 in flight)" in msg


# ---- /v1/models per key, /v1/route in /metrics ------------------------------------------------------


def test_models_lists_only_what_the_key_may_use(fake_server: Any, tmp_path: Path) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["keys"] = [
        {"id": "all", "key_sha256": hash_key(KEY_ALL)},
        {"id": "weak-only", "key_sha256": hash_key(KEY_WEAK), "aliases": ["fake-weak"]},
        {"id": "aliases", "key_sha256": hash_key(KEY_ALIASES), "aliases": ["llmroute/*"]},
    ]
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:

        def ids(key: str) -> list[str]:
            c = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=10)
            return [m.id for m in c.models.list()]

        assert ids(KEY_ALL) == ["llmroute/auto", "fake-strong", "fake-weak"]
        assert ids(KEY_WEAK) == ["fake-weak"]
        assert ids(KEY_ALIASES) == ["llmroute/auto"]
        r = httpx.get(f"{url.root}/models", headers={"x-api-key": KEY_WEAK})
        assert [m["id"] for m in r.json()["data"]] == ["fake-weak"]
        with pytest.raises(openai.AuthenticationError):
            ids("sk-not-a-key")
        r = httpx.get(f"{url}/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        # /v1/route refusals are counted like the other endpoints'
        assert httpx.post(f"{url}/route", json={"model": "llmroute/auto", "prompt": "hi"}).status_code == 401
        rejected = _samples(httpx.get(f"{url.root}/metrics").text, "llmroute_rejections_total")
    assert rejected[(("key_id", ""), ("reason", "invalid_api_key"), ("status", "401"))] == 3


def test_route_decisions_are_counted_in_metrics(fake_server: Any, tmp_path: Path) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path)
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        for prompt, model in (("hi", "llmroute/auto"), ("hey", "llmroute/auto"), (LONG, "llmroute/auto")):
            r = httpx.post(f"{url}/route", json={"model": model, "prompt": prompt})
            assert r.status_code == 200
        assert httpx.post(f"{url}/route", json={"model": "fake-strong", "prompt": "x"}).status_code == 200
        assert httpx.post(f"{url}/route", json={"model": "nope", "prompt": "x"}).status_code == 404
        text = httpx.get(f"{url.root}/metrics").text
    decisions = _samples(text, "llmroute_route_decisions_total")
    assert decisions == {
        (("alias", "llmroute/auto"), ("model", "fake-weak")): 2,
        (("alias", "llmroute/auto"), ("model", "fake-strong")): 1,
        (("alias", ""), ("model", "fake-strong")): 1,
    }
    assert _samples(text, "llmroute_requests_total") == {}  # no chat request was made
