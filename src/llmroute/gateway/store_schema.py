"""The trace table's schema and rows, shared by the trace store's modules (`llmroute.gateway.store`).

Holds the columns (`TRACE_FIELDS`; `_ADDED`: those that stores written by an older version get
when opened), a record's normalization into a row (`normalize_record` for a dict,
`normalize_row` for values in `TRACE_FIELDS` order) and a stored row's back into a dict, the
JSON columns' encoding, `parse_time`, `StoreError`, the backend protocol (`_Backend`) with the
SQL helpers both backends share, and `_redact` (a URL without its password). The backends are
in `llmroute.gateway.store_sqlite` and `llmroute.gateway.store_postgres`, the writer thread in
`llmroute.gateway.trace_writer`, `open_store` in `llmroute.gateway.store`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson

# column name -> kind ("text", "real", "int", "json")
_COLUMNS: dict[str, str] = {
    "request_id": "text",
    "ts": "real",
    "key_id": "text",
    "alias": "text",
    "model": "text",
    "requested_model": "text",
    "status": "int",
    "error": "text",
    "reason": "text",
    "stream": "int",
    "candidates": "json",
    "fallbacks": "json",
    "overhead_ms": "real",
    "upstream_ms": "real",
    "total_ms": "real",
    "ttft_ms": "real",
    "tokens_in": "int",
    "tokens_out": "int",
    "cost_usd": "real",
    "prompt": "text",
    "response": "text",
    "outcome": "json",
    "extra": "json",
    # online learning (llmroute.gateway.learning); added to older stores when they are opened
    "propensity": "real",
    "explored": "int",
    "learner": "json",
}
#: columns added after the first release, with the SQL that adds them to an existing table
_ADDED = ("propensity", "explored", "learner")
TRACE_FIELDS: tuple[str, ...] = tuple(_COLUMNS)
_INDEX = {name: i for i, name in enumerate(_COLUMNS)}
_PROMPT, _RESPONSE, _EXTRA = _INDEX["prompt"], _INDEX["response"], _INDEX["extra"]
_LATENCY_KEYS = ("overhead_ms", "upstream_ms", "total_ms", "ttft_ms")


class StoreError(RuntimeError):
    """The trace store cannot be opened or used (bad URL, unreachable database, closed store)."""


def _dumps(v: Any) -> str | None:
    if v is None:
        return None
    return orjson.dumps(v, default=str, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def _loads(v: Any) -> Any:
    if v is None or not isinstance(v, str | bytes):
        return v
    try:
        return orjson.loads(v)
    except orjson.JSONDecodeError:
        return v


def parse_time(value: float | int | str | datetime | None, *, now: float | None = None) -> float | None:
    """A point in time as unix seconds.

    Accepts unix seconds, a `datetime` (naive means UTC), an ISO-8601 string, or a relative age
    like `"90s"`, `"15m"`, `"2h"`, `"7d"` (meaning that long before `now`).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            from datetime import UTC

            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    s = str(value).strip()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
    if len(s) >= 2 and s[-1] in units:
        try:
            n = float(s[:-1])
        except ValueError:
            n = None
        if n is not None:
            return (time.time() if now is None else now) - n * units[s[-1]]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return parse_time(datetime.fromisoformat(s.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(
            f"cannot read time {value!r}: give unix seconds, ISO-8601 (2026-01-31T12:00:00Z) "
            f"or an age like 30m, 2h, 7d"
        ) from None


_KNOWN = frozenset(_COLUMNS) | {"latency"}
_CONVERT: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
    (name, {"json": _dumps, "text": str, "int": int, "real": float}[kind]) for name, kind in _COLUMNS.items()
)


def normalize_record(record: dict[str, Any], *, store_prompts: bool, store_responses: bool) -> tuple:
    """The column tuple (in `TRACE_FIELDS` order) for one trace record dict."""
    get = record.get
    out: list[Any] = []
    append = out.append
    for name, conv in _CONVERT:
        v = get(name)
        append(None if v is None else conv(v))
    # the rare cases, fixed up by position
    if not out[0]:
        out[0] = os.urandom(16).hex()
    if out[1] is None:
        out[1] = time.time()
    if not store_prompts:
        out[_PROMPT] = None
    if not store_responses:
        out[_RESPONSE] = None
    lat = get("latency")
    if isinstance(lat, dict):
        for k in _LATENCY_KEYS:
            if get(k) is None and lat.get(k) is not None:
                out[_INDEX[k]] = float(lat[k])
    unknown = record.keys() - _KNOWN
    if unknown:
        extra = get("extra")
        merged = dict(extra) if isinstance(extra, dict) else ({} if extra is None else {"extra": extra})
        for k in sorted(unknown):
            merged[k] = record[k]
        out[_EXTRA] = _dumps(merged)
    return tuple(out)


_CONVS: tuple[Callable[[Any], Any], ...] = tuple(conv for _, conv in _CONVERT)
# the type each column's converter returns (JSON columns are always converted)
_TYPES: tuple[type | None, ...] = tuple(
    {"text": str, "int": int, "real": float, "json": None}[kind] for kind in _COLUMNS.values()
)


def normalize_row(values: Sequence[Any], *, store_prompts: bool, store_responses: bool) -> tuple:
    """The column tuple for trace values already in `TRACE_FIELDS` order (what `TraceStore.write_row`
    queues): the same tuple `normalize_record` gives for the dict of those fields. Values of the
    column's type pass as they are; others go through the same converters."""
    if len(values) != len(_CONVS):
        raise ValueError(f"a trace row needs {len(_CONVS)} values in TRACE_FIELDS order, got {len(values)}")
    out = list(values)
    for i, t in enumerate(_TYPES):
        v = out[i]
        if v is not None and type(v) is not t:
            out[i] = _CONVS[i](v)
    if not out[0]:
        out[0] = os.urandom(16).hex()
    if out[1] is None:
        out[1] = time.time()
    if not store_prompts:
        out[_PROMPT] = None
    if not store_responses:
        out[_RESPONSE] = None
    return tuple(out)


def _row_to_dict(row: Sequence[Any]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for (name, kind), v in zip(_COLUMNS.items(), row, strict=True):
        if kind == "json":
            v = _loads(v)
        elif (name == "stream" or name == "explored") and v is not None:
            v = bool(v)
        d[name] = v
    return d


# ------------------------------------------------------------------------------------------
# backends: synchronous, used only from the writer thread


class _Backend(Protocol):
    def insert(self, rows: list[tuple]) -> None: ...
    def add_spend(self, deltas: dict[tuple[str, str], float]) -> None: ...
    def load_spend(self, periods: Sequence[str]) -> dict[tuple[str, str], float]: ...
    def attach(self, request_id: str, outcome: dict[str, Any], owner: str | None = None) -> bool: ...
    def query(self, where: dict[str, Any], limit: int | None) -> list[dict[str, Any]]: ...
    def count(self) -> int: ...
    def prune(self, before: float) -> int: ...
    def prune_chunk(self, before: float | None, keep: int | None, limit: int) -> int: ...
    def close(self) -> None: ...


def _where_sql(where: dict[str, Any], ph: Callable[[int], str]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for key, v in where.items():
        if v is None:
            continue
        args.append(v)
        p = ph(len(args))
        if key == "since":
            clauses.append(f"ts >= {p}")
        elif key == "until":
            clauses.append(f"ts < {p}")
        else:
            clauses.append(f"{key} = {p}")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _merge_outcome(old: Any, new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old) if isinstance(old, dict) else ({} if old is None else {"previous": old})
    merged.update(new)
    return merged


def _redact(url: str) -> str:
    """The URL without a password (secrets never reach logs or errors)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
