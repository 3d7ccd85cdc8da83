"""Decision-trace store: every gateway request leaves one record, written off the hot path.

Interface for the gateway core (everything else is detail, in the modules listed at the end)::

    store = open_store(cfg.store.url, base_dir=cfg.base_dir,
                       store_prompts=cfg.trace.store_prompts,
                       store_responses=cfg.trace.store_responses,
                       batch_size=cfg.store.batch_size,
                       flush_interval_s=cfg.store.flush_interval_s,
                       retention_days=cfg.store.retention_days, max_rows=cfg.store.max_rows)
    store.write(record)                 # hot path: appends to a queue, never blocks, never raises
    store.write_row(values)             # the same for a tuple in TRACE_FIELDS order (the gateway's form)
    await store.aattach_feedback(rid, {"quality": 1.0}, owner=key_id)  # -> False: unknown rid / not key_id's
    await store.aget(rid) / await store.aquery(model="fake-weak", limit=20)
    await store.close()                 # at shutdown: drains the queue, nothing is lost

A background writer thread owns the database connection and inserts queued records in batches
(one transaction per batch). Every operation goes through that one ordered queue, so feedback
attached to a request id always lands after that request's record, and a read sees every record
written before it was asked for. Sync twins (`flush_sync`, `close_sync`, `query`, `get`,
`attach_feedback`) serve the CLI and tests; in an event loop use the `a*`/`flush`/`close`
coroutines.

URLs: `sqlite:///relative.db`, `sqlite:////abs/path.db`, a bare file path (SQLite, WAL mode),
`memory://` (SQLite in memory, lost on close), `postgresql://user:pw@host/db` (needs the optional
`asyncpg` package, imported only then). Relative SQLite paths resolve against `base_dir`.

Record fields (a dict; all optional except that a missing `request_id` is generated and a missing
`ts` is the write time). Unknown keys are kept in `extra`::

    request_id, ts (unix seconds), key_id, alias, model (chosen), requested_model, status (HTTP),
    error, reason, stream (bool), candidates (list of {model, quality, cost, ...}),
    fallbacks (list of {model, error, ...}), overhead_ms, upstream_ms, total_ms, ttft_ms,
    tokens_in, tokens_out, cost_usd, prompt, response, outcome (dict), extra (dict: guards, cache),
    propensity (the probability of the routed choice, where the alias learns online), explored
    (bool), learner (dict: the features an outcome update needs; `llmroute.gateway.learning`)

Stores created before a column existed get it (ALTER TABLE ... ADD COLUMN) when opened.

`latency={"overhead_ms":..,"upstream_ms":..,"total_ms":..}` is accepted as well as the flat keys.
`prompt`/`response` are dropped unless the store was opened with `store_prompts`/`store_responses`.

Key spend for budgets (see `llmroute.gateway.auth.BudgetManager`), retention and durability
(group commit, the kill -9 journal): `llmroute.gateway.trace_writer`.

This module holds `open_store`, `spend_ledger_path` and the URL forms; the rest of the store is
split by concern (every name is still importable from here):

- `llmroute.gateway.store_schema`: the columns, record normalization, `parse_time`, `StoreError`;
- `llmroute.gateway.trace_writer`: `TraceStore`, the writer thread, its journal and retention;
- `llmroute.gateway.store_sqlite`, `llmroute.gateway.store_postgres`: the two backends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmroute.gateway.store_postgres import _PostgresBackend as _PostgresBackend
from llmroute.gateway.store_schema import _ADDED as _ADDED
from llmroute.gateway.store_schema import _COLUMNS as _COLUMNS
from llmroute.gateway.store_schema import TRACE_FIELDS as TRACE_FIELDS
from llmroute.gateway.store_schema import StoreError as StoreError
from llmroute.gateway.store_schema import _Backend as _Backend
from llmroute.gateway.store_schema import _dumps as _dumps
from llmroute.gateway.store_schema import _loads as _loads
from llmroute.gateway.store_schema import _redact as _redact
from llmroute.gateway.store_schema import _row_to_dict as _row_to_dict
from llmroute.gateway.store_schema import normalize_record as normalize_record
from llmroute.gateway.store_schema import normalize_row as normalize_row
from llmroute.gateway.store_schema import parse_time as parse_time
from llmroute.gateway.store_sqlite import _SQLiteBackend as _SQLiteBackend
from llmroute.gateway.trace_writer import TraceStore as TraceStore

__all__ = [
    "TRACE_FIELDS",
    "StoreError",
    "TraceStore",
    "open_store",
    "parse_time",
    "spend_ledger_path",
]


def _resolve_url(url: str, base_dir: str | Path | None) -> tuple[str, str]:
    """(kind, target): kind is 'sqlite' or 'postgres'."""
    u = url.strip()
    if u in ("memory://", "memory:", ":memory:", "sqlite://:memory:", "sqlite:///:memory:"):
        return "sqlite", ":memory:"
    if u.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        return "postgres", u.replace("postgresql+asyncpg://", "postgresql://", 1)
    if u.startswith("sqlite:///"):
        path = u[len("sqlite:///") :]
    elif u.startswith("sqlite://"):
        path = u[len("sqlite://") :]
    elif "://" in u:
        raise StoreError(
            f"unsupported trace store URL scheme in {u.split('://')[0]!r}: use sqlite:///path.db, a file "
            f"path, memory://, or postgresql://user@host/db"
        )
    else:
        path = u
    if not path:
        raise StoreError(
            "empty SQLite path in the trace store URL; use e.g. sqlite:///llmroute-traces.sqlite"
        )
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return "sqlite", str(p)


def open_store(
    url: str = "sqlite:///llmroute-traces.sqlite",
    *,
    base_dir: str | Path | None = None,
    store_prompts: bool = False,
    store_responses: bool = False,
    batch_size: int = 256,
    flush_interval_s: float = 0.01,
    max_queue: int = 1_000_000,
    retention_days: float | None = None,
    max_rows: int | None = None,
    prune_interval_s: float = 600.0,
    journal: bool = True,
    commit_interval_s: float = 0.5,
) -> TraceStore:
    """Open (creating tables if needed) the trace store at `url` and start its writer thread.

    `retention_days` / `max_rows` (None: keep all) are enforced by the writer thread at start and
    every `prune_interval_s`. With `journal` (a SQLite file store) records are appended to a
    journal beside the database (`<db file>.journal/`) every `flush_interval_s` and committed to
    the database every `commit_interval_s` (or once `batch_size` wait); without one they are
    committed every `flush_interval_s`. Raises `StoreError` with the reason when the database
    cannot be opened.
    """
    kind, target = _resolve_url(url, base_dir)
    journal_dir = target + ".journal" if journal and kind == "sqlite" and target != ":memory:" else None
    factory: Callable[[], _Backend]
    if kind == "postgres":

        def factory() -> _Backend:
            return _PostgresBackend(target)

    else:

        def factory() -> _Backend:
            return _SQLiteBackend(target)

    return TraceStore(
        factory,
        url=_redact(url),
        store_prompts=store_prompts,
        store_responses=store_responses,
        batch_size=batch_size,
        flush_interval_s=flush_interval_s,
        max_queue=max_queue,
        retention_days=retention_days,
        max_rows=max_rows,
        prune_interval_s=prune_interval_s,
        journal_dir=journal_dir,
        commit_interval_s=commit_interval_s,
    )


def spend_ledger_path(url: str, ledger: str | None = None, base_dir: str | Path | None = None) -> str | None:
    """The budget ledger file for a trace store at `url` (`store.ledger` in the config).

    `ledger` given: that path ('off': None, spend stays in memory and the store); relative paths
    resolve against `base_dir`. Default: beside a SQLite store's file (`<db file>.ledger`),
    `llmroute-spend.ledger` in `base_dir` with Postgres, None with an in-memory store.
    """
    if ledger is not None:
        text = ledger.strip()
        if text.lower() in ("off", "none", "false", ""):
            return None
        p = Path(text).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return str(p)
    kind, target = _resolve_url(url, base_dir)
    if kind == "postgres":
        return str(Path(base_dir or ".") / "llmroute-spend.ledger")
    if target == ":memory:":
        return None
    return target + ".ledger"
