"""Gateway operations end to end, through the official `openai` client against a real gateway on
127.0.0.1 in front of the project's fake server: keys (401/403/429), budgets under 200 concurrent
requests, decision traces (with feedback and a restart that keeps them), budgets that survive a
restart, and /metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.gateway.auth import estimate_input_tokens, hash_key, max_request_cost
from llmroute.gateway.store import open_store

KEY_A = "sk-ops-team-a-0123456789"
KEY_B = "sk-ops-team-b-0123456789"
KEY_C = "sk-ops-team-c-0123456789"
LONG = "Explain, step by step and with care, why the sky looks blue at noon but red at sunset. " * 3


def _config(fake_url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    cfg = loopback_config(fake_url, tmp_path)
    cfg["keys"] = [
        {"id": "team-a", "key_sha256": hash_key(KEY_A), "budget_usd_day": extra.pop("budget", None)},
        {"id": "team-b", "key_sha256": hash_key(KEY_B), "aliases": ["fake-weak"]},
        {"id": "team-c", "key_sha256": hash_key(KEY_C), "rpm": 1},
    ]
    cfg.update(extra)
    return cfg


def _routers() -> dict[str, Any]:
    return {"default": StubRouter()}


def _client(base: str, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key or "unused", max_retries=0, timeout=20)


def _chat(client: openai.OpenAI, model: str = "llmroute/auto", text: str = "hello", **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=50, **kw
    )


def test_keys_401_403_429_with_openai_errors(fake_server: Any, tmp_path: Path) -> None:
    with run_gateway(_config(fake_server.base_url, tmp_path), routers=_routers()) as base:
        # no key at all: the openai client still sends `Bearer unused`; also try with none
        r = httpx.post(f"{base}/chat/completions", json={"model": "llmroute/auto", "messages": [
            {"role": "user", "content": "hi"}]})  # fmt: skip
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["x-llmroute-request-id"]
        with pytest.raises(openai.AuthenticationError) as e:
            _chat(_client(base, "sk-not-a-real-key"))
        assert e.value.status_code == 401
        assert "sk-not-a-real-key" not in str(e.value.body)

        raw = _chat(_client(base, KEY_A))
        assert raw.headers["x-llmroute-model"] in ("fake-strong", "fake-weak")
        assert raw.parse().choices[0].message.content

        # x-api-key works too
        r = httpx.post(f"{base}/chat/completions", headers={"x-api-key": KEY_B}, json={"model": "fake-weak",
                       "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert r.status_code == 200
        with pytest.raises(openai.PermissionDeniedError) as e:
            _chat(_client(base, KEY_B), model="llmroute/auto")
        assert e.value.status_code == 403
        assert e.value.body["code"] == "model_not_allowed"  # type: ignore[index]

        c = _client(base, KEY_C)
        _chat(c)
        with pytest.raises(openai.RateLimitError) as e:
            _chat(c)
        assert e.value.status_code == 429
        assert e.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert int(e.value.response.headers["retry-after"]) >= 1

        # /v1/route and /v1/feedback need a key too
        r = httpx.post(f"{base}/route", json={"model": "llmroute/auto", "prompt": "hi"})
        assert r.status_code == 401
        r = httpx.post(f"{base}/feedback", json={"request_id": "x", "quality": 1})
        assert r.status_code == 401

        m = httpx.get(f"{base.root}/metrics").text
        rejected: dict[tuple[str, str], float] = {}
        for fam in text_string_to_metric_families(m):
            for smp in fam.samples:
                if smp.name == "llmroute_rejections_total":
                    k = (smp.labels["status"], smp.labels["reason"])
                    rejected[k] = rejected.get(k, 0) + smp.value
        assert rejected[("401", "invalid_api_key")] >= 2
        assert rejected[("403", "model_not_allowed")] == 1
        assert rejected[("429", "rate_limit_exceeded")] == 1


def test_budget_holds_under_200_concurrent_requests(fake_server: Any, tmp_path: Path) -> None:
    budget = 0.02
    cfg = _config(fake_server.base_url, tmp_path, budget=budget)
    messages = [{"role": "user", "content": LONG}]
    # the gateway reserves the dearest candidate's max cost (fake-strong: $10 in / $30 out per 1M)
    one_request_max = max_request_cost(10.0, 30.0, estimate_input_tokens(messages), 50)

    with run_gateway(cfg, routers=_routers()) as base:

        async def main() -> list[str]:
            client = openai.AsyncOpenAI(base_url=base, api_key=KEY_A, max_retries=0, timeout=30)

            async def one() -> str:
                try:
                    await client.chat.completions.create(
                        model="llmroute/auto", messages=messages, max_tokens=50
                    )
                    return "ok"
                except openai.RateLimitError as e:
                    assert e.body["code"] == "insufficient_quota"  # type: ignore[index]
                    return "budget"

            try:
                return await asyncio.gather(*(one() for _ in range(200)))
            finally:
                await client.close()

        results = asyncio.run(main())
        spent = base.app.budgets.usage("team-a")["day_spent"]
        assert results.count("ok") >= 5, results.count("ok")
        assert results.count("budget") >= 100
        assert results.count("ok") + results.count("budget") == 200
        assert spent <= budget + one_request_max, (spent, budget, one_request_max)
        # the budget was used, not refused up front (how much of it in this burst depends on how
        # many requests overlap; it is spent to the end one request at a time below)
        assert spent > 0
        # reservations were for the worst case: what is left is spent one request at a time,
        # then requests are refused with a Retry-After until the next UTC day
        c = _client(base, KEY_A)
        n_more = 0
        with pytest.raises(openai.RateLimitError) as e:
            for _ in range(100):
                _chat(c, text=LONG)
                n_more += 1
        assert int(e.value.response.headers["retry-after"]) >= 1
        spent = base.app.budgets.usage("team-a")["day_spent"]
        assert budget <= spent <= budget + one_request_max, (spent, budget, one_request_max)
    # the traces agree with the budget's books
    with open_store(cfg["store"]["url"]) as st:
        rows = st.query(key_id="team-a", limit=None)
    ok_rows = [r for r in rows if r["status"] == 200]
    assert len(ok_rows) == results.count("ok") + n_more
    assert sum(r["cost_usd"] for r in ok_rows) == pytest.approx(spent)


def test_budget_survives_a_restart(fake_server: Any, tmp_path: Path) -> None:
    cfg = _config(fake_server.base_url, tmp_path, budget=0.003)
    with run_gateway(cfg, routers=_routers()) as base:
        c = _client(base, KEY_A)
        n = 0
        with pytest.raises(openai.RateLimitError):
            for n in range(1, 50):  # noqa: B007
                _chat(c, text=LONG)
        assert n >= 2
    with run_gateway(cfg, routers=_routers()) as base:
        with pytest.raises(openai.RateLimitError) as e:
            _chat(_client(base, KEY_A), text="short")
        assert e.value.body["code"] == "insufficient_quota"  # type: ignore[index]
        _chat(_client(base, KEY_B), model="fake-weak")  # other keys are unaffected


def test_traces_feedback_and_restart(fake_server: Any, tmp_path: Path) -> None:
    cfg = _config(fake_server.base_url, tmp_path)
    ids: dict[str, dict[str, Any]] = {}
    with run_gateway(cfg, routers=_routers()) as base:
        c = _client(base, KEY_A)
        for text in ("short question", LONG):
            raw = _chat(c, text=text)
            resp = raw.parse()
            ids[raw.headers["x-llmroute-request-id"]] = {
                "model": raw.headers["x-llmroute-model"],
                "usage": resp.usage,
            }
        raw = _chat(c, model="fake-weak")  # a concrete model passes through unrouted
        ids[raw.headers["x-llmroute-request-id"]] = {"model": "fake-weak", "usage": raw.parse().usage}
        stream = c.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "stream me"}], stream=True
        )
        sid = stream.headers["x-llmroute-request-id"]
        text = "".join((ch.choices[0].delta.content or "") for ch in stream.parse() if ch.choices)
        assert text
        first = next(iter(ids))
        r = httpx.post(f"{base}/feedback", headers={"authorization": f"Bearer {KEY_A}"},
                       json={"request_id": first, "quality": 0.9, "comment": "good"})  # fmt: skip
        assert r.status_code == 200, r.text
        r = httpx.post(f"{base}/feedback", headers={"authorization": f"Bearer {KEY_A}"},
                       json={"request_id": "no-such-request", "quality": 0.9})  # fmt: skip
        assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
    # the gateway is stopped: every trace written before the stop is on disk
    with open_store(cfg["store"]["url"]) as st:
        for rid, want in ids.items():
            rec = st.get(rid)
            assert rec is not None, rid
            assert rec["model"] == want["model"] and rec["key_id"] == "team-a" and rec["status"] == 200
            assert rec["tokens_in"] == want["usage"].prompt_tokens
            assert rec["tokens_out"] == want["usage"].completion_tokens
            assert rec["cost_usd"] > 0
            assert rec["total_ms"] >= rec["upstream_ms"] >= 0 and rec["overhead_ms"] >= 0
            assert rec["prompt"] is None  # not stored unless the config asks
        routed = [st.get(r) for r in ids if st.get(r)["alias"] == "llmroute/auto"]  # type: ignore[index]
        assert len(routed) == 2
        for rec in routed:
            assert {c["model"] for c in rec["candidates"]} == {"fake-strong", "fake-weak"}  # type: ignore[index]
            assert rec["reason"]  # type: ignore[index]
        assert st.get(first)["outcome"] == {"quality": 0.9, "comment": "good"}  # type: ignore[index]
        srec = st.get(sid)
        assert srec is not None and srec["stream"] is True and srec["ttft_ms"] is not None
    # a restarted gateway appends to the same store and keeps the old records
    with run_gateway(cfg, routers=_routers()) as base:
        raw = _chat(_client(base, KEY_A))
        new_id = raw.headers["x-llmroute-request-id"]
    with open_store(cfg["store"]["url"]) as st:
        got = {r["request_id"] for r in st.query(limit=None)}
    assert set(ids) | {sid, new_id} <= got


def test_prompts_stored_only_when_configured(fake_server: Any, tmp_path: Path) -> None:
    cfg = _config(fake_server.base_url, tmp_path, trace={"store_prompts": True})
    with run_gateway(cfg, routers=_routers()) as base:
        raw = _chat(_client(base, KEY_A), text="remember this prompt")
        rid = raw.headers["x-llmroute-request-id"]
    with open_store(cfg["store"]["url"]) as st:
        rec = st.get(rid)
    assert rec is not None and "remember this prompt" in rec["prompt"]


def test_metrics_endpoint_series(fake_server: Any, tmp_path: Path) -> None:
    with run_gateway(_config(fake_server.base_url, tmp_path), routers=_routers()) as base:
        c = _client(base, KEY_A)
        for _ in range(3):
            _chat(c, text=LONG)
        _chat(c, model="fake-weak")
        r = httpx.get(f"{base.root}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    strong_auto = (("alias", "llmroute/auto"), ("model", "fake-strong"))
    assert samples[("llmroute_requests_total", (*strong_auto, ("status", "200")))] == 3
    assert (
        samples[("llmroute_requests_total", (("alias", ""), ("model", "fake-weak"), ("status", "200")))] == 1
    )
    assert samples[("llmroute_gateway_overhead_seconds_count", strong_auto)] == 3
    assert samples[("llmroute_upstream_duration_seconds_count", strong_auto)] == 3
    assert samples[("llmroute_tokens_total", (*strong_auto[:1], ("direction", "out"), strong_auto[1]))] > 0
    assert samples[("llmroute_cost_usd_total", strong_auto)] > 0
    assert ("llmroute_trace_queue_depth", ()) in samples
