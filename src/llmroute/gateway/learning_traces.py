"""What an outcome update of the gateway's online learning (`llmroute.gateway.learning`) reads
from its request's trace row: the columns (`_FIELDS`), one row (`_trace_fields`, SQLite or
Postgres) or several (`_trace_rows`), parsed as `Learning._outcome` reads them (`_fields`).

The seam: these functions run on the trace store's writer thread and know the store's tables
(`llmroute.gateway.store`) rather than the learner; the outcome side
(`llmroute.gateway.learning_outcomes`) calls them.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np


def _trace_rows(backend: Any, request_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`_trace_fields` of several requests (SQLite: one query per 500 ids), by request id."""
    if backend.kind != "sqlite":
        out = {rid: _trace_fields(backend, rid) for rid in dict.fromkeys(request_ids)}
        return {k: v for k, v in out.items() if v is not None}
    import orjson

    ids = list(dict.fromkeys(request_ids))
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ", ".join("?" * len(chunk))
        for rid, alias, model, status, cost, learner in backend.db.execute(
            f"SELECT request_id, alias, model, status, cost_usd, learner FROM traces WHERE request_id IN ({marks})",
            chunk,
        ):
            found[rid] = {
                "alias": alias,
                "model": model,
                "status": status,
                "cost_usd": cost,
                "learner": orjson.loads(learner) if learner else None,
            }
    return found


def encode_contexts(X: np.ndarray) -> list[str]:
    """The trace's form of each row of a decision batch's (B, D) contexts: the base64 of the
    row's little-endian float32 bytes. Exact for the float32 contexts the learner stores, and
    per request cheaper than the JSON list of D floats it replaces (no float formatting on the
    writer, no float parsing per outcome, ~half the bytes; benchmarks/online_gateway.py)."""
    X = np.ascontiguousarray(X, dtype="<f4")
    raw, step = X.tobytes(), 4 * X.shape[1]
    b64 = binascii.b2a_base64
    return [b64(raw[i : i + step], newline=False).decode("ascii") for i in range(0, len(raw), step)]


def decode_context(value: Any) -> np.ndarray | None:
    """A trace's context as a new float64 array: `encode_contexts`' string, or the JSON list of
    floats that traces written before it hold; None when `value` is neither."""
    if isinstance(value, str):
        try:
            raw = binascii.a2b_base64(value)
        except (binascii.Error, ValueError):
            return None
        if len(raw) % 4:
            return None
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if isinstance(value, list):
        try:
            return np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            return None
    return None


#: the trace columns an outcome update reads (`_trace_fields`)
_FIELDS = ("alias", "model", "status", "cost_usd", "learner")


def _fields(row: Sequence[Any]) -> dict[str, Any]:
    """A trace row's `_FIELDS` values as the dict `Learning._outcome` reads (the learner's JSON parsed)."""
    import orjson

    out = dict(zip(_FIELDS, row, strict=True))
    out["learner"] = orjson.loads(out["learner"]) if out["learner"] else None
    return out


def _trace_fields(backend: Any, request_id: str) -> dict[str, Any] | None:
    """What an outcome update reads from a trace row (on the store's writer thread): fewer
    columns and no JSON but the learner's than `TraceStore.get`."""
    if backend.kind == "sqlite":
        row = backend.db.execute(
            "SELECT alias, model, status, cost_usd, learner FROM traces WHERE request_id = ?", (request_id,)
        ).fetchone()
    else:
        row = backend._run(
            backend.conn.fetchrow(
                "SELECT alias, model, status, cost_usd, learner::text FROM llmroute_traces "
                "WHERE request_id = $1",
                request_id,
            )
        )
    return None if row is None else _fields(tuple(row))
