"""The trace store's SQLite backend (`_SQLiteBackend`): tables, indexes and migrations, batched
upserts, feedback, queries, spend and retention. Used only from the writer thread
(`llmroute.gateway.trace_writer`); opened by `llmroute.gateway.store.open_store`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import operator
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmroute.gateway.store_schema import (
    _ADDED,
    _COLUMNS,
    _dumps,
    _loads,
    _merge_outcome,
    _row_to_dict,
    _where_sql,
)

log = logging.getLogger("llmroute.gateway.store")

_MULTI = 64  # rows per multi-row INSERT of the SQLite backend (x 23 columns: well under SQLite's 32,766 parameters)
_MAX_STATEMENTS = 256  # cached upserts (NULL pattern x rows per statement)
_NONES = (None,) * len(_COLUMNS)


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
        self._marks = f"({marks})"
        # (NULL pattern, rows) -> (SQL, which values to bind); see insert
        self._statements: dict[tuple[tuple[bool, ...], int], tuple[str, tuple[bool, ...]]] = {}

    def _statement(self, nulls: tuple[bool, ...], n: int) -> tuple[str, tuple[bool, ...]]:
        """The upsert of `n` rows whose None values sit where `nulls` is True (NULL written in the
        SQL, not bound), and the selector of the values to bind (`itertools.compress`); cached."""
        got = self._statements.get((nulls, n))
        if got is None:
            if len(self._statements) >= _MAX_STATEMENTS:  # odd NULL patterns must not grow it forever
                self._statements.clear()
            one = "(" + ", ".join("NULL" if null else "?" for null in nulls) + ")"
            sql = self._insert.replace(f"VALUES {self._marks}", "VALUES " + ", ".join([one] * n), 1)
            got = self._statements[(nulls, n)] = (sql, tuple(not null for null in nulls) * n)
        return got

    def insert(self, rows: list[tuple]) -> None:
        # One statement per power-of-two chunk (64, 32, ..., 1 rows) of consecutive rows with the
        # same None columns: a 10 ms group commit of a few dozen rows takes a handful of statement
        # steps, not one per row. A None is written as NULL in the statement instead of bound:
        # Python's sqlite3 binds None through its adapter lookup (two failed attribute lookups,
        # ~0.45 us each, with the GIL held, against ~0.08 us for an int), and a gateway row holds ~10.
        # Same rows, same order, same values stored.
        n, k, step = len(rows), 0, self._multi
        nones = _NONES
        for r in rows:  # (map() below would stop at the shorter of a row and _NONES)
            if len(r) != len(nones):
                raise ValueError(f"a trace row has {len(r)} values for the {len(nones)} columns")
        nulls = [tuple(map(operator.is_, r, nones)) for r in rows]
        with self._tx():
            while k < n:
                pattern = nulls[k]
                end = k + 1
                while end < n and nulls[end] == pattern:
                    end += 1
                while k < end:
                    size = min(step, 1 << ((end - k).bit_length() - 1))
                    sql, keep = self._statement(pattern, size)
                    values = itertools.chain.from_iterable(rows[k : k + size])
                    self.db.execute(sql, list(itertools.compress(values, keep)))
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
        return self.attach_read(request_id, outcome, owner) is not None

    def attach_read(
        self, request_id: str, outcome: dict[str, Any], owner: str | None = None, columns: Sequence[str] = ()
    ) -> tuple[Any, ...] | None:
        """`attach`, reading the row's `columns` (trusted column names, raw as stored) in the
        same query: their values, or None when nothing was attached (unknown id, other owner)."""
        row = self.db.execute(
            f"SELECT rowid, outcome, key_id{''.join(', ' + c for c in columns)} FROM traces WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None or (owner is not None and row[2] != owner):
            return None
        merged = _merge_outcome(_loads(row[1]), outcome)
        self.db.execute("UPDATE traces SET outcome = ? WHERE rowid = ?", (_dumps(merged), row[0]))
        return tuple(row[3:])

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
