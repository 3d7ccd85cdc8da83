"""What an outcome update of the gateway's online learning (`llmroute.gateway.learning`) reads
from its request's trace row: the columns (`_FIELDS`), one row (`_trace_fields`, SQLite or
Postgres) or several (`_trace_rows`), parsed as `Learning._outcome` reads them (`_fields`).

The seam: these functions run on the trace store's writer thread and know the store's tables
(`llmroute.gateway.store`) rather than the learner; the outcome side
(`llmroute.gateway.learning_outcomes`) calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
