"""Prometheus metrics for the gateway, cheap on the hot path.

Interface for the gateway core::

    metrics = GatewayMetrics()                    # one per app; owns its own CollectorRegistry
    metrics.bind_store(store)                     # optional: export trace-queue depth / drops
    metrics.observe_request(model="fake-weak", alias="llmroute/auto", status=200,
                            overhead_s=0.0004, upstream_s=0.012, total_s=0.0124,
                            tokens_in=12, tokens_out=30, cost_usd=3.1e-5, fallbacks=0,
                            ttft_s=None, stream=False)
    metrics.observe_error(model, alias, kind="timeout")        # each failed upstream attempt
    metrics.observe_fallback(alias, from_model, to_model, reason="5xx")
    metrics.set_breaker(model, "open" | "half_open" | "closed")
    metrics.set_deployment_breaker(model, deployment, "open" | "half_open" | "closed")
    metrics.observe_cache(hit=True, kind="exact")
    metrics.observe_rejection(status=429, reason="budget", key_id="team-a")  # 401/403/429/4xx
    metrics.observe_decision(model="fake-weak", alias="llmroute/auto")  # POST /v1/route answered
    metrics.observe_sticky(alias, "held" | "new" | "broken_gain" | ...)  # sticky sessions
    metrics.observe_implicit(alias, "reask" | "regenerate" | "length" | "refusal" | "tool_error")
    metrics.observe_learning(alias, explored=False)  # a decision of an alias that learns online
    metrics.observe_learning_outcome(alias, "feedback", "applied" | "replaced" | "ignored")
    body, content_type = metrics.render()       # for GET /metrics

Only names from the config should be used as `model`/`alias` labels (never unvalidated client
input: unknown names would grow the series without bound); for a request rejected before a model
is known pass `model=""`.

Hot path: `observe_*` append one tuple to a deque (well under a microsecond); the tuples are
folded into plain counters and fixed-bucket histograms when the deque passes `fold_every` items
or at scrape time, and a custom collector exports them. No default (global) registry is touched.

Several worker processes (`llmroute serve --workers N`, which sets `LLMROUTE_SHARED_DIR` to a
private temporary folder): each worker writes its folded counters to `metrics-<pid>.json` there
(atomically, from a background thread every `publish_interval_s` while events arrive, and at
each scrape), and a scrape answered by any worker sums every worker's file with its own live
numbers. So /metrics counts all requests, at most `publish_interval_s` (0.25 s) behind for the
other workers; files of exited workers stay, so counters never go down. prometheus_client's own
multiprocess mode (PROMETHEUS_MULTIPROC_DIR) is not used: it only aggregates its own mmap-backed
metric objects (not custom collectors like this one) and would put about a dozen locked mmap
writes on every request's path instead of one deque append. Collectors other code registers on
`registry` (e.g. the response cache's) still report the answering worker only.

The parts: this module keeps `GatewayMetrics`'s construction, the hot path (`observe_*`,
`set_*breaker`) and the folding of its events (`_fold`); the export at scrape time (`_state`,
`collect`, `render`, `snapshot`) is in `llmroute.gateway.metrics_export`, the several worker
processes' files (`publish`, `close`, the merge) in `llmroute.gateway.metrics_shared`. Both are
base classes of `GatewayMetrics` (their methods are its own; nothing on a request's path moved);
the names moved are re-exported here.

Series (all prefixed `llmroute_`)::

    requests_total{model,alias,status}             tokens_total{model,alias,direction=in|out}
    cost_usd_total{model,alias}                    errors_total{model,alias,kind}
    fallbacks_total{alias,from_model,to_model,reason}   breaker_state{model} (0 closed, 1 half-open, 2 open)
    breaker_transitions_total{model,state}          cache_total{kind,result=hit|miss}
    deployment_breaker_state{model,deployment}     deployment_breaker_transitions_total{model,deployment,state}
    rejections_total{status,reason,key_id}          stream_requests_total{model,alias}
    route_decisions_total{model,alias}              (POST /v1/route: decisions without a call)
    cascade_steps_total{alias,model,result}         cascade_requests_total{alias,stop}
    sticky_decisions_total{alias,result}            implicit_outcomes_total{alias,source}
    learning_decisions_total{alias,explored}        learning_outcomes_total{alias,source,result}
    request_duration_seconds{model,alias}           gateway_overhead_seconds{model,alias}
    upstream_duration_seconds{model,alias}          time_to_first_token_seconds{model,alias}
    trace_queue_depth, traces_written_total, traces_dropped_total   (with bind_store)
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from llmroute.gateway.ledger import shared_dir_from_env
from llmroute.gateway.metrics_export import ExportMixin
from llmroute.gateway.metrics_export import _counter as _counter
from llmroute.gateway.metrics_export import _histogram as _histogram
from llmroute.gateway.metrics_shared import _HISTS as _HISTS
from llmroute.gateway.metrics_shared import _PLAIN as _PLAIN
from llmroute.gateway.metrics_shared import SharedMixin
from llmroute.gateway.metrics_shared import _decode as _decode
from llmroute.gateway.metrics_shared import _encode as _encode
from llmroute.gateway.metrics_shared import _merge as _merge

__all__ = ["DEFAULT_BUCKETS", "OVERHEAD_BUCKETS", "GatewayMetrics"]

log = logging.getLogger("llmroute.gateway.metrics")

# seconds; upstream / total latency
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
# seconds; the gateway's own overhead is sub-millisecond to a few ms
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)

_BREAKER = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}

_REQ, _ERR, _FB, _CACHE, _REJ, _DEC, _CAS, _CASR, _STICKY, _IMPL = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
_LEARN, _LOUT = 10, 11


class _Hist:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0


class _Series:
    """Everything recorded for one (model, alias) pair."""

    __slots__ = (
        "cost",
        "overhead",
        "requests",
        "streams",
        "tokens_in",
        "tokens_out",
        "total",
        "ttft",
        "upstream",
    )

    def __init__(self, bounds: Sequence[float], overhead_bounds: Sequence[float]) -> None:
        self.requests: dict[Any, int] = {}
        self.streams = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost = 0.0
        self.total = _Hist(bounds)
        self.overhead = _Hist(overhead_bounds)
        self.upstream = _Hist(bounds)
        self.ttft = _Hist(bounds)


class GatewayMetrics(ExportMixin, SharedMixin):
    """Gateway counters and histograms exported through a private `CollectorRegistry`.

    `shared_dir` (default: `LLMROUTE_SHARED_DIR`, set by `llmroute serve --workers N>1`) turns on
    the multi-worker mode of the module docstring; `close()` stops its publisher thread.
    """

    def __init__(
        self,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        overhead_buckets: Sequence[float] = OVERHEAD_BUCKETS,
        fold_every: int = 4096,
        prefix: str = "llmroute",
        shared_dir: str | Path | None = None,
        publish_interval_s: float = 0.25,
    ) -> None:
        self.buckets = tuple(sorted(buckets))
        self.overhead_buckets = tuple(sorted(overhead_buckets))
        self.fold_every = int(fold_every)
        self.prefix = prefix
        self._pending: collections.deque[tuple] = collections.deque()
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._fallbacks: dict[tuple[str, str, str, str], int] = {}
        self._cache: dict[tuple[str, str], int] = {}
        self._rejections: dict[tuple[str, str, str], int] = {}
        self._decisions: dict[tuple[str, str], int] = {}
        self._cascade_steps: dict[tuple[str, str, str], int] = {}
        self._cascade_requests: dict[tuple[str, str], int] = {}
        self._sticky: dict[tuple[str, str], int] = {}
        self._implicit: dict[tuple[str, str], int] = {}
        self._learning: dict[tuple[str, str], int] = {}
        self._learning_outcomes: dict[tuple[str, str, str], int] = {}
        self._breaker: dict[str, float] = {}
        self._breaker_transitions: dict[tuple[str, str], int] = {}
        self._dep_breaker: dict[tuple[str, str], float] = {}
        self._dep_breaker_transitions: dict[tuple[str, str, str], int] = {}
        self._store: Any = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]
        folder = shared_dir if shared_dir is not None else shared_dir_from_env()
        self.shared_dir: Path | None = Path(folder) if folder else None
        self.publish_interval_s = float(publish_interval_s)
        self._pid = os.getpid()
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.shared_dir is not None:
            self._thread = threading.Thread(
                target=self._publisher, name="llmroute-metrics-publisher", daemon=True
            )
            self._thread.start()

    # ---- hot path ---------------------------------------------------------------------------

    def observe_request(
        self,
        *,
        model: str,
        alias: str | None = None,
        status: int = 200,
        overhead_s: float | None = None,
        upstream_s: float | None = None,
        total_s: float | None = None,
        tokens_in: int | None = 0,
        tokens_out: int | None = 0,
        cost_usd: float | None = 0.0,
        fallbacks: int = 0,
        ttft_s: float | None = None,
        stream: bool = False,
    ) -> None:
        """Record one finished client request (whatever its outcome)."""
        self._pending.append(
            (
                _REQ,
                model,
                alias or "",
                status,
                overhead_s,
                upstream_s,
                total_s,
                tokens_in,
                tokens_out,
                cost_usd,
                ttft_s,
                stream,
            )
        )
        if len(self._pending) >= self.fold_every:
            self._fold()

    def observe_error(self, model: str, alias: str | None = None, kind: str = "error") -> None:
        """Record one failed upstream attempt (kind: timeout, 5xx, 429, connect, invalid, ...)."""
        self._pending.append((_ERR, model, alias or "", kind))

    def observe_fallback(
        self, alias: str | None, from_model: str, to_model: str, reason: str = "error"
    ) -> None:
        """Record a fallback from one candidate model to the next."""
        self._pending.append((_FB, alias or "", from_model, to_model, reason))

    def observe_cache(self, hit: bool, kind: str = "exact") -> None:
        """Record a response-cache lookup."""
        self._pending.append((_CACHE, kind, "hit" if hit else "miss"))

    def observe_rejection(self, status: int, reason: str, key_id: str | None = None) -> None:
        """Record a request refused before any upstream call (auth, permission, rate, budget, bad input)."""
        self._pending.append((_REJ, str(status), reason, key_id or ""))

    def observe_decision(self, model: str, alias: str | None = None) -> None:
        """Record one routing decision answered by `POST /v1/route` (no upstream call follows;
        chat and messages requests are counted by `observe_request`)."""
        self._pending.append((_DEC, model, alias or ""))

    def observe_cascade(self, alias: str, steps: Sequence[tuple[str, str]], stop: str) -> None:
        """Record one request a cascade answered: its steps as (model, result) pairs (result:
        passed, below_threshold, unverified, or the kind of failure such as stalled) and why it
        stopped."""
        for model, result in steps:
            self._pending.append((_CAS, alias, model, result))
        self._pending.append((_CASR, alias, stop))

    def observe_sticky(self, alias: str, result: str) -> None:
        """Record one routed request of a sticky alias: `held`, `new` (no earlier turn) or
        `broken_<reason>` (gain, not_allowed, context_window, breaker_open, constraint, not_candidate)."""
        self._pending.append((_STICKY, alias, result))

    def observe_implicit(self, alias: str, source: str) -> None:
        """Record one implicit outcome (reask, regenerate, length, refusal, tool_error)."""
        self._pending.append((_IMPL, alias, source))

    def observe_learning(self, alias: str, explored: bool, n: int = 1) -> None:
        """Record `n` decisions of an alias that learns online (explored: the learner deviated
        from its greedy choice); the explored share is explored="true" over all. A routing
        micro-batch records its decisions with one call per value of `explored`."""
        self._pending.append((_LEARN, alias, "true" if explored else "false", n))

    def observe_learning_outcome(self, alias: str, source: str, result: str) -> None:
        """Record one outcome given to an alias's learner: `source` (feedback or the implicit
        signal) and `result` (applied, replaced: an earlier one undone, ignored: a repeat)."""
        self._pending.append((_LOUT, alias, source, result))

    def set_breaker(self, model: str, state: str) -> None:
        """Set a backend's circuit-breaker state: 'closed', 'half_open' or 'open'."""
        value = _BREAKER.get(state)
        if value is None:
            raise ValueError(f"breaker state must be one of closed, half_open, open; got {state!r}")
        with self._lock:
            if self._breaker.get(model) != value:
                k = (model, "half_open" if value == 1.0 else state)
                self._breaker_transitions[k] = self._breaker_transitions.get(k, 0) + 1
                self._dirty = True
            self._breaker[model] = value

    def set_deployment_breaker(self, model: str, deployment: str, state: str) -> None:
        """Set the circuit-breaker state of one deployment of `model` (`models[].deployments`)."""
        value = _BREAKER.get(state)
        if value is None:
            raise ValueError(f"breaker state must be one of closed, half_open, open; got {state!r}")
        with self._lock:
            if self._dep_breaker.get((model, deployment), 0.0) != value:
                k = (model, deployment, state)
                self._dep_breaker_transitions[k] = self._dep_breaker_transitions.get(k, 0) + 1
                self._dirty = True
            self._dep_breaker[(model, deployment)] = value

    def bind_store(self, store: Any) -> None:
        """Export a trace store's queue depth and written/dropped counters (`store.stats()`)."""
        self._store = store

    # ---- folding ------------------------------------------------------------------------------

    def _fold(self) -> None:
        with self._lock:
            pop = self._pending.popleft
            series = self._series
            bisect_left = bisect.bisect_left
            while True:
                try:
                    ev = pop()
                except IndexError:
                    break
                kind = ev[0]
                if kind == _REQ:
                    _, model, alias, status, ov, up, tot, tin, tout, cost, ttft, stream = ev
                    ser = series.get((model, alias))
                    if ser is None:
                        ser = series[(model, alias)] = _Series(self.buckets, self.overhead_buckets)
                    req = ser.requests
                    req[status] = req.get(status, 0) + 1
                    if stream:
                        ser.streams += 1
                    if tin:
                        ser.tokens_in += tin
                    if tout:
                        ser.tokens_out += tout
                    if cost:
                        ser.cost += cost
                    if tot is not None:
                        h = ser.total
                        h.counts[bisect_left(h.bounds, tot)] += 1
                        h.sum += tot
                        h.count += 1
                    if ov is not None:
                        h = ser.overhead
                        h.counts[bisect_left(h.bounds, ov)] += 1
                        h.sum += ov
                        h.count += 1
                    if up is not None:
                        h = ser.upstream
                        h.counts[bisect_left(h.bounds, up)] += 1
                        h.sum += up
                        h.count += 1
                    if ttft is not None:
                        h = ser.ttft
                        h.counts[bisect_left(h.bounds, ttft)] += 1
                        h.sum += ttft
                        h.count += 1
                elif kind == _ERR:
                    k = ev[1:4]
                    self._errors[k] = self._errors.get(k, 0) + 1
                elif kind == _FB:
                    k = ev[1:5]
                    self._fallbacks[k] = self._fallbacks.get(k, 0) + 1
                elif kind == _CACHE:
                    k = ev[1:3]
                    self._cache[k] = self._cache.get(k, 0) + 1
                elif kind == _REJ:
                    k = ev[1:4]
                    self._rejections[k] = self._rejections.get(k, 0) + 1
                elif kind == _DEC:
                    k = ev[1:3]
                    self._decisions[k] = self._decisions.get(k, 0) + 1
                elif kind == _CAS:
                    k = ev[1:4]
                    self._cascade_steps[k] = self._cascade_steps.get(k, 0) + 1
                elif kind == _CASR:
                    k = ev[1:3]
                    self._cascade_requests[k] = self._cascade_requests.get(k, 0) + 1
                elif kind == _STICKY:
                    k = ev[1:3]
                    self._sticky[k] = self._sticky.get(k, 0) + 1
                elif kind == _IMPL:
                    k = ev[1:3]
                    self._implicit[k] = self._implicit.get(k, 0) + 1
                elif kind == _LEARN:
                    k = ev[1:3]
                    self._learning[k] = self._learning.get(k, 0) + ev[3]
                elif kind == _LOUT:
                    k = ev[1:4]
                    self._learning_outcomes[k] = self._learning_outcomes.get(k, 0) + 1
