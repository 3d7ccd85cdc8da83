"""What the dashboard (`/ui`) shows, read from the trace store.

`DashboardData(store, url, base_dir)` reads the trace store on a connection of its own: a SQLite
file (WAL mode: readers never block the writer thread) or a Postgres database (asyncpg on a private
event loop; every replica's traces). A `memory://` store is read through the store's writer
thread. The queries are written once; what differs between the two (table and row-number names,
JSON functions, placeholders) is in `Dialect` (`SQLITE`, `POSTGRES`).

Aggregates (traffic, spend, savings, latency, error and fallback rates) are kept per hour, alias,
model and key in memory and brought up to date incrementally on each read: only the rows added
since the last read (by row number: SQLite's rowid, Postgres's `seq`, numbered in commit order by
the store) are parsed. When rows disappear (retention, `traces prune`) the aggregates are rebuilt
from scratch.

Savings against always using the strongest candidate (`request_baseline`): for a request answered
(status 200) after a routing decision, the strongest candidate is the one with the highest expected
quality in the decision (ties: the dearer). Had it served the request, it would have cost the billed
cost times the ratio of the two models' expected costs for this prompt, as the router estimated them
at decision time (prices and expected answer lengths; the same prompt tokens). A request served by
the strongest candidate itself, or without a decision, or not answered, saves 0; a saving can be
negative (e.g. a fallback to a dearer model).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "ASSUMPTION",
    "POSTGRES",
    "SQLITE",
    "Aggregates",
    "DashboardData",
    "Dialect",
    "Totals",
    "request_baseline",
    "strongest_candidate",
]

#: The savings assumption, as the overview page states it.
ASSUMPTION = (
    "Savings are measured against always using the strongest candidate: for each answered request "
    "with a routing decision, the candidate with the highest expected quality in that decision "
    "(ties: the dearer). Its cost is taken as the billed cost times the ratio of its expected cost "
    "to the served model's expected cost for the same prompt, as the router estimated both at "
    "decision time. Requests served by the strongest candidate, failed requests and requests "
    "without a decision save nothing; a fallback to a dearer model counts as a negative saving."
)

_HOUR = 3600
_LAT_BUCKETS = 64  # latency histogram: bucket i holds total_ms in [2^(i/4) - 1, 2^((i+1)/4) - 1)
_FETCH = 5_000  # rows per fetch when bringing the aggregates up to date


def strongest_candidate(candidates: Any) -> dict[str, Any] | None:
    """The candidate with the highest expected quality (ties: the higher expected cost), or None."""
    best: dict[str, Any] | None = None
    best_key = (-math.inf, -math.inf)
    if not isinstance(candidates, list):
        return None
    for c in candidates:
        if not isinstance(c, dict):
            continue
        q, cost = c.get("expected_quality"), c.get("expected_cost")
        if not isinstance(q, int | float) or not isinstance(cost, int | float):
            continue
        if not (math.isfinite(q) and math.isfinite(cost)):
            continue
        k = (float(q), float(cost))
        if best is None or k > best_key:
            best, best_key = c, k
    return best


def request_baseline(candidates: Any, model: str | None, status: int | None, cost_usd: float | None) -> float:
    """What one request would have cost served by its strongest candidate (see the module
    docstring); equals `cost_usd` (a saving of 0) where no comparison applies."""
    cost = float(cost_usd or 0.0)
    if status != 200 or not model:
        return cost
    best = strongest_candidate(candidates)
    if best is None or best.get("model") == model:
        return cost
    served = next(
        (c for c in candidates if isinstance(c, dict) and c.get("model") == model),
        None,
    )
    ec = served.get("expected_cost") if served is not None else None
    if not isinstance(ec, int | float) or not math.isfinite(ec) or ec <= 0:
        return cost
    return cost * float(best["expected_cost"]) / float(ec)


def _lat_bucket(ms: float) -> int:
    if ms <= 0 or not math.isfinite(ms):
        return 0
    return min(_LAT_BUCKETS - 1, int(4 * math.log2(ms + 1.0)))


def _lat_upper(i: int) -> float:
    return 2 ** ((i + 1) / 4) - 1.0


def percentile(hist: Sequence[int], p: float) -> float | None:
    """The `p` quantile (0..1) of a latency histogram: the upper edge of its bucket, in ms."""
    n = sum(hist)
    if n == 0:
        return None
    target = p * n
    acc = 0
    for i, c in enumerate(hist):
        acc += c
        if acc >= target and c:
            return _lat_upper(i)
    return _lat_upper(len(hist) - 1)


@dataclass
class Totals:
    """Sums over a set of requests. `saved_usd = baseline_usd - cost_usd`."""

    requests: int = 0
    errors: int = 0  # status >= 400
    fallbacks: int = 0  # requests with at least one failed attempt
    routed: int = 0  # answered requests with a routing decision (the savings' base)
    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    latency_ms_sum: float = 0.0
    latency_n: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * _LAT_BUCKETS)

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        self.routed += other.routed
        self.cost_usd += other.cost_usd
        self.baseline_usd += other.baseline_usd
        self.latency_ms_sum += other.latency_ms_sum
        self.latency_n += other.latency_n
        h = self.hist
        for i, c in enumerate(other.hist):
            if c:
                h[i] += c

    @property
    def saved_usd(self) -> float:
        return self.baseline_usd - self.cost_usd

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.hist, 0.5)

    @property
    def p95_ms(self) -> float | None:
        return percentile(self.hist, 0.95)


class Aggregates:
    """Per (hour, alias, model, key) `Totals`, brought up to date row by row."""

    def __init__(self) -> None:
        self.cells: dict[tuple[int, str, str, str], Totals] = {}
        self.max_rowid = 0
        self.min_rowid = 0
        self.rows = 0
        self.counted_at = time.monotonic()
        self.rules: set[str] = set()  # names of the rules that fired on any request

    def add_row(
        self,
        ts: float,
        key_id: str | None,
        alias: str | None,
        model: str | None,
        status: int | None,
        candidates: Any,
        has_fallback: bool,
        total_ms: float | None,
        cost_usd: float | None,
    ) -> None:
        k = (int((ts or 0.0) // _HOUR), alias or "", model or "", key_id or "")
        t = self.cells.get(k)
        if t is None:
            t = self.cells[k] = Totals()
        cost = float(cost_usd or 0.0)
        t.requests += 1
        if status is not None and status >= 400:
            t.errors += 1
        if has_fallback:
            t.fallbacks += 1
        t.cost_usd += cost
        if status == 200 and alias and candidates:
            t.routed += 1
            t.baseline_usd += request_baseline(candidates, model, status, cost)
        else:
            t.baseline_usd += cost
        if total_ms is not None:
            t.latency_ms_sum += total_ms
            t.latency_n += 1
            t.hist[_lat_bucket(total_ms)] += 1
        self.rows += 1

    def select(
        self, since_hour: int | None = None, *, by: Callable[[tuple[int, str, str, str]], Any] | None = None
    ) -> dict[Any, Totals]:
        """Totals grouped by `by(cell key)` (default: one group, None), from `since_hour` on."""
        out: dict[Any, Totals] = {}
        for k, t in self.cells.items():
            if since_hour is not None and k[0] < since_hour:
                continue
            g = by(k) if by is not None else None
            acc = out.get(g)
            if acc is None:
                acc = out[g] = Totals()
            acc.add(t)
        return out


@dataclass(frozen=True)
class Dialect:
    """What the dashboard's SQL spells differently on SQLite and Postgres. Queries are written with
    `{t}` (the traces table), `{id}` (its row number) and `?` placeholders; `json(col)` is a JSON
    column as text, `path(col, *keys)` a JSON value at a path as text, `path_num` as a number or
    NULL when it is not a number, `array_has(col, *keys)` tests a JSON array for a string
    (one `?` placeholder), `prefix(col)` a text prefix test (one placeholder) with its argument."""

    name: str
    table: str
    row_id: str

    @property
    def pg(self) -> bool:
        return self.name == "postgres"

    def json(self, col: str) -> str:
        return f"{col}::text" if self.pg else col

    def path(self, col: str, *keys: str) -> str:
        if self.pg:
            return f"({col} #> '{{{','.join(keys)}}}')::text"
        return f"json_extract({col}, '$.{'.'.join(keys)}')"

    def path_text(self, col: str, *keys: str) -> str:
        """A JSON string at a path, unquoted."""
        if self.pg:
            return f"({col} #>> '{{{','.join(keys)}}}')"
        return f"json_extract({col}, '$.{'.'.join(keys)}')"

    def path_num(self, col: str, *keys: str) -> str:
        if self.pg:
            p = f"{col} #> '{{{','.join(keys)}}}'"
            return f"CASE WHEN jsonb_typeof({p}) = 'number' THEN ({p})::text::float8 END"
        p = f"'$.{'.'.join(keys)}'"
        return f"CASE WHEN json_type({col}, {p}) IN ('real', 'integer') THEN json_extract({col}, {p}) END"

    def array_has(self, col: str, *keys: str) -> str:
        if self.pg:
            return f"COALESCE({col} #> '{{{','.join(keys)}}}' @> jsonb_build_array(?::text), false)"
        return f"EXISTS (SELECT 1 FROM json_each({col}, '$.{'.'.join(keys)}') WHERE value = ?)"

    def empty_array(self, col: str) -> str:
        return f"{col} = '[]'::jsonb" if self.pg else f"{col} = '[]'"

    def prefix(self, col: str, value: str) -> tuple[str, list[Any]]:
        if self.pg:  # (text order follows the database's collation there, not code points)
            return f"starts_with({col}, ?)", [value]
        return f"{col} >= ? AND {col} < ?", [value, value + "\uffff"]

    def render(self, query: str) -> str:
        """`query` with the table and row-number names filled in and, on Postgres, `$n` placeholders."""
        q = query.replace("{t}", self.table).replace("{id}", self.row_id)
        if self.pg:
            n = iter(range(1, 10_000))
            q = re.sub(r"\?", lambda _m: f"${next(n)}", q)
        return q


SQLITE = Dialect("sqlite", "traces", "rowid")
POSTGRES = Dialect("postgres", "llmroute_traces", "seq")


def _agg_sql(d: Dialect) -> str:
    """The rows added since a row number, in order, with what the aggregates need."""
    return (
        "SELECT {id}, ts, key_id, alias, model, status, "
        f"CASE WHEN status = 200 AND alias IS NOT NULL THEN {d.json('candidates')} END, "
        f"fallbacks IS NOT NULL AND NOT ({d.empty_array('fallbacks')}), total_ms, cost_usd, "
        f"CASE WHEN extra IS NOT NULL THEN {d.path('extra', 'rules', 'applied')} END "
        "FROM {t} WHERE {id} > ? ORDER BY {id} LIMIT ?"
    )


#: columns of a decision row (the explorer's list)
DECISION_COLUMNS = (
    "request_id",
    "ts",
    "key_id",
    "alias",
    "model",
    "status",
    "reason",
    "total_ms",
    "cost_usd",
    "candidates",
    "fallbacks",
)


#: the trace table's JSON columns (text on SQLite, JSONB on Postgres)
_JSON_COLUMNS = frozenset({"candidates", "fallbacks", "outcome", "extra", "learner"})


class DashboardData:
    """Read access to the trace store for the dashboard (see the module docstring)."""

    def __init__(self, store: Any, url: str, base_dir: str | Path | None) -> None:
        from llmroute.gateway.store import _resolve_url

        self.store = store
        self.kind, self.target = _resolve_url(url, base_dir)
        self.dialect = POSTGRES if self.kind == "postgres" else SQLITE
        self._db: sqlite3.Connection | None = None
        self._pg: Any = None  # (event loop, asyncpg connection) on Postgres
        self._lock = threading.Lock()  # one reader at a time on the connection and the aggregates
        self.agg = Aggregates()
        self.recount_s = 30.0
        self._refresh_lock = threading.Lock()

    # ---- SQL ---------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.target, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA query_only = 1")
        return self._db

    def _pg_fetch(self, query: str, args: list[Any]) -> list[tuple]:
        if self._pg is None:
            import asyncpg  # type: ignore[import-not-found]  (the store opened: it is installed)

            loop = asyncio.new_event_loop()
            try:
                conn = loop.run_until_complete(
                    asyncpg.connect(self.target, server_settings={"application_name": "llmroute-dashboard"})
                )
                loop.run_until_complete(conn.execute("SET default_transaction_read_only = on"))
            except BaseException:
                loop.close()
                raise
            self._pg = (loop, conn)
        loop, conn = self._pg
        try:
            return [tuple(r) for r in loop.run_until_complete(conn.fetch(query, *args))]
        except Exception:
            if conn.is_closed():  # the server went away: connect again on the next read
                self._pg = None
                loop.close()
            raise

    def sql(self, query: str, args: Sequence[Any] = ()) -> list[tuple]:
        """Rows of a read-only query on the traces database (blocking: call it off the event loop).
        `query` is written for `Dialect.render`: `{t}`, `{id}` and `?` placeholders."""
        q = self.dialect.render(query)
        if self.target == ":memory:":
            return list(self.store.run(lambda b: b.db.execute(q, list(args)).fetchall()))
        with self._lock:
            if self.dialect.pg:
                return self._pg_fetch(q, list(args))
            return self._connect().execute(q, list(args)).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._pg is not None:
                loop, conn = self._pg
                self._pg = None
                try:
                    loop.run_until_complete(conn.close(timeout=5))
                except Exception:  # closing: the server may be gone
                    pass
                finally:
                    loop.close()

    # ---- aggregates --------------------------------------------------------------------------
    def warm(self) -> threading.Thread | None:
        """Build the aggregates in a background thread (at gateway start, so that the first page
        need not read every row); None for a `memory://` store."""
        if self.target == ":memory:":
            return None
        t = threading.Thread(target=self._warm, name="llmroute-ui-warm", daemon=True)
        t.start()
        return t

    def _warm(self) -> None:
        try:
            self.refresh(pause_s=0.002)
        except Exception as e:  # the first page will try again (and show the error)
            import logging

            logging.getLogger("llmroute.gateway.ui").warning("dashboard warm-up failed: %s", e)

    def refresh(self, pause_s: float = 0.0) -> Aggregates:
        """Bring the aggregates up to date with the store (blocking) and return them. One refresh at
        a time; `pause_s`: sleep between fetches of rows (a background warm-up leaves the event
        loop the GIL)."""
        with self._refresh_lock:
            return self._refresh(pause_s)

    def _refresh(self, pause_s: float) -> Aggregates:
        agg = self.agg
        # rows deleted (retention and `traces prune` delete the oldest): start again. The oldest
        # row number is one index probe; the full count of the rows already read is checked every
        # `recount_s` (it scans them: ~10 ms per 100k rows)
        if agg.rows:
            lo = self.sql("SELECT MIN({id}) FROM {t}")[0][0]
            stale = lo != agg.min_rowid
            now = time.monotonic()
            if not stale and now - agg.counted_at >= self.recount_s:
                n = self.sql("SELECT COUNT(*) FROM {t} WHERE {id} <= ?", (agg.max_rowid,))[0][0]
                stale = n != agg.rows
                agg.counted_at = now
            if stale:
                agg = self.agg = Aggregates()
        loads = orjson.loads
        cells = agg.cells
        baseline = request_baseline
        bucket = _lat_bucket
        agg_sql = _agg_sql(self.dialect)
        while True:
            rows = self.sql(agg_sql, (agg.max_rowid, _FETCH))
            for _rowid, ts, key_id, alias, model, status, cands, fb, total_ms, cost, rules in rows:
                # Aggregates.add_row, inlined: this loop runs over every row once (~100k at a cold start)
                if rules and rules != "[]":
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                        agg.rules.update(str(r) for r in loads(rules))
                k = (int((ts or 0.0) // _HOUR), alias or "", model or "", key_id or "")
                t = cells.get(k)
                if t is None:
                    t = cells[k] = Totals()
                cost = float(cost or 0.0)
                t.requests += 1
                if status is not None and status >= 400:
                    t.errors += 1
                if fb:
                    t.fallbacks += 1
                t.cost_usd += cost
                candidates = None
                if cands:
                    try:
                        candidates = loads(cands)
                    except orjson.JSONDecodeError:
                        candidates = None
                if status == 200 and alias and candidates:
                    t.routed += 1
                    t.baseline_usd += baseline(candidates, model, status, cost)
                else:
                    t.baseline_usd += cost
                if total_ms is not None:
                    t.latency_ms_sum += total_ms
                    t.latency_n += 1
                    t.hist[bucket(total_ms)] += 1
                agg.rows += 1
            if rows:
                if not agg.min_rowid:
                    agg.min_rowid = rows[0][0]
                agg.max_rowid = rows[-1][0]
            if len(rows) < _FETCH:
                return agg
            if pause_s:
                time.sleep(pause_s)

    # ---- single requests ---------------------------------------------------------------------
    def decisions(
        self,
        *,
        model: str | None = None,
        alias: str | None = None,
        key_id: str | None = None,
        rule: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        request_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Decisions matching every given filter, newest first. `rule`: a rules-engine rule that
        fired (`extra.rules.applied`) or a policy rule (`tradeoff`, `threshold`, ...); `status`:
        "ok" (200), "error" (>= 400) or a number; `request_id`: a prefix of at least 4 characters."""
        where: list[str] = []
        args: list[Any] = []
        for col, v in (("model", model), ("alias", alias), ("key_id", key_id)):
            if v:
                where.append(f"{col} = ?")
                args.append(v)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        if status:
            if status == "ok":
                where.append("status = 200")
            elif status == "error":
                where.append("status >= 400")
            elif status.isascii() and status.isdigit() and len(status) <= 3:  # an HTTP status
                where.append("status = ?")
                args.append(int(status))
        d = self.dialect
        if request_id:
            rid = request_id.strip()
            if len(rid) >= 32:
                where.append("request_id = ?")
                args.append(rid)
            else:
                clause, more = d.prefix("request_id", rid)
                where.append(clause)
                args += more
        if rule:
            where.append(
                f"({d.array_has('extra', 'rules', 'applied')} "
                f"OR {d.path_text('extra', 'policy', 'policy', 'rule')} = ? "
                f"OR {d.path_text('extra', 'rules', 'rule')} = ?)"
            )
            args += [rule, rule, rule]
        cols = ", ".join(d.json(c) if c in _JSON_COLUMNS else c for c in DECISION_COLUMNS)
        q = f"SELECT {cols} FROM {{t}}"
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY ts DESC LIMIT ? OFFSET ?"
        args += [int(limit), int(offset)]
        out = []
        for row in self.sql(q, args):
            d = dict(zip(DECISION_COLUMNS, row, strict=True))
            d["candidates"] = _loads(d["candidates"]) or []
            d["fallbacks"] = _loads(d["fallbacks"]) or []
            d["baseline_usd"] = request_baseline(d["candidates"], d["model"], d["status"], d["cost_usd"])
            d["saved_usd"] = d["baseline_usd"] - float(d["cost_usd"] or 0.0)
            out.append(d)
        return out

    def decision(self, request_id: str) -> dict[str, Any] | None:
        """One request's full trace record, with its baseline and saving; None if unknown."""
        from llmroute.gateway.store import TRACE_FIELDS

        cols = ", ".join(self.dialect.json(c) if c in _JSON_COLUMNS else c for c in TRACE_FIELDS)
        rows = self.sql(f"SELECT {cols} FROM {{t}} WHERE request_id = ?", (request_id.strip(),))
        if not rows:
            return None
        d = dict(zip(TRACE_FIELDS, rows[0], strict=True))
        for k in ("candidates", "fallbacks", "outcome", "extra"):
            d[k] = _loads(d[k])
        d["candidates"] = d["candidates"] or []
        d["baseline_usd"] = request_baseline(d["candidates"], d["model"], d["status"], d["cost_usd"])
        d["saved_usd"] = d["baseline_usd"] - float(d["cost_usd"] or 0.0)
        return d

    def feedback(self, limit: int = 50_000) -> list[tuple[str, float, float]]:
        """(served model, its expected quality, the feedback quality) of the newest requests with a
        numeric `quality` in their outcome."""
        d = self.dialect
        q = d.path_num("outcome", "quality")
        rows = self.sql(
            f"SELECT model, {d.json('candidates')}, {q} FROM {{t}} "
            f"WHERE outcome IS NOT NULL AND {q} IS NOT NULL ORDER BY ts DESC LIMIT ?",
            (limit,),
        )
        out = []
        for model, cands, fq in rows:
            cs = _loads(cands) or []
            eq = next(
                (c.get("expected_quality") for c in cs if isinstance(c, dict) and c.get("model") == model),
                None,
            )
            if isinstance(eq, int | float) and math.isfinite(eq):
                out.append((str(model), float(eq), float(fq)))
        return out

    def distinct(self) -> dict[str, list[str]]:
        """Aliases, models and keys seen in the aggregates (for the explorer's filters)."""
        aliases: set[str] = set()
        models: set[str] = set()
        keys: set[str] = set()
        for _h, a, m, k in self.agg.cells:
            aliases.add(a)
            models.add(m)
            keys.add(k)
        return {
            "aliases": sorted(x for x in aliases if x),
            "models": sorted(x for x in models if x),
            "keys": sorted(x for x in keys if x),
        }


def _loads(v: Any) -> Any:
    if v is None or not isinstance(v, str | bytes):
        return v
    try:
        return orjson.loads(v)
    except orjson.JSONDecodeError:
        return v


def series(
    agg: Aggregates,
    group: Callable[[tuple[int, str, str, str]], str],
    since_hour: int | None,
    points: int = 72,
) -> tuple[list[int], dict[str, list[int]], int]:
    """Request counts over time per group: (bucket start hours, {group: counts}, bucket hours),
    with at most `points` buckets spanning the data from `since_hour` (or the first hour) on."""
    hours = [k[0] for k in agg.cells if since_hour is None or k[0] >= since_hour]
    if not hours:
        return [], {}, 1
    lo, hi = min(hours), max(hours)
    width = max(1, math.ceil((hi - lo + 1) / points))
    n = (hi - lo) // width + 1
    starts = [lo + i * width for i in range(n)]
    out: dict[str, list[int]] = {}
    for k, t in agg.cells.items():
        if k[0] < lo:
            continue
        g = group(k) or "(none)"
        row = out.get(g)
        if row is None:
            row = out[g] = [0] * n
        row[(k[0] - lo) // width] += t.requests
    return starts, out, width


def cumulative(
    agg: Aggregates, since_hour: int | None, points: int = 72
) -> tuple[list[int], list[float], list[float], list[float], int]:
    """(bucket start hours, cumulative spend, cumulative baseline, saving per request in each
    bucket, bucket hours) from `since_hour` on."""
    hours = [k[0] for k in agg.cells if since_hour is None or k[0] >= since_hour]
    if not hours:
        return [], [], [], [], 1
    lo, hi = min(hours), max(hours)
    width = max(1, math.ceil((hi - lo + 1) / points))
    n = (hi - lo) // width + 1
    cost = [0.0] * n
    base = [0.0] * n
    req = [0] * n
    for k, t in agg.cells.items():
        if k[0] < lo:
            continue
        i = (k[0] - lo) // width
        cost[i] += t.cost_usd
        base[i] += t.baseline_usd
        req[i] += t.requests
    cc, cb, per = [], [], []
    a = b = 0.0
    for i in range(n):
        a += cost[i]
        b += base[i]
        cc.append(a)
        cb.append(b)
        per.append((base[i] - cost[i]) / req[i] if req[i] else 0.0)
    return [lo + i * width for i in range(n)], cc, cb, per, width


def calibration(points: Iterable[tuple[str, float, float]], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean expected quality, mean feedback quality, n) per bin of expected quality."""
    acc = [[0.0, 0.0, 0] for _ in range(bins)]
    for _m, eq, fq in points:
        i = min(bins - 1, max(0, int(eq * bins)))
        a = acc[i]
        a[0] += eq
        a[1] += fq
        a[2] += 1
    return [(a[0] / a[2], a[1] / a[2], int(a[2])) for a in acc if a[2]]
