"""The export side of the gateway's metrics (`llmroute.gateway.metrics`, see its docstring for
the design and the series): this process's folded counters as plain dicts keyed by label tuples
(`_state`), the Prometheus families built from them (`collect`, with `_counter`, `_histogram`,
`_fmt`), the text exposition (`render`) and the plain view for tests and the dashboard
(`snapshot`).

The seam: this runs at scrape time, never on a request's path (`observe_*` and the folding stay in
`llmroute.gateway.metrics`); the other workers' numbers it merges come from
`llmroute.gateway.metrics_shared`. `ExportMixin` is a base class of `GatewayMetrics` (not used
alone): the methods are the metrics object's own, and it is still the registry's collector.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from llmroute.gateway.metrics_shared import _HISTS, _merge

if TYPE_CHECKING:
    from llmroute.gateway.metrics import _Series

__all__ = ["ExportMixin"]


def _fmt(b: float) -> str:
    return repr(float(b))


class ExportMixin:
    """`GatewayMetrics._state`, `collect`, `render` and `snapshot`; the attributes below are the
    `GatewayMetrics`'s (`GatewayMetrics.__init__`), and so are `_fold` (the hot path's events
    folded) and `_write_snapshot` / `_read_others` (`llmroute.gateway.metrics_shared`)."""

    prefix: str
    buckets: tuple[float, ...]
    overhead_buckets: tuple[float, ...]
    registry: CollectorRegistry
    shared_dir: Path | None
    _lock: threading.Lock
    _series: dict[tuple[str, str], _Series]
    _errors: dict[tuple[str, str, str], int]
    _fallbacks: dict[tuple[str, str, str, str], int]
    _cache: dict[tuple[str, str], int]
    _rejections: dict[tuple[str, str, str], int]
    _decisions: dict[tuple[str, str], int]
    _cascade_steps: dict[tuple[str, str, str], int]
    _cascade_requests: dict[tuple[str, str], int]
    _sticky: dict[tuple[str, str], int]
    _implicit: dict[tuple[str, str], int]
    _learning: dict[tuple[str, str], int]
    _learning_outcomes: dict[tuple[str, str, str], int]
    _breaker: dict[str, float]
    _breaker_transitions: dict[tuple[str, str], int]
    _dep_breaker: dict[tuple[str, str], float]
    _dep_breaker_transitions: dict[tuple[str, str, str], int]
    _store: Any

    def _state(self) -> dict[str, Any]:
        """This process's counters as plain dicts keyed by label tuples (pending events folded)."""
        self._fold()
        with self._lock:
            requests: dict[tuple, float] = {}
            streams: dict[tuple, float] = {}
            tokens: dict[tuple, float] = {}
            cost: dict[tuple, float] = {}
            hists: dict[str, dict[tuple, tuple[list[int], float, int]]] = {n: {} for n in _HISTS}
            for (model, alias), ser in self._series.items():
                for status, n in ser.requests.items():
                    requests[(model, alias, str(status))] = n
                if ser.streams:
                    streams[(model, alias)] = ser.streams
                if ser.tokens_in:
                    tokens[(model, alias, "in")] = ser.tokens_in
                if ser.tokens_out:
                    tokens[(model, alias, "out")] = ser.tokens_out
                if ser.cost:
                    cost[(model, alias)] = ser.cost
                for name, per in hists.items():
                    h = getattr(ser, name)
                    if h.count:
                        per[(model, alias)] = (list(h.counts), h.sum, h.count)
            state: dict[str, Any] = {
                "requests": requests,
                "streams": streams,
                "tokens": tokens,
                "cost": cost,
                "errors": dict(self._errors),
                "fallbacks": dict(self._fallbacks),
                "cache": dict(self._cache),
                "rejections": dict(self._rejections),
                "decisions": dict(self._decisions),
                "cascade_steps": dict(self._cascade_steps),
                "cascade_requests": dict(self._cascade_requests),
                "sticky": dict(self._sticky),
                "implicit": dict(self._implicit),
                "learning": dict(self._learning),
                "learning_outcomes": dict(self._learning_outcomes),
                "breaker": {(m,): v for m, v in self._breaker.items()},
                "breaker_transitions": dict(self._breaker_transitions),
                "deployment_breaker": dict(self._dep_breaker),
                "deployment_breaker_transitions": dict(self._dep_breaker_transitions),
                "hists": hists,
            }
        store = self._store
        stats = None
        if store is not None:
            try:
                stats = dict(store.stats())
            except Exception:
                stats = None
        state["store"] = stats
        return state

    def collect(self) -> Iterable[Metric]:
        """prometheus_client collector protocol: fold pending events, yield every family.

        With a shared folder the numbers are the sums over every worker process (see `publish`).
        """
        state = self._state()
        if self.shared_dir is not None:
            self._write_snapshot(state)
            state = _merge([state, *self._read_others()])
        p = self.prefix
        yield _counter(
            f"{p}_requests",
            "Client requests by chosen model, alias and HTTP status.",
            ["model", "alias", "status"],
            state["requests"],
        )
        yield _counter(
            f"{p}_stream_requests", "Streaming client requests.", ["model", "alias"], state["streams"]
        )
        yield _counter(
            f"{p}_tokens",
            "Tokens by direction (in = prompt, out = completion).",
            ["model", "alias", "direction"],
            state["tokens"],
        )
        yield _counter(f"{p}_cost_usd", "Actual cost in USD.", ["model", "alias"], state["cost"])
        yield _counter(
            f"{p}_errors", "Failed upstream attempts by kind.", ["model", "alias", "kind"], state["errors"]
        )
        yield _counter(
            f"{p}_fallbacks",
            "Fallbacks from one candidate to the next.",
            ["alias", "from_model", "to_model", "reason"],
            state["fallbacks"],
        )
        yield _counter(f"{p}_cache", "Response cache lookups.", ["kind", "result"], state["cache"])
        yield _counter(
            f"{p}_rejections",
            "Requests refused before any upstream call.",
            ["status", "reason", "key_id"],
            state["rejections"],
        )
        yield _counter(
            f"{p}_route_decisions",
            "Routing decisions answered by POST /v1/route (decision only, no upstream call).",
            ["model", "alias"],
            state["decisions"],
        )
        yield _counter(
            f"{p}_cascade_steps",
            "Model calls made by cascades, by result (passed, below_threshold, unverified, or the failure kind).",
            ["alias", "model", "result"],
            state["cascade_steps"],
        )
        yield _counter(
            f"{p}_cascade_requests",
            "Requests answered by a cascade, by why it stopped (pass, max_steps, max_cost, ...).",
            ["alias", "stop"],
            state["cascade_requests"],
        )
        yield _counter(
            f"{p}_sticky_decisions",
            "Routed requests of sticky aliases: held (stayed on the session's model), new, or broken_<reason>.",
            ["alias", "result"],
            state["sticky"],
        )
        yield _counter(
            f"{p}_implicit_outcomes",
            "Implicit outcomes recorded, by signal (reask, regenerate, length, refusal, tool_error).",
            ["alias", "source"],
            state["implicit"],
        )
        yield _counter(
            f"{p}_learning_decisions",
            "Routed decisions of aliases that learn online, by whether the learner explored.",
            ["alias", "explored"],
            state["learning"],
        )
        yield _counter(
            f"{p}_learning_outcomes",
            "Outcomes given to the online learners, by source and result (applied, replaced, ignored).",
            ["alias", "source", "result"],
            state["learning_outcomes"],
        )
        g = GaugeMetricFamily(
            f"{p}_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open (the most open over workers).",
            labels=["model"],
        )
        for (model,), v in sorted(state["breaker"].items()):
            g.add_metric([model], v)
        yield g
        yield _counter(
            f"{p}_breaker_transitions",
            "Circuit breaker state changes.",
            ["model", "state"],
            state["breaker_transitions"],
        )
        g = GaugeMetricFamily(
            f"{p}_deployment_breaker_state",
            "Circuit breaker of one deployment of a model: 0 closed, 1 half-open, 2 open (the most open over workers).",
            labels=["model", "deployment"],
        )
        for (model, dep), v in sorted(state["deployment_breaker"].items()):
            g.add_metric([model, dep], v)
        yield g
        yield _counter(
            f"{p}_deployment_breaker_transitions",
            "Circuit breaker state changes of the deployments of a model.",
            ["model", "deployment", "state"],
            state["deployment_breaker_transitions"],
        )
        hists = state["hists"]
        yield _histogram(
            f"{p}_request_duration_seconds",
            "Total request time seen by the gateway.",
            hists["total"],
            self.buckets,
        )
        yield _histogram(
            f"{p}_gateway_overhead_seconds",
            "Time spent in the gateway itself (routing, auth, bookkeeping), upstream excluded.",
            hists["overhead"],
            self.overhead_buckets,
        )
        yield _histogram(
            f"{p}_upstream_duration_seconds",
            "Time spent waiting for upstream models.",
            hists["upstream"],
            self.buckets,
        )
        yield _histogram(
            f"{p}_time_to_first_token_seconds",
            "Streaming: time to the first token.",
            hists["ttft"],
            self.buckets,
        )
        s = state["store"]
        if s:
            yield GaugeMetricFamily(
                f"{p}_trace_queue_depth", "Trace records waiting to be written.", value=s.get("queued", 0)
            )
            yield CounterMetricFamily(
                f"{p}_traces_written", "Trace records written.", value=s.get("written", 0)
            )
            yield CounterMetricFamily(
                f"{p}_traces_dropped",
                "Trace records dropped (queue full or closed).",
                value=s.get("dropped", 0) + s.get("errors", 0),
            )

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def snapshot(self) -> dict[str, Any]:
        """Plain-dict view of this process's counters (for tests and the dashboard)."""
        self._fold()
        with self._lock:
            items = list(self._series.items())
            return {
                "requests": {(m, a, str(st)): n for (m, a), ser in items for st, n in ser.requests.items()},
                "tokens": {(m, a): (ser.tokens_in, ser.tokens_out) for (m, a), ser in items},
                "cost_usd": {(m, a): ser.cost for (m, a), ser in items},
                "errors": dict(self._errors),
                "fallbacks": dict(self._fallbacks),
                "cache": dict(self._cache),
                "rejections": dict(self._rejections),
                "decisions": dict(self._decisions),
                "breaker": dict(self._breaker),
            }


def _counter(name: str, doc: str, labels: list[str], data: dict[Any, float]) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=labels)
    for k, v in sorted(data.items()):
        c.add_metric(list(k), v)
    return c


def _histogram(
    name: str, doc: str, data: dict[tuple, tuple[list[int], float, int]], bounds: Sequence[float]
) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc, labels=["model", "alias"])
    for k, (counts, total, count) in sorted(data.items()):
        buckets, acc = [], 0
        for b, c in zip(bounds, counts, strict=False):
            acc += c
            buckets.append((_fmt(b), float(acc)))
        buckets.append(("+Inf", float(count)))
        h.add_metric(list(k), buckets, total)
    return h
