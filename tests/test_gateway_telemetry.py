"""OpenTelemetry export (issue 16 item 4): a real gateway, the official openai client, and an
in-process OTLP/HTTP collector on 127.0.0.1 that decodes what the exporters send with the
opentelemetry-proto messages."""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

import openai
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from tests.conftest import StubRouter, loopback_config, run_gateway

from llmroute.gateway.config import ConfigError, parse_config
from llmroute.gateway.telemetry import Telemetry, parse_headers

CLIENT_KEY = "sk-client-SECRET-7f3a91"
UPSTREAM_KEY = "sk-upstream-SECRET-55c2e0"
PROMPT = "PROMPTTEXT-zebra-quartz"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Collector:
    """A tiny OTLP/HTTP receiver: POST /v1/traces and /v1/metrics, protobuf bodies."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        col = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                with col.lock:
                    col.raw.append(body)
                    col.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if self.path == "/v1/traces":
                        col.traces.append(ExportTraceServiceRequest.FromString(body))
                        out = ExportTraceServiceResponse().SerializeToString()
                    elif self.path == "/v1/metrics":
                        col.metrics.append(ExportMetricsServiceRequest.FromString(body))
                        out = ExportMetricsServiceResponse().SerializeToString()
                    else:
                        self.send_response(404)
                        self.end_headers()
                        return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[Span]:
        with self.lock:
            return [
                s
                for req in self.traces
                for rs in req.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            ]

    def metric_names(self) -> dict[str, Any]:
        with self.lock:
            return {
                m.name: m
                for req in self.metrics
                for rm in req.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }


@contextlib.contextmanager
def collector() -> Iterator[Collector]:
    c = Collector()
    t = threading.Thread(target=c.server.serve_forever, daemon=True)
    t.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(span: Span) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in span.attributes}


def children(spans: list[Span], parent: Span) -> list[Span]:
    out = [s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id]
    return sorted(out, key=lambda s: s.start_time_unix_nano)


def _config(fake_url: str, tmp_path: Any, otel_url: str, **telemetry: Any) -> dict[str, Any]:
    cfg = loopback_config(fake_url, tmp_path)
    for m in cfg["models"]:
        m["api_key_env"] = "LLMROUTE_TEST_OTEL_UPSTREAM"
    cfg["keys"] = [{"id": "team-a", "key_env": "LLMROUTE_TEST_OTEL_CLIENT"}]
    cfg["telemetry"] = {"otlp_endpoint": otel_url, "export_interval_s": 0.2, **telemetry}
    return cfg


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMROUTE_TEST_OTEL_UPSTREAM", UPSTREAM_KEY)
    monkeypatch.setenv("LLMROUTE_TEST_OTEL_CLIENT", CLIENT_KEY)
    monkeypatch.setenv("LLMROUTE_TEST_OTEL_HEADERS", "authorization=Bearer%20collector-token,x-team=a")


def test_spans_and_metrics_over_otlp(fake_server: Any, tmp_path: Any, secrets: None) -> None:
    """One server span per request with the decision, one client span per upstream attempt (a
    fallback's failed tries too), a stream, a client's traceparent continued, GenAI metrics; no
    secret and no prompt text in anything exported."""
    fake_server.clear()
    with collector() as col:
        cfg = _config(
            fake_server.base_url,
            tmp_path,
            col.url,
            metrics=True,
            service_name="llmroute-test",
            headers_env="LLMROUTE_TEST_OTEL_HEADERS",
        )
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
            c = openai.OpenAI(base_url=gw, api_key=CLIENT_KEY, max_retries=0, timeout=30)
            msgs: Any = [{"role": "user", "content": PROMPT}]
            # 1: plain
            r1 = c.chat.completions.with_raw_response.create(model="llmroute/auto", messages=msgs)
            rid1 = r1.headers["x-llmroute-request-id"]
            assert r1.parse().choices[0].message.content
            first = r1.headers["x-llmroute-model"]
            other = next(m for m in ("fake-strong", "fake-weak") if m != first)
            # 2: the chosen model fails twice (a retry, then fallback) with an error that echoes
            # credentials and prompt; the other model answers
            fake_server.set_fault(first, "echo500", count=2)
            r2 = c.chat.completions.with_raw_response.create(model="llmroute/auto", messages=msgs)
            rid2 = r2.headers["x-llmroute-request-id"]
            assert r2.headers["x-llmroute-model"] == other
            fake_server.clear()
            # 3: a stream
            with c.chat.completions.with_streaming_response.create(
                model="llmroute/auto",
                messages=msgs,
                stream=True,
                stream_options={"include_usage": True},
            ) as r3:
                rid3 = r3.headers["x-llmroute-request-id"]
                text = "".join(
                    ch.choices[0].delta.content or ""
                    for ch in r3.parse()
                    if ch.choices and ch.choices[0].delta
                )
            assert text
            # 4: the client's trace continues
            r4 = c.chat.completions.with_raw_response.create(
                model="llmroute/auto",
                messages=msgs,
                extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            )
            rid4 = r4.headers["x-llmroute-request-id"]
        # the gateway has shut down: its exporters flushed everything
    spans = col.spans()
    servers = {attrs(s)["llmroute.request_id"]: s for s in spans if s.kind == Span.SPAN_KIND_SERVER}
    assert set(servers) == {rid1, rid2, rid3, rid4}

    s1 = servers[rid1]
    a1 = attrs(s1)
    assert s1.name == "POST /v1/chat/completions"
    assert a1["gen_ai.operation.name"] == "chat"
    assert a1["gen_ai.request.model"] == "llmroute/auto"
    assert a1["llmroute.alias"] == "llmroute/auto"
    assert a1["llmroute.chosen_model"] == first == a1["llmroute.served_model"]
    assert a1["gen_ai.provider.name"] == "openai"
    assert a1["http.response.status_code"] == 200
    assert 0 < a1["llmroute.expected_quality"] <= 1 and a1["llmroute.expected_cost_usd"] > 0
    assert a1["llmroute.key_id"] == "team-a"
    assert a1["gen_ai.usage.input_tokens"] > 0 and a1["gen_ai.usage.output_tokens"] > 0
    assert "error.type" not in a1
    (k1,) = children(spans, s1)
    ka = attrs(k1)
    assert k1.kind == Span.SPAN_KIND_CLIENT and k1.name == f"chat {first}"
    assert ka["gen_ai.request.model"] == ka["gen_ai.response.model"] == first
    assert ka["gen_ai.provider.name"] == "openai" and ka["server.address"] == "127.0.0.1"
    assert ka["gen_ai.usage.input_tokens"] == a1["gen_ai.usage.input_tokens"]
    assert ka["gen_ai.usage.output_tokens"] == a1["gen_ai.usage.output_tokens"]
    assert ka["gen_ai.response.finish_reasons"] == ["stop"]
    assert (
        s1.start_time_unix_nano <= k1.start_time_unix_nano <= k1.end_time_unix_nano <= s1.end_time_unix_nano
    )
    assert s1.status.code != s1.status.STATUS_CODE_ERROR

    # fallback: two failed tries on the chosen model, then the other answers; each its own child span
    s2 = servers[rid2]
    a2 = attrs(s2)
    assert a2["llmroute.chosen_model"] == first and a2["llmroute.served_model"] == other
    tries = children(spans, s2)
    assert [attrs(k)["gen_ai.request.model"] for k in tries] == [first, first, other]
    for k in tries[:2]:
        assert attrs(k)["error.type"] == "502" and k.status.code == k.status.STATUS_CODE_ERROR
        assert "gen_ai.usage.input_tokens" not in attrs(k)
    assert "error.type" not in attrs(tries[2]) and attrs(tries[2])["gen_ai.usage.output_tokens"] > 0
    assert tries[0].end_time_unix_nano <= tries[1].start_time_unix_nano
    assert tries[1].end_time_unix_nano <= tries[2].start_time_unix_nano

    # stream: the span covers the whole stream, usage from the stream's last chunk
    s3 = servers[rid3]
    a3 = attrs(s3)
    assert a3["llmroute.stream"] is True and a3["llmroute.time_to_first_token_s"] > 0
    (k3,) = children(spans, s3)
    assert attrs(k3)["gen_ai.usage.output_tokens"] == a3["gen_ai.usage.output_tokens"] > 0
    assert k3.end_time_unix_nano <= s3.end_time_unix_nano

    # traceparent: same trace, the client's span is the parent
    s4 = servers[rid4]
    assert s4.trace_id.hex() == TRACE_ID and s4.parent_span_id.hex() == PARENT_ID
    assert s1.trace_id.hex() != TRACE_ID and not s1.parent_span_id
    assert len({s.trace_id for s in servers.values()}) == 4

    # metrics, with the service name and the collector headers from headers_env
    names = col.metric_names()
    for n in (
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "llmroute.requests",
        "llmroute.request.duration",
        "llmroute.gateway.overhead",
        "llmroute.errors",
        "llmroute.fallbacks",
    ):
        assert n in names, n
    last = {m.name: m for m in [names["llmroute.requests"]]}
    assert sum(p.as_int for p in last["llmroute.requests"].sum.data_points) == 4
    ops = names["gen_ai.client.operation.duration"].histogram.data_points
    assert sum(p.count for p in ops) == 6  # 1 + 3 attempts + 1 + 1
    usage = names["gen_ai.client.token.usage"].histogram.data_points
    types = {_value(kv.value) for p in usage for kv in p.attributes if kv.key == "gen_ai.token.type"}
    assert types == {"input", "output"}
    res = {kv.key: _value(kv.value) for kv in col.traces[0].resource_spans[0].resource.attributes}
    assert res["service.name"] == "llmroute-test"
    assert all(h.get("authorization") == "Bearer collector-token" for h in col.headers)

    blob = b"".join(col.raw)
    for secret in (CLIENT_KEY, UPSTREAM_KEY, PROMPT, "collector-token"):
        assert secret.encode() not in blob, secret


def test_capture_content_puts_messages_on_the_span(fake_server: Any, tmp_path: Any, secrets: None) -> None:
    fake_server.clear()
    with collector() as col:
        cfg = _config(fake_server.base_url, tmp_path, col.url, capture_content=True)
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
            c = openai.OpenAI(base_url=gw, api_key=CLIENT_KEY, max_retries=0, timeout=30)
            c.chat.completions.create(model="llmroute/auto", messages=[{"role": "user", "content": PROMPT}])
    (server,) = [s for s in col.spans() if s.kind == Span.SPAN_KIND_SERVER]
    a = attrs(server)
    assert PROMPT in a["gen_ai.input.messages"] and a["gen_ai.output.messages"]
    assert CLIENT_KEY.encode() not in b"".join(col.raw)
    assert not col.metrics  # metrics: false


def test_sample_ratio_zero_keeps_only_sampled_parents(fake_server: Any, tmp_path: Any, secrets: None) -> None:
    """sample_ratio 0 drops new traces, but a client's sampled traceparent is followed."""
    fake_server.clear()
    with collector() as col:
        cfg = _config(fake_server.base_url, tmp_path, col.url, sample_ratio=0.0)
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
            c = openai.OpenAI(base_url=gw, api_key=CLIENT_KEY, max_retries=0, timeout=30)
            msgs: Any = [{"role": "user", "content": "hi"}]
            c.chat.completions.create(model="llmroute/auto", messages=msgs)
            c.chat.completions.create(
                model="llmroute/auto",
                messages=msgs,
                extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"},
            )
            c.chat.completions.create(
                model="llmroute/auto",
                messages=msgs,
                extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            )
    spans = col.spans()
    assert spans and {s.trace_id.hex() for s in spans} == {TRACE_ID}
    assert len([s for s in spans if s.kind == Span.SPAN_KIND_SERVER]) == 1


def test_off_by_default_and_startup_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    base = loopback_config("http://127.0.0.1:9/v1", tmp_path)
    assert Telemetry.create(parse_config(base)) is None
    cfg = parse_config(
        {**base, "telemetry": {"otlp_endpoint": "http://127.0.0.1:4318", "headers_env": "NOPE_X"}}
    )
    monkeypatch.delenv("NOPE_X", raising=False)
    with pytest.raises(ValueError, match="NOPE_X is not set"):
        Telemetry.create(cfg)
    monkeypatch.setenv("NOPE_X", "justtext-secretish")
    with pytest.raises(ValueError, match="not key=value") as e:
        Telemetry.create(cfg)
    assert "secretish" not in str(e.value)
    with pytest.raises(Exception, match="http:// or https://"):
        parse_config({**base, "telemetry": {"otlp_endpoint": "127.0.0.1:4318"}})
    # configured but not installed: a start-up error that says what to install
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("opentelemetry.exporter") else real(name, *a),
    )
    ok = parse_config({**base, "telemetry": {"otlp_endpoint": "http://127.0.0.1:4318"}})
    with pytest.raises(
        ConfigError, match=r"opentelemetry-exporter-otlp-proto-http is not installed.*llmroute\[otel\]"
    ):
        Telemetry.create(ok)


def test_parse_headers() -> None:
    assert parse_headers("Authorization=Bearer%20t,x-a = 1,") == {"authorization": "Bearer t", "x-a": "1"}
    with pytest.raises(ValueError):
        parse_headers("a=1,=2")


def test_example_config_block_parses_when_uncommented() -> None:
    """examples/llmroute.yaml documents `telemetry:` commented out; uncommented, it is valid."""
    from pathlib import Path

    import yaml

    from llmroute.gateway.config import TelemetryConfig

    lines = (Path(__file__).parents[1] / "examples" / "llmroute.yaml").read_text().splitlines()
    start = lines.index("# telemetry:")
    block = [lines[start][2:]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    cfg = TelemetryConfig(**yaml.safe_load("\n".join(block))["telemetry"])
    assert cfg.otlp_endpoint == "http://127.0.0.1:4318" and cfg.protocol == "http/protobuf"
    assert not cfg.metrics and not cfg.capture_content


def test_other_endpoints_get_their_span_and_operation(fake_server: Any, tmp_path: Any, secrets: None) -> None:
    """Anthropic Messages (routed like chat) and an embeddings pass-through: a server span named after
    the endpoint, the GenAI operation of each, and an attempt span on the named model."""
    import anthropic

    fake_server.clear()
    with collector() as col:
        cfg = _config(fake_server.base_url, tmp_path, col.url)
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
            a = anthropic.Anthropic(base_url=gw.root, api_key=CLIENT_KEY, max_retries=0, timeout=30)
            msg = a.messages.create(
                model="llmroute/auto", max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
            )
            assert msg.content
            c = openai.OpenAI(base_url=gw, api_key=CLIENT_KEY, max_retries=0, timeout=30)
            assert c.embeddings.create(model="fake-weak", input=[PROMPT]).data
    spans = col.spans()
    servers = {s.name: s for s in spans if s.kind == Span.SPAN_KIND_SERVER}
    assert set(servers) == {"POST /v1/messages", "POST /v1/embeddings"}
    assert attrs(servers["POST /v1/messages"])["gen_ai.operation.name"] == "chat"
    emb = servers["POST /v1/embeddings"]
    assert attrs(emb)["gen_ai.operation.name"] == "embeddings"
    (k,) = children(spans, emb)
    assert k.name == "embeddings fake-weak" and attrs(k)["gen_ai.request.model"] == "fake-weak"
    assert len(children(spans, servers["POST /v1/messages"])) == 1
    blob = b"".join(col.raw)
    assert PROMPT.encode() not in blob and CLIENT_KEY.encode() not in blob


def test_cascade_steps_are_attempt_spans(fake_server: Any, tmp_path: Any, secrets: None) -> None:
    """A cascade that escalates: each step is its own attempt span under the request's span."""
    skills = {
        "tc-cheap": {"math": 1.0, "code": 1.0, "chat": 0.0},
        "tc-strong": {"math": 1.0, "code": 1.0, "chat": 1.0},
    }
    before = dict(fake_server.state.skills)
    fake_server.state.skills.update(skills)
    fake_server.clear()
    try:
        with collector() as col:
            cfg = _config(fake_server.base_url, tmp_path, col.url)
            for name, col_name, price in (("tc-cheap", "weak", 0.1), ("tc-strong", "strong", 10.0)):
                cfg["models"].append(
                    {
                        "name": name,
                        "base_url": fake_server.base_url,
                        "api_key_env": "LLMROUTE_TEST_OTEL_UPSTREAM",
                        "input_per_mtok": price,
                        "output_per_mtok": price,
                        "timeout_s": 10.0,
                        "router_model": col_name,
                    }
                )
            order = ["tc-cheap", "tc-strong"]
            cfg["aliases"]["c/two"] = {"candidates": order, "cascade": {"models": order, "max_steps": 2}}
            with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
                c = openai.OpenAI(base_url=gw, api_key=CLIENT_KEY, max_retries=0, timeout=30)
                raw = c.chat.completions.with_raw_response.create(
                    model="c/two",
                    messages=[
                        {"role": "user", "content": "Hi there! Could you greet my friend Alice warmly?"}
                    ],
                )
                assert raw.headers["x-llmroute-model"] == "tc-strong"
    finally:
        fake_server.state.skills.clear()
        fake_server.state.skills.update(before)
    spans = col.spans()
    (server,) = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    a = attrs(server)
    assert a["llmroute.cascade_steps"] == 2 and a["llmroute.served_model"] == "tc-strong"
    assert [attrs(k)["gen_ai.request.model"] for k in children(spans, server)] == order
