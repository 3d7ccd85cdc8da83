"""API keys managed by the admin API: kept in the trace store, hashed; plus the admin audit log,
and the generation counter that tells every worker process that keys changed.

Tables (created on first use, in the gateway's trace store: SQLite or Postgres)::

    llmroute_api_keys   (id PK, sha256 UNIQUE, budget_usd_day, budget_usd_month, rpm,
                         aliases (JSON list or NULL = all), created_ts, updated_ts, revoked_ts)
    llmroute_admin_audit (ts, action, target, actor, detail (JSON, never a secret))

A key's text is shown once, by the create call; only its sha256 is stored. A revoked key keeps
its row (revoked_ts set), so its id cannot be reused by accident and the audit log stays readable.

`KeyGeneration`: two 8-byte counters (any key change; config reloads) that the worker processes of `llmroute serve --workers N`
share through a memory-mapped file in their shared folder (`LLMROUTE_SHARED_DIR`); in a single
process it is a plain integer. A change to the keys is written to the store first, then the
counter is bumped; each worker compares the counter with the value it last loaded at the start of
every request (one memory read, well under a microsecond) and reloads the keys when it moved, so
a revoked key is refused, and a new key admitted, on the next request on every worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["KeyGeneration", "KeyStore", "StoredKey"]

_KEY_COLS = (
    "id",
    "sha256",
    "budget_usd_day",
    "budget_usd_month",
    "rpm",
    "aliases",
    "created_ts",
    "updated_ts",
    "revoked_ts",
)
_AUDIT_COLS = ("ts", "action", "target", "actor", "detail")

_SCHEMA = {
    "sqlite": """
        CREATE TABLE IF NOT EXISTS llmroute_api_keys (
            id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, budget_usd_day REAL,
            budget_usd_month REAL, rpm INTEGER, aliases TEXT, created_ts REAL NOT NULL,
            updated_ts REAL NOT NULL, revoked_ts REAL);
        CREATE TABLE IF NOT EXISTS llmroute_admin_audit (
            ts REAL NOT NULL, action TEXT NOT NULL, target TEXT, actor TEXT, detail TEXT);
        CREATE INDEX IF NOT EXISTS llmroute_admin_audit_ts ON llmroute_admin_audit (ts);
    """,
    "postgres": """
        CREATE TABLE IF NOT EXISTS llmroute_api_keys (
            id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, budget_usd_day DOUBLE PRECISION,
            budget_usd_month DOUBLE PRECISION, rpm BIGINT, aliases TEXT,
            created_ts DOUBLE PRECISION NOT NULL, updated_ts DOUBLE PRECISION NOT NULL,
            revoked_ts DOUBLE PRECISION);
        CREATE TABLE IF NOT EXISTS llmroute_admin_audit (
            ts DOUBLE PRECISION NOT NULL, action TEXT NOT NULL, target TEXT, actor TEXT, detail TEXT);
        CREATE INDEX IF NOT EXISTS llmroute_admin_audit_ts ON llmroute_admin_audit (ts);
    """,
}

StoredKey = dict[str, Any]


def _pg(sql: str) -> str:
    """'?' placeholders as Postgres' $1, $2, ..."""
    n = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(n)}", sql)


class _Sql:
    """One statement runner over a trace-store backend (on the store's writer thread)."""

    def __init__(self, backend: Any) -> None:
        self.b = backend
        self.kind = getattr(backend, "kind", "sqlite")
        if not getattr(backend, "_llmroute_keys_ready", False):
            if self.kind == "postgres":
                from llmroute.gateway.store_postgres import _SCHEMA_LOCK

                # replicas opening one empty database at once: CREATE TABLE IF NOT EXISTS alone
                # races (a duplicate pg_type row), so the trace store's schema lock serialises it
                conn = backend.conn
                backend._run(conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK))
                try:
                    backend._run(conn.execute(_SCHEMA["postgres"]))
                finally:
                    backend._run(conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK))
            else:
                backend.db.executescript(_SCHEMA["sqlite"])
            backend._llmroute_keys_ready = True

    def fetch(self, sql: str, *args: Any) -> list[tuple]:
        if self.kind == "postgres":
            return [tuple(r) for r in self.b._run(self.b.conn.fetch(_pg(sql), *args))]
        return list(self.b.db.execute(sql, args).fetchall())

    def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""
        if self.kind == "postgres":
            status = self.b._run(self.b.conn.execute(_pg(sql), *args))
            return int(str(status).split()[-1]) if str(status).split()[-1].isdigit() else 0
        return int(self.b.db.execute(sql, args).rowcount)


def _key_row(r: Sequence[Any]) -> StoredKey:
    d = dict(zip(_KEY_COLS, r, strict=True))
    d["aliases"] = None if d["aliases"] is None else orjson.loads(d["aliases"])
    return d


class KeyStore:
    """The admin API's keys and audit log in a `TraceStore` (see the module docstring).

    Every method runs on the store's writer thread; the `a*` methods await it from an event loop.
    """

    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # ---- keys ---------------------------------------------------------------------------------

    async def alist(self, *, revoked: bool = True) -> list[StoredKey]:
        """All stored keys (with `revoked`: the revoked ones too), oldest first."""
        where = "" if revoked else " WHERE revoked_ts IS NULL"
        sql = f"SELECT {', '.join(_KEY_COLS)} FROM llmroute_api_keys{where} ORDER BY created_ts, id"
        return await self.store.arun(lambda b: [_key_row(r) for r in _Sql(b).fetch(sql)])

    async def acreate(
        self,
        key_id: str,
        sha256: str,
        *,
        budget_usd_day: float | None = None,
        budget_usd_month: float | None = None,
        rpm: int | None = None,
        aliases: list[str] | None = None,
    ) -> StoredKey | None:
        """Store a new key; None when the id is taken (by a live or a revoked key)."""
        now = self.clock()
        row = (
            key_id,
            sha256,
            budget_usd_day,
            budget_usd_month,
            rpm,
            None if aliases is None else orjson.dumps(aliases).decode(),
            now,
            now,
            None,
        )

        def go(b: Any) -> bool:
            sql = _Sql(b)
            if sql.fetch("SELECT 1 FROM llmroute_api_keys WHERE id = ?", key_id):
                return False
            sql.execute(
                f"INSERT INTO llmroute_api_keys ({', '.join(_KEY_COLS)}) VALUES "
                f"({', '.join('?' for _ in _KEY_COLS)})",
                *row,
            )
            return True

        if not await self.store.arun(go):
            return None
        return _key_row(row)

    async def aupdate(self, key_id: str, fields: dict[str, Any]) -> StoredKey | None:
        """Change a live key's budget_usd_day / budget_usd_month / rpm / aliases (a None value
        removes that limit); None when there is no live key `key_id`."""
        allowed = ("budget_usd_day", "budget_usd_month", "rpm", "aliases")
        sets = {k: v for k, v in fields.items() if k in allowed}
        if "aliases" in sets and sets["aliases"] is not None:
            sets["aliases"] = orjson.dumps(sets["aliases"]).decode()
        now = self.clock()

        def go(b: Any) -> StoredKey | None:
            sql = _Sql(b)
            assign = ", ".join([f"{k} = ?" for k in sets] + ["updated_ts = ?"])
            n = sql.execute(
                f"UPDATE llmroute_api_keys SET {assign} WHERE id = ? AND revoked_ts IS NULL",
                *sets.values(),
                now,
                key_id,
            )
            if not n:
                return None
            rows = sql.fetch(f"SELECT {', '.join(_KEY_COLS)} FROM llmroute_api_keys WHERE id = ?", key_id)
            return _key_row(rows[0]) if rows else None

        return await self.store.arun(go)

    async def arevoke(self, key_id: str) -> bool:
        """Revoke a live key; False when there is no live key `key_id`."""
        now = self.clock()

        def go(b: Any) -> bool:
            return bool(
                _Sql(b).execute(
                    "UPDATE llmroute_api_keys SET revoked_ts = ?, updated_ts = ? "
                    "WHERE id = ? AND revoked_ts IS NULL",
                    now,
                    now,
                    key_id,
                )
            )

        return await self.store.arun(go)

    async def astamp(self) -> tuple[int, float]:
        """(number of stored keys, latest change time): moves with every create, update and revoke."""
        sql = "SELECT COUNT(*), MAX(updated_ts) FROM llmroute_api_keys"

        def go(b: Any) -> tuple[int, float]:
            n, ts = _Sql(b).fetch(sql)[0]
            return int(n), float(ts or 0.0)

        return await self.store.arun(go)

    async def areload_stamp(self) -> float:
        """The time of the newest successful config reload in the audit log (0: none): gateways
        sharing the store poll it to pick up another host's reload."""
        sql = "SELECT MAX(ts) FROM llmroute_admin_audit WHERE action = 'config.reload'"

        def go(b: Any) -> float:
            return float(_Sql(b).fetch(sql)[0][0] or 0.0)

        return await self.store.arun(go)

    # ---- audit --------------------------------------------------------------------------------

    async def aaudit(self, action: str, target: str | None, actor: str, detail: dict[str, Any]) -> None:
        """Append one admin action to the audit log (`detail` must hold no secret)."""
        row = (self.clock(), action, target, actor, orjson.dumps(detail).decode())
        cols = ", ".join(_AUDIT_COLS)
        await self.store.arun(
            lambda b: _Sql(b).execute(
                f"INSERT INTO llmroute_admin_audit ({cols}) VALUES (?, ?, ?, ?, ?)", *row
            )
        )

    async def aaudit_log(self, limit: int = 100, since: float | None = None) -> list[dict[str, Any]]:
        """The newest admin actions first (at most `limit`, optionally since unix time `since`)."""
        where, args = ("", [int(limit)]) if since is None else (" WHERE ts >= ?", [float(since), int(limit)])
        sql = f"SELECT {', '.join(_AUDIT_COLS)} FROM llmroute_admin_audit{where} ORDER BY ts DESC LIMIT ?"

        def go(b: Any) -> list[dict[str, Any]]:
            out = []
            for r in _Sql(b).fetch(sql, *args):
                d = dict(zip(_AUDIT_COLS, r, strict=True))
                d["detail"] = orjson.loads(d["detail"]) if d["detail"] else {}
                out.append(d)
            return out

        return await self.store.arun(go)


class KeyGeneration:
    """A counter of key changes shared by the worker processes (see the module docstring).

    `folder` (the workers' shared folder) holds it in `keys.generation`, memory-mapped; without a
    folder it lives in this process.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self._local = [0, 0]
        self._lock = threading.Lock()
        self._fd = -1
        self._mm: mmap.mmap | None = None
        self._v: memoryview | None = None
        if folder:
            path = Path(folder) / "keys.generation"
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size < 16:
                    os.ftruncate(self._fd, 16)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._mm = mmap.mmap(self._fd, 16)
            self._v = memoryview(self._mm).cast("q")

    @property
    def value(self) -> int:
        """The current generation (hot path: one memory read)."""
        v = self._v
        return self._local[0] if v is None else v[0]

    @property
    def config_value(self) -> int:
        """How many config reloads there were (a worker re-reads the config file when it moved)."""
        v = self._v
        return self._local[1] if v is None else v[1]

    def bump(self, *, config: bool = False) -> int:
        """Count one change (after it is in the store; `config`: a config reload, counted in both
        counters); returns the new generation."""
        with self._lock:
            v: Any = self._v if self._v is not None else self._local
            if self._v is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if config:
                    v[1] += 1
                v[0] += 1
                return int(v[0])
            finally:
                if self._v is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap the shared counter (the other workers keep theirs)."""
        if self._v is not None:
            self._v.release()
            self._v = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
