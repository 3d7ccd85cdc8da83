"""Gateway Prometheus metrics: series, labels, histograms, private registries, thread safety."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from llmroute.gateway.metrics import OVERHEAD_BUCKETS, GatewayMetrics
from llmroute.gateway.store import open_store


def _samples(m: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_exposition_contains_every_series() -> None:
    m = GatewayMetrics()
    for i in range(10):
        m.observe_request(
            model="fake-weak",
            alias="llmroute/auto",
            status=200,
            overhead_s=0.0003,
            upstream_s=0.02,
            total_s=0.0203,
            tokens_in=10,
            tokens_out=5,
            cost_usd=1e-5,
            stream=i % 2 == 0,
            ttft_s=0.01 if i % 2 == 0 else None,
        )
    m.observe_request(model="fake-strong", alias="llmroute/auto", status=502, total_s=1.5, overhead_s=0.004)
    m.observe_request(model="fake-strong", alias=None, status=200, total_s=0.1, upstream_s=0.09)
    m.observe_error("fake-strong", "llmroute/auto", "timeout")
    m.observe_error("fake-strong", "llmroute/auto", "timeout")
    m.observe_fallback("llmroute/auto", "fake-strong", "fake-weak", "timeout")
    m.set_breaker("fake-strong", "open")
    m.set_breaker("fake-weak", "closed")
    m.observe_cache(True)
    m.observe_cache(False)
    m.observe_cache(False, kind="semantic")
    m.observe_rejection(429, "budget", "team-a")
    m.observe_rejection(401, "auth")

    s = _samples(m)
    assert _get(s, "llmroute_requests_total", model="fake-weak", alias="llmroute/auto", status="200") == 10
    assert _get(s, "llmroute_requests_total", model="fake-strong", alias="llmroute/auto", status="502") == 1
    assert _get(s, "llmroute_requests_total", model="fake-strong", alias="", status="200") == 1
    assert _get(s, "llmroute_stream_requests_total", model="fake-weak", alias="llmroute/auto") == 5
    assert _get(s, "llmroute_tokens_total", model="fake-weak", alias="llmroute/auto", direction="in") == 100
    assert _get(s, "llmroute_tokens_total", model="fake-weak", alias="llmroute/auto", direction="out") == 50
    assert _get(s, "llmroute_cost_usd_total", model="fake-weak", alias="llmroute/auto") == pytest.approx(1e-4)
    assert _get(s, "llmroute_errors_total", model="fake-strong", alias="llmroute/auto", kind="timeout") == 2
    assert (
        _get(
            s,
            "llmroute_fallbacks_total",
            alias="llmroute/auto",
            from_model="fake-strong",
            to_model="fake-weak",
            reason="timeout",
        )
        == 1
    )
    assert _get(s, "llmroute_breaker_state", model="fake-strong") == 2
    assert _get(s, "llmroute_breaker_state", model="fake-weak") == 0
    assert _get(s, "llmroute_cache_total", kind="exact", result="hit") == 1
    assert _get(s, "llmroute_cache_total", kind="semantic", result="miss") == 1
    assert _get(s, "llmroute_rejections_total", status="429", reason="budget", key_id="team-a") == 1
    assert _get(s, "llmroute_rejections_total", status="401", reason="auth", key_id="") == 1

    # overhead and upstream are separate histograms with their own buckets
    ov = "llmroute_gateway_overhead_seconds"
    lab = {"model": "fake-weak", "alias": "llmroute/auto"}
    assert _get(s, f"{ov}_count", **lab) == 10
    assert _get(s, f"{ov}_sum", **lab) == pytest.approx(0.003)
    assert _get(s, f"{ov}_bucket", le="0.00025", **lab) == 0
    assert _get(s, f"{ov}_bucket", le="0.0005", **lab) == 10
    assert _get(s, f"{ov}_bucket", le="+Inf", **lab) == 10
    assert (
        len([k for k in s if k[0] == f"{ov}_bucket" and dict(k[1])["model"] == "fake-weak"])
        == len(OVERHEAD_BUCKETS) + 1
    )
    up = "llmroute_upstream_duration_seconds"
    assert _get(s, f"{up}_bucket", le="0.01", **lab) == 0
    assert _get(s, f"{up}_bucket", le="0.025", **lab) == 10
    assert _get(s, "llmroute_request_duration_seconds_count", model="fake-strong", alias="llmroute/auto") == 1
    assert _get(s, "llmroute_time_to_first_token_seconds_count", **lab) == 5
    # the failed request had no upstream time: no upstream series for it
    assert (
        "llmroute_upstream_duration_seconds_count",
        (("alias", "llmroute/auto"), ("model", "fake-strong")),
    ) not in s


def test_private_registries() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.observe_request(model="m", alias="x", status=200, total_s=0.1)
    assert ("llmroute_requests_total", (("alias", "x"), ("model", "m"), ("status", "200"))) in _samples(a)
    assert not any(k[0] == "llmroute_requests_total" for k in _samples(b))
    assert not any(f.name.startswith("llmroute") for f in REGISTRY.collect())


def test_pending_events_are_folded_in_batches() -> None:
    m = GatewayMetrics(fold_every=100)
    for _ in range(1000):
        m.observe_request(model="m", alias="a", total_s=0.01)
    assert len(m._pending) < 100  # bounded memory between scrapes
    assert m.snapshot()["requests"][("m", "a", "200")] == 1000


def test_concurrent_observers_lose_nothing() -> None:
    m = GatewayMetrics(fold_every=64)

    def work() -> None:
        for _ in range(2000):
            m.observe_request(model="m", alias="a", status=200, total_s=0.01, tokens_in=1)
            m.observe_error("m", "a", "5xx")

    threads = [threading.Thread(target=work) for _ in range(6)]
    scraper_stop = threading.Event()

    def scrape() -> None:
        while not scraper_stop.is_set():
            m.render()

    sc = threading.Thread(target=scrape)
    sc.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scraper_stop.set()
    sc.join()
    snap = m.snapshot()
    assert snap["requests"][("m", "a", "200")] == 12000
    assert snap["tokens"][("m", "a")] == (12000, 0)
    assert snap["errors"][("m", "a", "5xx")] == 12000


def test_breaker_states_and_transitions() -> None:
    m = GatewayMetrics()
    for st in ("closed", "open", "open", "half_open", "closed"):
        m.set_breaker("b1", st)
    s = _samples(m)
    assert _get(s, "llmroute_breaker_state", model="b1") == 0
    assert _get(s, "llmroute_breaker_transitions_total", model="b1", state="open") == 1
    assert _get(s, "llmroute_breaker_transitions_total", model="b1", state="half_open") == 1
    assert _get(s, "llmroute_breaker_transitions_total", model="b1", state="closed") == 2
    with pytest.raises(ValueError, match="breaker state"):
        m.set_breaker("b1", "broken")


def test_trace_store_gauges() -> None:
    m = GatewayMetrics()
    with open_store("memory://", flush_interval_s=60, batch_size=10_000) as st:
        m.bind_store(st)
        for i in range(3):
            st.write({"request_id": str(i)})
        s = _samples(m)
        assert s[("llmroute_trace_queue_depth", ())] == 3
        st.flush_sync()
        s = _samples(m)
        assert s[("llmroute_trace_queue_depth", ())] == 0
        assert s[("llmroute_traces_written_total", ())] == 3
        assert s[("llmroute_traces_dropped_total", ())] == 0
