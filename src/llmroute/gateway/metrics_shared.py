"""Several worker processes (`llmroute serve --workers N`) for the gateway's metrics
(`llmroute.gateway.metrics`, see its docstring): each worker's folded counters written to its
`metrics-<pid>.json` in the shared folder (`publish`, `_write_snapshot`, the publisher thread,
`close`), the other workers' files read back (`_read_others`) and summed with this worker's own
(`_merge`); the files' JSON form (`_encode`, `_decode`) of the plain-dict state (`_PLAIN`,
`_HISTS`).

The seam: files and threads, never on a request's path; a scrape (`collect`,
`llmroute.gateway.metrics_export`) and the publisher thread call it. `SharedMixin` is a base class
of `GatewayMetrics` (not used alone): the methods are the metrics object's own. It logs as
llmroute.gateway.metrics.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["SharedMixin"]

log = logging.getLogger("llmroute.gateway.metrics")


class SharedMixin:
    """`GatewayMetrics.publish`, `close` and the shared folder's files; the attributes below are
    the `GatewayMetrics`'s (`GatewayMetrics.__init__`), and so is `_state`
    (`llmroute.gateway.metrics_export`)."""

    shared_dir: Path | None
    publish_interval_s: float
    _pid: int
    _pending: collections.deque[tuple]
    _dirty: bool
    _stop: threading.Event
    _thread: threading.Thread | None

    def publish(self) -> None:
        """Write this process's counters to its snapshot file in the shared folder (no-op without one).

        A background thread calls this every `publish_interval_s` while events arrive; a scrape
        calls it too. Other workers' numbers are read from their files at scrape time.
        """
        if self.shared_dir is not None:
            self._write_snapshot(self._state())

    def _write_snapshot(self, state: dict[str, Any]) -> None:
        assert self.shared_dir is not None
        data = orjson.dumps(_encode(state))
        path = self.shared_dir / f"metrics-{self._pid}.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:  # pragma: no cover - a full or removed folder; the scrape still answers
            log.warning("cannot publish metrics to %s: %s", path, e)

    def _read_others(self) -> list[dict[str, Any]]:
        assert self.shared_dir is not None
        own = f"metrics-{self._pid}.json"
        out: list[dict[str, Any]] = []
        try:
            paths = sorted(self.shared_dir.glob("metrics-*.json"))
        except OSError:  # pragma: no cover
            return out
        for path in paths:
            if path.name == own:
                continue
            try:
                out.append(_decode(orjson.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipping unreadable metrics snapshot %s: %s", path.name, e)
        return out

    def _publisher(self) -> None:
        while not self._stop.wait(self.publish_interval_s):
            if self._pending or self._dirty:
                self._dirty = False
                try:
                    self.publish()
                except Exception as e:  # pragma: no cover - keep publishing
                    log.warning("metrics publisher: %s: %s", type(e).__name__, e)

    def close(self) -> None:
        """Stop the publisher thread after a last publish (multi-worker mode; otherwise a no-op)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None
            self.publish()


_HISTS = ("total", "overhead", "upstream", "ttft")
_PLAIN = (
    "requests",
    "streams",
    "tokens",
    "cost",
    "errors",
    "fallbacks",
    "cache",
    "rejections",
    "decisions",
    "cascade_steps",
    "cascade_requests",
    "sticky",
    "implicit",
    "learning",
    "learning_outcomes",
    "breaker",
    "breaker_transitions",
    "deployment_breaker",
    "deployment_breaker_transitions",
)


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able form of `GatewayMetrics._state()` (label tuples become lists)."""
    out: dict[str, Any] = {k: [[*key, v] for key, v in state[k].items()] for k in _PLAIN}
    out["hists"] = {
        n: [[list(key), c, s, cnt] for key, (c, s, cnt) in per.items()] for n, per in state["hists"].items()
    }
    out["store"] = state["store"]
    return out


def _decode(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: {tuple(row[:-1]): row[-1] for row in data.get(k, ())} for k in _PLAIN}
    out["hists"] = {
        n: {tuple(key): (list(c), float(s), int(cnt)) for key, c, s, cnt in data["hists"].get(n, [])}
        for n in _HISTS
    }
    out["store"] = data.get("store")
    return out


def _merge(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters and histograms of several processes; breaker state: the most open."""
    out: dict[str, Any] = {k: {} for k in _PLAIN}
    out["hists"] = {n: {} for n in _HISTS}
    store: dict[str, float] | None = None
    for st in states:
        for k in _PLAIN:
            acc = out[k]
            if k in ("breaker", "deployment_breaker"):
                for key, v in st[k].items():
                    acc[key] = max(acc.get(key, 0.0), v)
            else:
                for key, v in st[k].items():
                    acc[key] = acc.get(key, 0) + v
        for n in _HISTS:
            acc = out["hists"][n]
            for key, (c, s, cnt) in st["hists"][n].items():
                old = acc.get(key)
                if old is None:
                    acc[key] = (list(c), s, cnt)
                else:
                    acc[key] = ([a + b for a, b in zip(old[0], c, strict=True)], old[1] + s, old[2] + cnt)
        if st.get("store"):
            store = store or {}
            for k2, v2 in st["store"].items():
                store[k2] = store.get(k2, 0) + v2
    out["store"] = store
    return out
