"""OpenTelemetry traces and metrics over OTLP (config `telemetry:`; the `otel` extra).

Off by default: `Gateway.telemetry` is then None and the request path pays one attribute check in
`Gateway._finish`. When `telemetry.otlp_endpoint` is set, each finished request (the same moment
its trace row and Prometheus metrics are recorded, so a stream's span ends when the stream ends)
becomes:

- one SERVER span `POST /v1/chat/completions` (etc.) from the request's arrival to its end, with
  the routing decision (`llmroute.*`: alias, chosen and served model, reason, rule, trade-off,
  expected quality and cost, cache hit, sticky and learner info) and the GenAI request/response
  attributes; a W3C `traceparent` (and `tracestate`) header from the client continues its trace;
- one CLIENT child span `chat <upstream model>` per upstream attempt (each retry, fallback and
  cascade step), with the GenAI semantic conventions (gen_ai.operation.name,
  gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model, gen_ai.usage.input_tokens /
  output_tokens and gen_ai.response.finish_reasons on the answering attempt, error.type on a
  failed one).

Spans are built after the fact from the recorded timings (start times are given explicitly), so
no context is carried through the pipeline. Prompt and answer text never go into spans unless
`telemetry.capture_content` is true (then `gen_ai.input.messages` / `gen_ai.output.messages` on
the server span); API keys and upstream error texts never do. With `metrics: true` the main
Prometheus series are mirrored as OTLP metrics (gen_ai.client.token.usage,
gen_ai.client.operation.duration and `llmroute.*`).

Providers are made in `start()` (each worker of `llmroute serve --workers N` after its fork: the
batch exporter's thread does not survive a fork) and flushed by `shutdown()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from llmroute.gateway.asgi import Handler, Receive, Scope, Send
    from llmroute.gateway.config import GatewayConfig, TelemetryConfig
    from llmroute.gateway.reliability import Attempt
    from llmroute.gateway.routing import RequestContext, RouteDecision

__all__ = ["PROVIDER_NAMES", "Telemetry", "parse_headers"]

#: gen_ai.provider.name for each `models[].provider` (the well-known values where one exists)
PROVIDER_NAMES: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure.ai.openai",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "mistral": "mistral_ai",
    "groq": "groq",
    "deepseek": "deepseek",
}

#: gen_ai.operation.name of each `RequestContext.endpoint`
_OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "completions": "text_completion"}
_OPERATIONS["embeddings"] = "embeddings"

# (parent context, "METHOD /path") of the request being handled; set by `Telemetry.wrap`
_REQUEST: contextvars.ContextVar[tuple[Any, str] | None] = contextvars.ContextVar(
    "llmroute_otel_request", default=None
)


def parse_headers(value: str) -> dict[str, str]:
    """OTLP exporter headers from `k1=v1,k2=v2` (the OTEL_EXPORTER_OTLP_HEADERS form; values
    may be percent-encoded). Raises ValueError naming the bad entry's position, never its value."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for i, part in enumerate(p for p in value.split(",") if p.strip()):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"header entry {i + 1} is not key=value (give 'k1=v1,k2=v2')")
        out[unquote(k.strip()).lower()] = unquote(v.strip())
    return out


def _missing_packages(protocol: str) -> list[str]:
    """The OpenTelemetry distributions the configured protocol needs that are not installed."""
    need = {
        "opentelemetry.sdk": "opentelemetry-sdk",
        (
            "opentelemetry.exporter.otlp.proto.grpc"
            if protocol == "grpc"
            else "opentelemetry.exporter.otlp.proto.http"
        ): (
            "opentelemetry-exporter-otlp-proto-grpc"
            if protocol == "grpc"
            else "opentelemetry-exporter-otlp-proto-http"
        ),
    }
    missing = []
    for mod, dist in need.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(dist)
    return missing


def _endpoint(base: str, protocol: str, signal: str) -> str:
    """The exporter URL for `signal` ("traces" / "metrics"): http/protobuf appends /v1/<signal>
    to the configured base (unless it already ends with a signal path); gRPC takes the base."""
    if protocol == "grpc":
        return base
    base = base.rstrip("/")
    for s in ("/v1/traces", "/v1/metrics"):
        if base.endswith(s):
            base = base[: -len(s)]
    return f"{base}/v1/{signal}"


class Telemetry:
    """Spans and OTLP metrics of finished requests. Build with `Telemetry.create(config)`."""

    def __init__(self, cfg: TelemetryConfig, config: GatewayConfig) -> None:
        self.cfg = cfg
        self.tracer: Any = None
        self.meter: Any = None
        self._tp: Any = None
        self._mp: Any = None
        self._propagator: Any = None
        self._ins: dict[str, Any] = {}
        # model name -> span attributes of an attempt on it (provider, upstream model, server)
        self.models: dict[str, dict[str, Any]] = {}
        for m in config.models:
            attrs: dict[str, Any] = {
                "gen_ai.provider.name": PROVIDER_NAMES.get(m.provider, m.provider),
                "gen_ai.request.model": m.upstream_model or m.name,
                "llmroute.model": m.name,
            }
            if m.base_url:
                u = urlsplit(m.base_url)
                if u.hostname:
                    attrs["server.address"] = u.hostname
                    attrs["server.port"] = u.port or (443 if u.scheme == "https" else 80)
            self.models[m.name] = attrs

    @classmethod
    def create(cls, config: GatewayConfig) -> Telemetry | None:
        """The gateway's telemetry, or None when `telemetry.otlp_endpoint` is not set. Raises
        `ConfigError` (a ValueError: `llmroute serve` prints it on one line) saying what to install
        when the OpenTelemetry packages are missing, or when `headers_env` names an unset variable
        or holds malformed headers."""
        from llmroute.gateway.config import ConfigError

        cfg = getattr(config, "telemetry", None)
        if cfg is None or not cfg.otlp_endpoint:
            return None
        missing = _missing_packages(cfg.protocol)
        if missing:
            extra = " (and opentelemetry-exporter-otlp-proto-grpc for grpc)" if cfg.protocol == "grpc" else ""
            raise ConfigError(
                f"telemetry.otlp_endpoint is set but {', '.join(missing)} is not installed: "
                f"pip install 'llmroute[otel]'{extra}, or remove the telemetry block"
            )
        tel = cls(cfg, config)
        try:
            tel.headers()  # fail at start-up, not at the first export
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return tel

    def headers(self) -> dict[str, str]:
        """The exporter's headers, read from the variable `headers_env` names (empty without one)."""
        name = self.cfg.headers_env
        if not name:
            return {}
        value = os.environ.get(name)
        if value is None:
            raise ValueError(f"telemetry.headers_env: environment variable {name} is not set")
        try:
            return parse_headers(value)
        except ValueError as e:
            raise ValueError(f"telemetry.headers_env ({name}): {e}") from None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Make the tracer and meter providers and their OTLP exporters (in the serving process)."""
        if self.tracer is not None:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from llmroute import __version__ as version

        cfg = self.cfg
        headers = self.headers()
        resource = Resource.create({"service.name": cfg.service_name, "service.version": version})
        if cfg.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[no-redef]
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[no-redef]
                OTLPSpanExporter,
            )
        kw: dict[str, Any] = {"headers": headers or None, "timeout": cfg.export_timeout_s}
        self._tp = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
        self._tp.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=_endpoint(cfg.otlp_endpoint, cfg.protocol, "traces"), **kw),
                schedule_delay_millis=int(cfg.export_interval_s * 1000),
                max_queue_size=8192,  # spans waiting for export (beyond: dropped, not blocking)
            )
        )
        self.tracer = self._tp.get_tracer("llmroute.gateway", version)
        self._propagator = TraceContextTextMapPropagator()
        if cfg.metrics:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=_endpoint(cfg.otlp_endpoint, cfg.protocol, "metrics"), **kw),
                export_interval_millis=cfg.export_interval_s * 1000,
            )
            self._mp = MeterProvider(resource=resource, metric_readers=[reader])
            self.meter = self._mp.get_meter("llmroute.gateway", version)
            self._instruments()

    def _instruments(self) -> None:
        m = self.meter
        secs = "s"
        self._ins = {
            "tokens": m.create_histogram(
                "gen_ai.client.token.usage", unit="{token}", description="tokens per request and direction"
            ),
            "op": m.create_histogram(
                "gen_ai.client.operation.duration", unit=secs, description="duration of each upstream attempt"
            ),
            "requests": m.create_counter(
                "llmroute.requests", unit="{request}", description="client requests"
            ),
            "cost": m.create_counter("llmroute.cost", unit="USD", description="billed cost"),
            "errors": m.create_counter(
                "llmroute.errors", unit="{error}", description="failed upstream attempts"
            ),
            "fallbacks": m.create_counter(
                "llmroute.fallbacks", unit="{fallback}", description="requests answered by another model"
            ),
            "duration": m.create_histogram(
                "llmroute.request.duration", unit=secs, description="client request duration"
            ),
            "overhead": m.create_histogram(
                "llmroute.gateway.overhead", unit=secs, description="gateway time outside upstream calls"
            ),
            "upstream": m.create_histogram(
                "llmroute.upstream.duration", unit=secs, description="upstream time per request"
            ),
            "ttft": m.create_histogram(
                "llmroute.time_to_first_token", unit=secs, description="streamed requests' first token"
            ),
        }

    def shutdown(self) -> None:
        """Export what is pending and stop the exporters (blocking: call off the event loop)."""
        for p in (self._tp, self._mp):
            if p is not None:
                with contextlib.suppress(Exception):  # an unreachable collector at exit
                    p.shutdown()
        self._tp = self._mp = self.tracer = self.meter = None

    # ---- request side ------------------------------------------------------------------------
    def wrap(self, method: str, path: str, handler: Handler) -> Handler:
        """`handler` with the request's span name and the client's W3C trace context noted for
        `record` (a context variable: the request's task and the tasks it awaits see it)."""
        name = f"{method} {path}"

        async def traced(scope: Scope, receive: Receive, send: Send) -> None:
            carrier: dict[str, str] | None = None
            for k, v in scope.get("headers") or ():
                if k == b"traceparent" or k == b"tracestate":
                    if carrier is None:
                        carrier = {}
                    carrier[k.decode("latin-1")] = v.decode("latin-1")
            parent = (
                self._propagator.extract(carrier)
                if carrier is not None and self._propagator is not None
                else None
            )
            token = _REQUEST.set((parent, name))
            try:
                await handler(scope, receive, send)
            finally:
                _REQUEST.reset(token)

        return traced

    def record(
        self,
        *,
        rid: str,
        ctx: RequestContext | None,
        decision: RouteDecision | None,
        model: str,
        status: int,
        t0: float,
        attempts: Sequence[Attempt],
        usage: tuple[int, int, float],
        stream: bool,
        ttft: float | None,
        error: str | None,
        response: Any,
        extra: dict[str, Any] | None,
    ) -> None:
        """The spans (and metrics) of one finished request, from `Gateway._finish`'s arguments;
        `t0` is the request's `time.perf_counter()` start, each attempt's `started` its
        `time.monotonic()` start (attempts without one are laid out back to back before the end)."""
        tracer = self.tracer
        if tracer is None:
            return
        from opentelemetry.trace import SpanKind

        now_ns = time.time_ns()
        now_perf = time.perf_counter()
        now_mono = time.monotonic()
        start_ns = now_ns - int((now_perf - t0) * 1e9)
        parent, name = _REQUEST.get() or (None, "llmroute request")
        endpoint = ctx.endpoint if ctx is not None else "chat"
        op = _OPERATIONS.get(endpoint, "chat")
        # sampled first: a span the sampler drops costs no attribute building
        span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, start_time=start_ns)
        if span.is_recording():
            self._spans(
                span,
                op,
                rid,
                ctx,
                decision,
                model,
                status,
                attempts,
                usage,
                stream,
                ttft,
                error,
                response,
                extra,
                now_ns,
                now_mono,
            )
        span.end(end_time=now_ns)
        if self.meter is not None:
            self._metrics(op, decision, model, status, attempts, usage, ttft, t0, now_perf)

    def _spans(
        self,
        span: Any,
        op: str,
        rid: str,
        ctx: RequestContext | None,
        decision: RouteDecision | None,
        model: str,
        status: int,
        attempts: Sequence[Attempt],
        usage: tuple[int, int, float],
        stream: bool,
        ttft: float | None,
        error: str | None,
        response: Any,
        extra: dict[str, Any] | None,
        now_ns: int,
        now_mono: float,
    ) -> None:
        """The server span's attributes and the attempts' child spans of a sampled request."""
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "http.response.status_code": status,
            "llmroute.request_id": rid,
            "llmroute.stream": stream,
        }
        if ctx is not None:
            attrs["gen_ai.request.model"] = ctx.requested
            if ctx.key_id:
                attrs["llmroute.key_id"] = ctx.key_id
            if ctx.extra.get("cache_hit") is not None:
                attrs["llmroute.cache_hit"] = True
        if decision is not None:
            _decision_attrs(decision, attrs)
        if model:
            mattrs = self.models.get(model)
            attrs["gen_ai.response.model"] = mattrs["gen_ai.request.model"] if mattrs else model
            attrs["llmroute.served_model"] = model
            if mattrs:
                attrs["gen_ai.provider.name"] = mattrs["gen_ai.provider.name"]
        if usage[0] or usage[1]:
            attrs["gen_ai.usage.input_tokens"] = usage[0]
            attrs["gen_ai.usage.output_tokens"] = usage[1]
        if usage[2]:
            attrs["llmroute.cost_usd"] = usage[2]
        if ttft is not None:
            attrs["llmroute.time_to_first_token_s"] = ttft
        if extra:
            if "cost_source" in extra:
                attrs["llmroute.cost_source"] = extra["cost_source"]
            if "cascade" in extra:
                attrs["llmroute.cascade_steps"] = len(extra["cascade"].get("steps") or ())
        reasons = _finish_reasons(response)
        if reasons:
            attrs["gen_ai.response.finish_reasons"] = reasons
        if status >= 400:
            attrs["error.type"] = _error_type(status, error)
        if self.cfg.capture_content:
            if ctx is not None:
                attrs["gen_ai.input.messages"] = orjson.dumps(ctx.messages, default=str).decode()
            if response is not None:
                attrs["gen_ai.output.messages"] = orjson.dumps(response, default=str).decode()
        span.set_attributes(attrs)
        if status >= 500 or status == 499 or error is not None:
            span.set_status(Status(StatusCode.ERROR, _error_type(status, error)))
        child_ctx = set_span_in_context(span)
        oks = [a for a in attempts if a.ok]
        answering = oks[-1] if len(oks) == 1 and oks[-1].model == model else None
        end_ns = now_ns
        for a in reversed(attempts):  # laid out backwards where an attempt has no start time
            dur = int(a.latency_s * 1e9)
            if a.started:
                a_start = now_ns - int((now_mono - a.started) * 1e9)
                a_end = a_start + dur
            else:
                a_end = end_ns
                a_start = a_end - dur
            end_ns = a_start
            self._attempt_span(self.tracer, child_ctx, op, a, a is answering, a_start, a_end, attrs, response)

    def _attempt_span(
        self,
        tracer: Any,
        parent: Any,
        op: str,
        a: Attempt,
        answering: bool,
        start_ns: int,
        end_ns: int,
        req: dict[str, Any],
        response: Any,
    ) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        m = self.models.get(a.model) or {"gen_ai.request.model": a.model, "llmroute.model": a.model}
        attrs: dict[str, Any] = {"gen_ai.operation.name": op, **m}
        if a.ok:
            attrs["gen_ai.response.model"] = m["gen_ai.request.model"]
        if answering:
            for k in (
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.output_tokens",
                "gen_ai.response.finish_reasons",
            ):
                if k in req:
                    attrs[k] = req[k]
        if a.status is not None:
            attrs["http.response.status_code"] = a.status
        if not a.ok:
            attrs["error.type"] = _error_type(a.status, a.error)
        span = tracer.start_span(
            f"{op} {m['gen_ai.request.model']}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=start_ns,
        )
        if not a.ok:
            span.set_status(Status(StatusCode.ERROR, attrs["error.type"]))
        span.end(end_time=max(start_ns, end_ns))

    def _metrics(
        self,
        op: str,
        decision: RouteDecision | None,
        model: str,
        status: int,
        attempts: Sequence[Attempt],
        usage: tuple[int, int, float],
        ttft: float | None,
        t0: float,
        now_perf: float,
    ) -> None:
        ins = self._ins
        alias = decision.alias if decision is not None and decision.alias else ""
        base = {"llmroute.alias": alias, "llmroute.model": model}
        total = now_perf - t0
        upstream = sum(a.latency_s for a in attempts)
        ins["requests"].add(1, {**base, "http.response.status_code": status})
        ins["duration"].record(total, base)
        ins["overhead"].record(max(0.0, total - upstream), base)
        if attempts:
            ins["upstream"].record(upstream, base)
        if ttft is not None:
            ins["ttft"].record(ttft, base)
        if usage[2]:
            ins["cost"].add(usage[2], base)
        m = self.models.get(model)
        if m is not None and (usage[0] or usage[1]):
            gen = {
                "gen_ai.operation.name": op,
                "gen_ai.provider.name": m["gen_ai.provider.name"],
                "gen_ai.request.model": m["gen_ai.request.model"],
                "gen_ai.response.model": m["gen_ai.request.model"],
            }
            ins["tokens"].record(usage[0], {**gen, "gen_ai.token.type": "input"})
            ins["tokens"].record(usage[1], {**gen, "gen_ai.token.type": "output"})
        for a in attempts:
            am = self.models.get(a.model) or {"gen_ai.request.model": a.model}
            oattrs: dict[str, Any] = {
                "gen_ai.operation.name": op,
                "gen_ai.request.model": am["gen_ai.request.model"],
            }
            if "gen_ai.provider.name" in am:
                oattrs["gen_ai.provider.name"] = am["gen_ai.provider.name"]
            if not a.ok:
                oattrs["error.type"] = _error_type(a.status, a.error)
                ins["errors"].add(1, {"llmroute.alias": alias, "llmroute.model": a.model, **oattrs})
            ins["op"].record(a.latency_s, oattrs)
        if decision is not None and model and model != decision.model and any(not a.ok for a in attempts):
            ins["fallbacks"].add(
                1, {"llmroute.alias": alias, "from_model": decision.model, "to_model": model}
            )


def _decision_attrs(d: RouteDecision, attrs: dict[str, Any]) -> None:
    """The routing decision's span attributes (no prompt text)."""
    attrs["llmroute.chosen_model"] = d.model
    attrs["llmroute.reason"] = d.reason
    attrs["llmroute.candidates"] = list(d.ranked)
    if d.alias:
        attrs["llmroute.alias"] = d.alias
    if d.router:
        attrs["llmroute.router"] = d.router
    q = d.expected_quality.get(d.model)
    if q is not None:
        attrs["llmroute.expected_quality"] = float(q)
    c = d.expected_cost.get(d.model)
    if c is not None:
        attrs["llmroute.expected_cost_usd"] = float(c)
    pol = d.policy
    if pol:
        if pol.get("rule") is not None:
            attrs["llmroute.policy.rule"] = str(pol["rule"])
        for k in ("tradeoff", "max_cost", "min_quality", "threshold"):
            v = pol.get(k)
            if isinstance(v, int | float) and v == v and abs(v) != float("inf"):
                attrs[f"llmroute.policy.{k}"] = float(v)
        set_by = pol.get("set_by")
        if set_by:
            attrs["llmroute.rules"] = sorted(set(map(str, set_by.values())))
    if not d.constraints_met:
        attrs["llmroute.unmet_constraints"] = list(map(str, d.unmet_constraints))
    sticky = d.extra.get("sticky") if d.extra else None
    if sticky is not None:
        from llmroute.gateway.sticky import sticky_header

        attrs["llmroute.sticky"] = sticky_header(sticky)
    if d.learning is not None:
        attrs["llmroute.learning.explored"] = bool(d.learning.get("explored"))
        p = d.learning.get("propensity")
        if isinstance(p, int | float):
            attrs["llmroute.learning.propensity"] = float(p)


def _finish_reasons(response: Any) -> list[str]:
    """finish_reason of each choice of an OpenAI-shaped `choices` list (what `_finish` gets)."""
    if not isinstance(response, list):
        return []
    out = []
    for ch in response:
        r = ch.get("finish_reason") if isinstance(ch, dict) else None
        if r:
            out.append(str(r))
    return out


def _error_type(status: int | None, error: str | None) -> str:
    """error.type: the HTTP status as text (low-cardinality, and never an upstream's message)."""
    if status == 499:
        return "client_disconnected"
    if status:
        return str(status)
    if error and ("deadline" in error or "timed out" in error or "timeout" in error):
        return "timeout"
    return "_OTHER"
