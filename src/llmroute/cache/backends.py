"""Storage for the response cache: SQLite (default, file or in-memory) and Redis.

An entry is (key, bucket, created, expires, embedding bytes, response JSON). `bucket` groups
entries that may match semantically (same scope, same conversation context, same critical-token
signature), so a lookup only scores a handful of candidates.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Entry:
    """One cached response."""

    key: str
    bucket: str
    created: float
    expires: float
    emb: bytes
    response: str


class CacheBackend(Protocol):
    """Where entries live."""

    def get(self, key: str) -> Entry | None:
        """The live entry stored under `key`, or None."""
        ...

    def put(self, entry: Entry) -> None:
        """Store (or replace) an entry."""
        ...

    def candidates(self, bucket: str, limit: int) -> list[Entry]:
        """Up to `limit` live entries of `bucket`, newest first."""
        ...

    def clear(self) -> None:
        """Drop everything."""
        ...

    def __len__(self) -> int: ...


class SQLiteBackend:
    """SQLite store (":memory:" by default); safe to share between threads."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS cache_entries (key TEXT PRIMARY KEY, bucket TEXT NOT NULL, "
                "created REAL NOT NULL, expires REAL NOT NULL, emb BLOB, response TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS cache_bucket ON cache_entries(bucket, created)")
        self._puts = 0

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, bucket, created, expires, emb, response FROM cache_entries WHERE key=? AND expires>?",
                (key, time.time()),
            ).fetchone()
        return Entry(*row) if row else None

    def put(self, entry: Entry) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?, ?, ?)",
                (entry.key, entry.bucket, entry.created, entry.expires, entry.emb, entry.response),
            )
            self._puts += 1
            if self._puts % 256 == 0:
                self._db.execute("DELETE FROM cache_entries WHERE expires<=?", (time.time(),))

    def candidates(self, bucket: str, limit: int) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, bucket, created, expires, emb, response FROM cache_entries "
                "WHERE bucket=? AND expires>? ORDER BY created DESC LIMIT ?",
                (bucket, time.time(), limit),
            ).fetchall()
        return [Entry(*r) for r in rows]

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM cache_entries")

    def __len__(self) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM cache_entries WHERE expires>?", (time.time(),)
                ).fetchone()[0]
            )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class RedisBackend:
    """Redis store: a hash per entry (`<prefix>e:<key>`) and a sorted set per bucket.

    client: a `redis.Redis` (or `fakeredis.FakeRedis`) instance; or pass url= to create one.
    Entries expire through Redis TTLs; bucket members are pruned when found stale.
    """

    def __init__(
        self, client: Any = None, *, url: str | None = None, prefix: str = "llmroute:cache:"
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("RedisBackend needs a client or a url (e.g. redis://localhost:6379/0)")
            import redis  # optional dependency: pip install 'llmroute[redis]'

            client = redis.Redis.from_url(url)
        self.r = client
        self.prefix = prefix

    def _ek(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _bk(self, bucket: str) -> str:
        return f"{self.prefix}b:{bucket}"

    @staticmethod
    def _entry(key: str, h: dict) -> Entry | None:
        if not h:
            return None
        g = {(k.decode() if isinstance(k, bytes) else k): v for k, v in h.items()}
        exp = float(g["expires"])
        if exp <= time.time():
            return None
        resp = g["response"]
        return Entry(
            key,
            (g["bucket"].decode() if isinstance(g["bucket"], bytes) else g["bucket"]),
            float(g["created"]),
            exp,
            g["emb"] if isinstance(g["emb"], bytes) else bytes(g["emb"], "latin1"),
            resp.decode() if isinstance(resp, bytes) else resp,
        )

    def get(self, key: str) -> Entry | None:
        return self._entry(key, self.r.hgetall(self._ek(key)))

    def put(self, entry: Entry) -> None:
        ttl = max(1, int(entry.expires - time.time() + 0.999))
        p = self.r.pipeline()
        p.hset(
            self._ek(entry.key),
            mapping={
                "bucket": entry.bucket, "created": entry.created, "expires": entry.expires,
                "emb": entry.emb, "response": entry.response,
            },
        )  # fmt: skip
        p.expire(self._ek(entry.key), ttl)
        p.zadd(self._bk(entry.bucket), {entry.key: entry.created})
        p.expire(self._bk(entry.bucket), ttl)
        p.execute()

    def candidates(self, bucket: str, limit: int) -> list[Entry]:
        keys = [
            k.decode() if isinstance(k, bytes) else k
            for k in self.r.zrevrange(self._bk(bucket), 0, limit - 1)
        ]
        if not keys:
            return []
        p = self.r.pipeline()
        for k in keys:
            p.hgetall(self._ek(k))
        out, stale = [], []
        for k, h in zip(keys, p.execute(), strict=True):
            e = self._entry(k, h)
            (out.append(e) if e else stale.append(k))
        if stale:
            self.r.zrem(self._bk(bucket), *stale)
        return out

    def clear(self) -> None:
        for k in self.r.scan_iter(f"{self.prefix}*"):
            self.r.delete(k)

    def __len__(self) -> int:
        return sum(1 for _ in self.r.scan_iter(f"{self.prefix}e:*"))
