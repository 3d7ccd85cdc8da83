"""The trace store's Postgres backend (`_PostgresBackend`, asyncpg imported only when one is
opened): tables, indexes and migrations, upserts, feedback, queries, spend and retention. Used
only from the writer thread (`llmroute.gateway.trace_writer`); opened by
`llmroute.gateway.store.open_store`. Trace rows carry a row number `seq` given in commit order
across all the gateways writing one database (each batch takes a transaction-scoped advisory lock
before its rows are numbered), so a reader that has read up to `seq` n (the dashboard,
`llmroute.gateway.ui.data`) finds every later row above n.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llmroute.gateway.store_schema import (
    _ADDED,
    _COLUMNS,
    StoreError,
    _dumps,
    _loads,
    _merge_outcome,
    _row_to_dict,
    _where_sql,
)

#: advisory lock keys (pg_advisory_lock): creating/migrating the tables, and numbering trace rows
_SCHEMA_LOCK = 0x6C6C6D72_6F757465 >> 1  # "llmroute"
_SEQ_LOCK = _SCHEMA_LOCK + 1


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
        # replicas opening one database at once: one of them creates or migrates the tables
        self._run(self.conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK))
        try:
            self._create(cols, pg)
        finally:
            self._run(self.conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK))
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

    def _create(self, cols: str, pg: dict[str, str]) -> None:
        """Create or migrate the tables (under the schema lock)."""
        self._run(
            self.conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS llmroute_traces ({cols}, seq BIGSERIAL);
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
        has_seq = self._run(
            self.conn.fetchval(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'llmroute_traces' AND column_name = 'seq'"
            )
        )
        if not has_seq:  # a store written by an older version: number its rows once
            self._run(self.conn.execute("ALTER TABLE llmroute_traces ADD COLUMN seq BIGSERIAL"))
        self._run(
            self.conn.execute("CREATE INDEX IF NOT EXISTS llmroute_traces_seq ON llmroute_traces (seq)")
        )

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def insert(self, rows: list[tuple]) -> None:
        async def go() -> None:
            async with self.conn.transaction():
                # rows are numbered (seq) in commit order across every writer of the database:
                # a reader that has seen seq n never finds a smaller one committed later
                await self.conn.execute("SELECT pg_advisory_xact_lock($1)", _SEQ_LOCK)
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
