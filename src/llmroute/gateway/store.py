"""Decision-trace store: every gateway request leaves one record, written off the hot path.

Interface for the gateway core (everything else in this module is detail)::

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

Key spend for budgets (see `llmroute.gateway.auth.BudgetManager`) is persisted here too:
`add_spend(key_id, period, usd)` (queued like a record) and `load_spend(periods)`.
`prune(before)` deletes old traces (`llmroute traces prune --older-than 30d`).

Retention: with `retention_days` and/or `max_rows` the writer thread deletes traces older than
that many days and all but the newest `max_rows`, at start and then every `prune_interval_s`
(in chunks of `_PRUNE_CHUNK` rows, between batches: never on the request path). Key spend is kept.

Durability (group commit): at least every `flush_interval_s` (default 10 ms) the writer takes
everything queued and, for a SQLite file store, appends it to this process's journal
(`<db file>.journal/<pid>-<random>.jsonl`, one write() for the whole group: once it returns, a kill
-9 of the process keeps it), then commits the records to the database every `commit_interval_s`
(0.5 s) or once `batch_size` wait, and empties the journal. A store that opens the database
stores the journals of processes that are gone (a journal's writer holds an flock on it while it
lives) before anything else. Without a journal (Postgres, `memory://`, `journal=False`) the writer
commits every `flush_interval_s`. Either way a kill -9 loses at most the traces queued in the
last `flush_interval_s` (the responses acknowledged in that window); `close`/`flush` lose nothing.
(SQLite runs in WAL mode with synchronous=NORMAL; power loss can also lose the last commits and
journal writes.) A 10 ms commit of a few dozen rows costs ~15-20 us of writer CPU more per record
than a 0.5 s one (random request ids scatter index pages); the journal append costs ~1 us. Budget
spend does not depend on this window: it is in the budget ledger before the response goes out
(`llmroute.gateway.ledger`).
If the database is unreachable the queue grows up
to `max_queue` records, then new records are dropped and counted (`stats()["dropped"]`, exported
as `llmroute_traces_dropped_total`); the request path never waits for the database.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = [
    "TRACE_FIELDS",
    "StoreError",
    "TraceStore",
    "open_store",
    "parse_time",
    "spend_ledger_path",
]

log = logging.getLogger("llmroute.gateway.store")

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
_PRUNE_CHUNK = 10_000  # rows per DELETE when enforcing retention (keeps each write transaction short)
_MULTI = 64  # rows per multi-row INSERT of the SQLite backend (x 23 columns: well under SQLite's 32,766 parameters)


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


class _SQLiteBackend:
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        if path != ":memory:":
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("SQLite trace store %s is not in WAL mode (%s)", path, mode)
            self.db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(
            f"{n} {'TEXT PRIMARY KEY' if n == 'request_id' else {'text': 'TEXT', 'json': 'TEXT', 'real': 'REAL', 'int': 'INTEGER'}[k]}"
            for n, k in _COLUMNS.items()
        )
        self.db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS traces ({cols});
            CREATE INDEX IF NOT EXISTS traces_ts ON traces (ts);
            CREATE INDEX IF NOT EXISTS traces_model_ts ON traces (model, ts);
            CREATE INDEX IF NOT EXISTS traces_alias_ts ON traces (alias, ts);
            CREATE INDEX IF NOT EXISTS traces_key_ts ON traces (key_id, ts);
            -- requests with feedback, covering what the dashboard's quality page reads (~4x faster
            -- than looking up each row; only rows with an outcome are in it)
            DROP INDEX IF EXISTS traces_feedback_ts;
            CREATE INDEX IF NOT EXISTS traces_feedback ON traces (ts, model, outcome, candidates)
                WHERE outcome IS NOT NULL;
            CREATE TABLE IF NOT EXISTS key_spend (
                key_id TEXT NOT NULL, period TEXT NOT NULL, spent_usd REAL NOT NULL,
                PRIMARY KEY (key_id, period));
            """
        )
        have = {r[1] for r in self.db.execute("PRAGMA table_info(traces)")}
        sql_kind = {"text": "TEXT", "json": "TEXT", "real": "REAL", "int": "INTEGER"}
        for n in _ADDED:  # migrate a store written by an older version
            if n not in have:
                try:
                    self.db.execute(f"ALTER TABLE traces ADD COLUMN {n} {sql_kind[_COLUMNS[n]]}")
                except sqlite3.OperationalError as e:  # another process added it meanwhile
                    if "duplicate column" not in str(e):
                        raise
        names = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        updates = ", ".join(f"{n} = excluded.{n}" for n in _COLUMNS if n not in ("request_id", "outcome"))
        self._insert = (
            f"INSERT INTO traces ({names}) VALUES ({marks}) ON CONFLICT(request_id) DO UPDATE SET "
            f"{updates}, outcome = COALESCE(excluded.outcome, traces.outcome)"
        )

        # the same upsert for _MULTI rows at once: one statement step per chunk instead of one per row
        # (~25 % less CPU per record, and the writer thread gives up and retakes the GIL once per chunk,
        # not once per row, so it interrupts the event loop less)
        # (an older SQLite allows only 999 parameters: fewer rows per statement then)
        self._multi = min(_MULTI, self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(_COLUMNS))
        one = f"({marks})"
        self._insert_sized: dict[int, str] = {}
        self._insert_multi = self._insert.replace(
            f"VALUES ({marks})", "VALUES " + ", ".join([one] * self._multi), 1
        )

    def _insert_n(self, n: int) -> str:
        """The upsert of `n` rows in one statement (n a power of two up to `_multi`), cached."""
        sql = self._insert_sized.get(n)
        if sql is None:
            one = "(" + ", ".join("?" for _ in _COLUMNS) + ")"
            sql = self._insert_sized[n] = self._insert.replace(
                f"VALUES {one}", "VALUES " + ", ".join([one] * n), 1
            )
        return sql

    def insert(self, rows: list[tuple]) -> None:
        # one statement per power-of-two chunk (64, 32, ..., 1 rows): a 10 ms group commit of a few
        # dozen rows takes a handful of statement steps, not one per row
        n, k, step = len(rows), 0, self._multi
        with self._tx():
            while k < n:
                size = min(step, 1 << ((n - k).bit_length() - 1))
                if size == 1:
                    self.db.execute(self._insert, rows[k])
                else:
                    sql = self._insert_multi if size == step else self._insert_n(size)
                    self.db.execute(sql, list(itertools.chain.from_iterable(rows[k : k + size])))
                k += size

    @contextlib.contextmanager
    def _tx(self):  # type: ignore[no-untyped-def]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def add_spend(self, deltas: dict[tuple[str, str], float]) -> None:
        with self._tx():
            self.db.executemany(
                "INSERT INTO key_spend (key_id, period, spent_usd) VALUES (?, ?, ?) "
                "ON CONFLICT(key_id, period) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd",
                [(k, p, v) for (k, p), v in deltas.items()],
            )

    def load_spend(self, periods: Sequence[str]) -> dict[tuple[str, str], float]:
        if not periods:
            return {}
        marks = ", ".join("?" for _ in periods)
        rows = self.db.execute(
            f"SELECT key_id, period, spent_usd FROM key_spend WHERE period IN ({marks})", list(periods)
        ).fetchall()
        return {(k, p): float(v) for k, p, v in rows}

    def attach(self, request_id: str, outcome: dict[str, Any], owner: str | None = None) -> bool:
        row = self.db.execute(
            "SELECT outcome, key_id FROM traces WHERE request_id = ?", (request_id,)
        ).fetchone()
        if row is None or (owner is not None and row[1] != owner):
            return False
        merged = _merge_outcome(_loads(row[0]), outcome)
        self.db.execute("UPDATE traces SET outcome = ? WHERE request_id = ?", (_dumps(merged), request_id))
        return True

    def query(self, where: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
        sql, args = _where_sql(where, lambda i: "?")
        q = f"SELECT {', '.join(_COLUMNS)} FROM traces{sql} ORDER BY ts DESC"
        if limit is not None:
            q += " LIMIT ?"
            args.append(int(limit))
        return [_row_to_dict(r) for r in self.db.execute(q, args).fetchall()]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM traces").fetchone()[0])

    def prune(self, before: float) -> int:
        return int(self.db.execute("DELETE FROM traces WHERE ts < ?", (before,)).rowcount)

    def prune_chunk(self, before: float | None, keep: int | None, limit: int) -> int:
        """Delete at most `limit` traces (oldest first) older than `before` or beyond the newest `keep`."""
        cutoff, op = before, "<"
        if keep is not None:
            row = self.db.execute(
                "SELECT ts FROM traces ORDER BY ts DESC LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
            if row is not None and (cutoff is None or row[0] >= cutoff):
                cutoff, op = row[0], "<="  # the newest trace beyond `keep`: it and all older ones go
        if cutoff is None:
            return 0
        return int(
            self.db.execute(
                f"DELETE FROM traces WHERE rowid IN (SELECT rowid FROM traces WHERE ts {op} ? ORDER BY ts LIMIT ?)",
                (cutoff, limit),
            ).rowcount
        )

    def close(self) -> None:
        self.db.close()


class _PostgresBackend:
    """asyncpg driven from the writer thread's private event loop (asyncpg is imported lazily)."""

    kind = "postgres"

    def __init__(self, url: str) -> None:
        try:
            import asyncpg  # type: ignore[import-not-found]
        except ImportError:
            raise StoreError(
                "a postgresql:// trace store needs asyncpg: pip install 'llmroute[postgres]'"
            ) from None
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(url))
        pg = {"text": "TEXT", "json": "JSONB", "real": "DOUBLE PRECISION", "int": "BIGINT"}
        cols = ", ".join(
            f"{n} {'TEXT PRIMARY KEY' if n == 'request_id' else pg[k]}" for n, k in _COLUMNS.items()
        )
        self._run(
            self.conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS llmroute_traces ({cols});
                CREATE INDEX IF NOT EXISTS llmroute_traces_ts ON llmroute_traces (ts);
                CREATE INDEX IF NOT EXISTS llmroute_traces_model_ts ON llmroute_traces (model, ts);
                CREATE INDEX IF NOT EXISTS llmroute_traces_alias_ts ON llmroute_traces (alias, ts);
                CREATE INDEX IF NOT EXISTS llmroute_traces_key_ts ON llmroute_traces (key_id, ts);
                CREATE TABLE IF NOT EXISTS llmroute_key_spend (
                    key_id TEXT NOT NULL, period TEXT NOT NULL, spent_usd DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (key_id, period));
                """
            )
        )
        for n in _ADDED:  # migrate a store written by an older version
            self._run(
                self.conn.execute(
                    f"ALTER TABLE llmroute_traces ADD COLUMN IF NOT EXISTS {n} {pg[_COLUMNS[n]]}"
                )
            )
        names = ", ".join(_COLUMNS)
        marks = ", ".join(
            f"${i}::jsonb" if k == "json" else f"${i}" for i, k in enumerate(_COLUMNS.values(), start=1)
        )
        updates = ", ".join(f"{n} = excluded.{n}" for n in _COLUMNS if n not in ("request_id", "outcome"))
        self._insert = (
            f"INSERT INTO llmroute_traces ({names}) VALUES ({marks}) ON CONFLICT (request_id) DO UPDATE SET "
            f"{updates}, outcome = COALESCE(excluded.outcome, llmroute_traces.outcome)"
        )
        self._select = ", ".join(f"{n}::text" if k == "json" else n for n, k in _COLUMNS.items())

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def insert(self, rows: list[tuple]) -> None:
        async def go() -> None:
            async with self.conn.transaction():
                await self.conn.executemany(self._insert, rows)

        self._run(go())

    def add_spend(self, deltas: dict[tuple[str, str], float]) -> None:
        self._run(
            self.conn.executemany(
                "INSERT INTO llmroute_key_spend (key_id, period, spent_usd) VALUES ($1, $2, $3) "
                "ON CONFLICT (key_id, period) DO UPDATE SET "
                "spent_usd = llmroute_key_spend.spent_usd + excluded.spent_usd",
                [(k, p, v) for (k, p), v in deltas.items()],
            )
        )

    def load_spend(self, periods: Sequence[str]) -> dict[tuple[str, str], float]:
        rows = self._run(
            self.conn.fetch(
                "SELECT key_id, period, spent_usd FROM llmroute_key_spend WHERE period = ANY($1::text[])",
                list(periods),
            )
        )
        return {(r[0], r[1]): float(r[2]) for r in rows}

    def attach(self, request_id: str, outcome: dict[str, Any], owner: str | None = None) -> bool:
        row = self._run(
            self.conn.fetchrow(
                "SELECT outcome::text, key_id FROM llmroute_traces WHERE request_id = $1", request_id
            )
        )
        if row is None or (owner is not None and row[1] != owner):
            return False
        merged = _merge_outcome(_loads(row[0]), outcome)
        self._run(
            self.conn.execute(
                "UPDATE llmroute_traces SET outcome = $1::jsonb WHERE request_id = $2",
                _dumps(merged),
                request_id,
            )
        )
        return True

    def query(self, where: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
        sql, args = _where_sql(where, lambda i: f"${i}")
        q = f"SELECT {self._select} FROM llmroute_traces{sql} ORDER BY ts DESC"
        if limit is not None:
            args.append(int(limit))
            q += f" LIMIT ${len(args)}"
        return [_row_to_dict(tuple(r)) for r in self._run(self.conn.fetch(q, *args))]

    def count(self) -> int:
        return int(self._run(self.conn.fetchval("SELECT COUNT(*) FROM llmroute_traces")))

    def prune(self, before: float) -> int:
        status = self._run(self.conn.execute("DELETE FROM llmroute_traces WHERE ts < $1", before))
        return int(str(status).split()[-1])

    def prune_chunk(self, before: float | None, keep: int | None, limit: int) -> int:
        cutoff, op = before, "<"
        if keep is not None:
            ts = self._run(
                self.conn.fetchval("SELECT ts FROM llmroute_traces ORDER BY ts DESC LIMIT 1 OFFSET $1", keep)
            )
            if ts is not None and (cutoff is None or ts >= cutoff):
                cutoff, op = ts, "<="
        if cutoff is None:
            return 0
        status = self._run(
            self.conn.execute(
                f"DELETE FROM llmroute_traces WHERE ctid IN (SELECT ctid FROM llmroute_traces "
                f"WHERE ts {op} $1 ORDER BY ts LIMIT $2)",
                cutoff,
                limit,
            )
        )
        return int(str(status).split()[-1])

    def close(self) -> None:
        try:
            self._run(self.conn.close())
        finally:
            self.loop.close()


# ------------------------------------------------------------------------------------------


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[_Backend], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


def _run_job(job: _Job, backend: _Backend) -> None:
    """Run `job.fn(backend)` and hand its result (or exception) to `job.future`.

    The job runs even when its caller cancelled the future meanwhile (an awaiting task cancelled,
    e.g. by a client disconnect: `asyncio.wrap_future` cancels the future it wraps), since it may be
    a write the caller queued; its result is then dropped. Marking the future running first means a
    cancel can no longer land between the job and its result (setting a cancelled future raised
    `InvalidStateError` on the writer thread, which ended it)."""
    live = job.future.set_running_or_notify_cancel()
    try:
        result = job.fn(backend)
    except BaseException as e:
        if live:
            job.future.set_exception(e)
    else:
        if live:
            job.future.set_result(result)


class _Spend:
    __slots__ = ("key_id", "period", "usd")

    def __init__(self, key_id: str, period: str, usd: float) -> None:
        self.key_id, self.period, self.usd = key_id, period, usd


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


class TraceStore:
    """A queue in front of one database connection owned by a background writer thread.

    Create with `open_store`. `write` is safe from any thread or coroutine and costs about a
    microsecond; everything else waits for the writer thread.
    """

    def __init__(
        self,
        factory: Callable[[], _Backend],
        *,
        url: str = "",
        store_prompts: bool = False,
        store_responses: bool = False,
        batch_size: int = 256,
        flush_interval_s: float = 0.01,
        max_queue: int = 1_000_000,
        retention_days: float | None = None,
        max_rows: int | None = None,
        prune_interval_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        journal_dir: str | Path | None = None,
        commit_interval_s: float = 0.5,
    ) -> None:
        self.url = url
        self.journal_dir = None if journal_dir is None else Path(journal_dir)
        self.commit_interval_s = float(commit_interval_s)
        self.replayed = 0
        self._jfd = -1
        self._jpath: Path | None = None
        self._pending: list[tuple] = []  # normalized rows not yet in the database (journaled)
        self._pending_spend: dict[tuple[str, str], float] = {}
        self._journaled = 0  # how many of _pending are in the journal
        self._last_commit = time.monotonic()
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.prune_interval_s = float(prune_interval_s)
        self.pruned = 0
        self._clock = clock
        self.store_prompts = store_prompts
        self.store_responses = store_responses
        self.batch_size = max(1, int(batch_size))
        self.flush_interval_s = float(flush_interval_s)
        self.max_queue = int(max_queue)
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._q: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._closing = False
        self._closed = False
        self._init_error: BaseException | None = None
        self._factory = factory
        self._thread = threading.Thread(target=self._run, name="llmroute-trace-writer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._init_error is not None:
            self._thread.join()
            err = self._init_error
            if isinstance(err, StoreError):
                raise err
            raise StoreError(f"cannot open trace store {_redact(url)}: {type(err).__name__}: {err}") from err

    # ---- hot path ---------------------------------------------------------------------------

    def write(self, record: dict[str, Any]) -> None:
        """Queue one trace record; returns at once. Never raises (a bad record is logged and dropped)."""
        if self._closing or len(self._q) >= self.max_queue:
            self.dropped += 1
            return
        self._q.append(record)
        if len(self._q) >= self.batch_size:
            self._wake.set()

    def write_row(self, values: tuple) -> None:
        """Queue one trace record given as its values in `TRACE_FIELDS` order (JSON columns as plain
        objects): the gateway's per-request form, cheaper than a dict on both sides of the queue.
        Stored exactly as `write` stores the dict of the same fields. Never blocks, never raises."""
        if self._closing or len(self._q) >= self.max_queue:
            self.dropped += 1
            return
        self._q.append(values)
        if len(self._q) >= self.batch_size:
            self._wake.set()

    def add_spend(self, key_id: str, period: str, usd: float) -> None:
        """Queue `usd` to be added to the persisted spend of `key_id` in `period` (e.g. 'd:2026-01-31')."""
        if self._closing:
            self.dropped += 1
            return
        self._q.append(_Spend(key_id, period, float(usd)))

    @property
    def queued(self) -> int:
        """Operations waiting for the writer thread, and records waiting for their database commit."""
        return len(self._q) + len(self._pending)

    # ---- ordered operations ---------------------------------------------------------------

    def _submit(self, fn: Callable[[_Backend], Any]) -> concurrent.futures.Future[Any]:
        if self._closed or not self._thread.is_alive():
            raise StoreError("the trace store is closed")
        job = _Job(fn)
        self._q.append(job)
        self._wake.set()
        return job.future

    def run(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(backend)` on the writer thread, after everything queued before, and return its
        result (blocking). For modules that keep their own tables in the store (e.g.
        `llmroute.gateway.keystore`); `backend.kind` is 'sqlite' or 'postgres'."""
        return self._submit(fn).result()

    async def arun(self, fn: Callable[[Any], Any]) -> Any:
        """`run` for use inside an event loop."""
        return await asyncio.wrap_future(self._submit(fn))

    def flush_sync(self, timeout: float | None = None) -> None:
        """Block until everything queued before this call is in the database."""
        self._submit(lambda b: None).result(timeout)

    async def flush(self) -> None:
        """Wait (without blocking the event loop) until everything queued so far is stored."""
        await asyncio.wrap_future(self._submit(lambda b: None))

    def query(
        self,
        *,
        since: float | str | datetime | None = None,
        until: float | str | datetime | None = None,
        model: str | None = None,
        alias: str | None = None,
        key_id: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        limit: int | None = 100,
    ) -> list[dict[str, Any]]:
        """Trace records matching every given filter, newest first (blocking)."""
        return self._submit(
            self._query_fn(since, until, model, alias, key_id, request_id, status, limit)
        ).result()

    async def aquery(self, **filters: Any) -> list[dict[str, Any]]:
        """`query` for use inside an event loop."""
        keys = ("since", "until", "model", "alias", "key_id", "request_id", "status", "limit")
        bad = set(filters) - set(keys)
        if bad:
            raise TypeError(f"unknown query filter(s) {sorted(bad)}; allowed: {list(keys)}")
        args = [filters.get(k) for k in keys[:-1]] + [filters.get("limit", 100)]
        return await asyncio.wrap_future(self._submit(self._query_fn(*args)))

    @staticmethod
    def _query_fn(since, until, model, alias, key_id, request_id, status, limit):  # type: ignore[no-untyped-def]
        where = {
            "since": parse_time(since),
            "until": parse_time(until),
            "model": model,
            "alias": alias,
            "key_id": key_id,
            "request_id": request_id,
            "status": status,
        }
        return lambda b: b.query(where, limit)

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The record of one request, or None (blocking)."""
        rows = self.query(request_id=request_id, limit=1)
        return rows[0] if rows else None

    async def aget(self, request_id: str) -> dict[str, Any] | None:
        """`get` for use inside an event loop."""
        rows = await self.aquery(request_id=request_id, limit=1)
        return rows[0] if rows else None

    def attach_feedback(self, request_id: str, outcome: dict[str, Any], owner: str | None = None) -> bool:
        """Merge `outcome` into the record's outcome; False if no such request id, or if `owner` (an
        API key id) is given and the request was not made with that key (blocking)."""
        return bool(self._submit(lambda b: b.attach(request_id, dict(outcome), owner)).result())

    async def aattach_feedback(
        self, request_id: str, outcome: dict[str, Any], owner: str | None = None
    ) -> bool:
        """`attach_feedback` for use inside an event loop."""
        fut = self._submit(lambda b: b.attach(request_id, dict(outcome), owner))
        return bool(await asyncio.wrap_future(fut))

    def load_spend(self, periods: Iterable[str]) -> dict[tuple[str, str], float]:
        """Persisted spend {(key_id, period): usd} for the given periods (blocking)."""
        ps = list(periods)
        return dict(self._submit(lambda b: b.load_spend(ps)).result())

    def count(self) -> int:
        """Number of stored trace records (blocking)."""
        return int(self._submit(lambda b: b.count()).result())

    def prune(self, before: float | str | datetime) -> int:
        """Delete trace records older than `before` (unix seconds, ISO time or an age like '30d');
        returns how many were deleted (blocking). Key spend is kept."""
        cutoff = parse_time(before)
        if cutoff is None:
            raise ValueError("prune needs a time: unix seconds, ISO-8601 or an age like 30d")
        return int(self._submit(lambda b: b.prune(cutoff)).result())

    def stats(self) -> dict[str, int]:
        """Counters for metrics: queued, written, dropped, errors."""
        return {
            "queued": len(self._q) + len(self._pending),
            "written": self.written,
            "dropped": self.dropped,
            "errors": self.errors,
        }

    # ---- shutdown ---------------------------------------------------------------------------

    def close_sync(self, timeout: float | None = None) -> None:
        """Drain the queue, close the database (idempotent, blocking)."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        self._closed = True

    async def close(self) -> None:
        """Drain the queue and close the database without blocking the event loop."""
        if self._closed:
            return
        await asyncio.get_running_loop().run_in_executor(None, self.close_sync)

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sync()

    # ---- writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            backend = self._factory()
        except BaseException as e:
            self._init_error = e
            self._ready.set()
            return
        if self.journal_dir is not None:
            try:
                self._open_journal(backend)
            except OSError as e:
                log.error("trace journal %s unusable (%s): committing every flush", self.journal_dir, e)
                self.journal_dir = None
        self._ready.set()
        retain = self.retention_days is not None or self.max_rows is not None
        try:
            if retain:  # at start (before any queued operation), then every prune_interval_s
                self._retain(backend)
            next_prune = time.monotonic() + self.prune_interval_s
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                self._drain(backend)
                if self._closing:
                    self._drain(backend)
                    self._commit(backend)
                    break
                if self._pending and time.monotonic() - self._last_commit >= self.commit_interval_s:
                    self._commit(backend)
                if retain and time.monotonic() >= next_prune:
                    self._retain(backend)
                    next_prune = time.monotonic() + self.prune_interval_s
        finally:
            self._close_journal()
            # fail whatever is left (only possible if a job was submitted during close)
            while self._q:
                item = self._q.popleft()
                if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                    item.future.set_exception(StoreError("the trace store is closed"))
            with contextlib.suppress(Exception):
                backend.close()

    def _drain(self, backend: _Backend) -> None:
        """Take everything queued: records join `_pending`, then are committed (without a journal,
        or once `batch_size` wait) or appended to the journal (group commit: one write for all)."""
        rows = self._pending
        spend = self._pending_spend
        q = self._q
        while True:
            try:
                item = q.popleft()
            except IndexError:
                break
            kind = type(item)
            if kind is tuple or kind is dict:
                try:
                    rows.append(
                        (normalize_row if kind is tuple else normalize_record)(
                            item,  # type: ignore[arg-type]
                            store_prompts=self.store_prompts,
                            store_responses=self.store_responses,
                        )
                    )
                except Exception as e:
                    self.errors += 1
                    log.warning("dropping malformed trace record: %s: %s", type(e).__name__, e)
            elif isinstance(item, _Spend):
                k = (item.key_id, item.period)
                spend[k] = spend.get(k, 0.0) + item.usd
            else:  # _Job: everything queued before it must be stored first
                self._commit(backend)
                rows, spend = self._pending, self._pending_spend
                _run_job(item, backend)
        if self._jfd < 0 or len(rows) >= self.batch_size:
            self._commit(backend)
        else:
            self._append_journal()

    def _commit(self, backend: _Backend) -> None:
        """Insert the pending records and spend in the database; then the journal starts over."""
        rows, spend = self._pending, self._pending_spend
        if rows:
            self._insert(backend, rows)
            self._pending = []
        if spend:
            self._spend(backend, spend)
            self._pending_spend = {}
        self._journaled = 0
        self._last_commit = time.monotonic()
        if self._jfd >= 0 and rows:
            try:
                os.ftruncate(self._jfd, 0)
            except OSError as e:
                self.errors += 1
                log.error("trace journal truncate failed: %s", e)

    # ---- journal: what a kill -9 must not lose, between two database commits -----------------

    def _append_journal(self) -> None:
        """Append the pending records not yet journaled: one write() for the whole group. Once it
        returns they are in the kernel's page cache (a kill -9 of this process keeps them)."""
        new = self._pending[self._journaled :]
        if not new:
            return
        data = b"".join([orjson.dumps(r) + b"\n" for r in new])
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._jfd, view)
                view = view[n:]
            self._journaled = len(self._pending)
        except OSError as e:  # e.g. disk full: the records stay queued for the next commit
            self.errors += 1
            log.error("trace journal write failed: %s", e)

    def _open_journal(self, backend: _Backend) -> None:
        """Replay the journals of dead processes (their lock is free), then open this one's."""
        import fcntl

        d = self.journal_dir
        assert d is not None
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in sorted(d.glob("*.jsonl")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                rows = []
                with os.fdopen(os.dup(fd), "rb") as f:
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # cut short by the kill
                        with contextlib.suppress(orjson.JSONDecodeError):
                            rows.append(tuple(orjson.loads(line)))
                if rows:
                    self._insert(backend, rows)
                    self.replayed += len(rows)
                    log.warning(
                        "trace journal %s: %d records of a stopped process stored", path.name, len(rows)
                    )
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        self._jpath = d / f"{os.getpid()}-{os.urandom(6).hex()}.jsonl"
        fd = os.open(self._jpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this store lives; released by any exit, kill -9 too
        self._jfd = fd

    def _close_journal(self) -> None:
        """After the final commit: remove this process's (empty) journal."""
        if self._jfd < 0:
            return
        with contextlib.suppress(OSError):
            if not self._pending and self._jpath is not None:
                self._jpath.unlink()
            os.close(self._jfd)
        self._jfd = -1

    def _retain(self, backend: _Backend) -> None:
        """Enforce `retention_days` / `max_rows`, a chunk at a time, committing queued traces between
        chunks (so that a long first prune delays them by one chunk's delete at most)."""
        before = None if self.retention_days is None else self._clock() - self.retention_days * 86400.0
        try:
            while True:
                n = backend.prune_chunk(before, self.max_rows, _PRUNE_CHUNK)
                self.pruned += n
                if n < _PRUNE_CHUNK or self._closing:
                    return
                self._drain(backend)
        except Exception as e:
            self.errors += 1
            log.error("trace retention failed: %s: %s", type(e).__name__, e)

    def _insert(self, backend: _Backend, rows: list[tuple]) -> None:
        if not rows:
            return
        try:
            backend.insert(rows)
            self.written += len(rows)
        except Exception as e:
            # one bad row must not take the batch with it: retry row by row
            log.warning("trace batch insert failed (%s: %s); retrying one by one", type(e).__name__, e)
            for r in rows:
                try:
                    backend.insert([r])
                    self.written += 1
                except Exception as e1:
                    self.errors += 1
                    log.error("trace record %s lost: %s: %s", r[0], type(e1).__name__, e1)

    def _spend(self, backend: _Backend, spend: dict[tuple[str, str], float]) -> None:
        if not spend:
            return
        try:
            backend.add_spend(spend)
        except Exception as e:
            self.errors += 1
            log.error("persisting key spend failed: %s: %s", type(e).__name__, e)


def _redact(url: str) -> str:
    """The URL without a password (secrets never reach logs or errors)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


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
