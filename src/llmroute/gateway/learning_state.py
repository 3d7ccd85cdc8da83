"""The online learner's shared state (`llmroute.gateway.learning` has the design): the rank-1
terms one outcome adds (`Outcome` in, `Delta` out), the `LearnerState` protocol every backend
follows, its SQLite backend (`SQLiteLearnerState`: `learner_deltas`, `learner_active`,
`learner_snapshots` in WAL mode) and where a gateway's state lives (`learner_state_path`,
`open_learner_state`; the Redis backend is `llmroute.gateway.learning_redis`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from llmroute.gateway.config import GatewayConfig, LearningConfig

#: kinds of snapshot a running worker reloads when a newer one appears (a new starting point)
_BASES = ("initial", "reset", "rollback")
#: one delta row (weight +1 learns, -1 undoes an earlier row); every insert path uses it
_INSERT_DELTA = (
    "INSERT INTO learner_deltas (alias, request_id, model, x, residual, cost_residual, weight, source, ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(slots=True)
class Outcome:
    """One graded decision, ready for the learner: `x` is the served model's context row.
    Treated as immutable (not frozen: a frozen dataclass's init costs ~1.5 us more, per outcome)."""

    alias: str
    request_id: str
    model: str
    x: np.ndarray
    residual: float
    cost_residual: float | None
    source: str
    explicit: bool


@dataclass(slots=True)
class Delta:
    """One rank-1 term of an alias's posterior (weight +1: learn, -1: undo an earlier one).
    Treated as immutable (not frozen, as `Outcome`). `learned`: the term of an outcome the
    caller learned already (published with `learned=True`): its seq is passed, not learned again."""

    seq: int
    model: str
    x: np.ndarray
    residual: float
    cost_residual: float | None
    weight: float
    learned: bool = False


class LearnerState(Protocol):
    """Where the learners' outcome terms and snapshots live (shared by a host's workers)."""

    def apply(self, outcomes: Sequence[Outcome]) -> list[str]:
        """Record outcomes; per outcome "applied", "replaced" (an earlier one undone) or
        "ignored" (a repeat, or an implicit one after another outcome)."""
        ...

    def deltas(self, alias: str, after: int) -> list[Delta]:
        """The alias's terms with a sequence number above `after`, in order."""
        ...

    def apply_and_pull(
        self, outcomes: Sequence[Outcome], after: dict[str, int]
    ) -> tuple[list[str], dict[str, tuple[int, list[Delta] | None]]]:
        """`apply`, then per alias (-> last applied seq) its newest base id and new deltas (None:
        that seq's terms are no longer kept: reload from the newest snapshot)."""
        ...

    def head(self, alias: str) -> int:
        """The alias's newest delta sequence number (0: none)."""
        ...

    def rollback(self, alias: str, snapshot_id: int) -> int:
        """Make a snapshot the alias's state again (a new "rollback" snapshot); its id."""
        ...

    def snapshot(self, alias: str, seq: int, data: bytes, kind: str) -> int | None:
        """Store a learner snapshot that includes the terms up to `seq`; its id (None: one of
        this kind at this seq exists)."""
        ...

    def load(self, alias: str, snapshot_id: int | None = None) -> tuple[int, int, bytes, str] | None:
        """(id, seq, data, kind) of the newest snapshot (or `snapshot_id`), None when none."""
        ...

    def snapshots(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Every snapshot's id, alias, kind, seq, ts (and outcomes counted), newest first."""
        ...

    def latest_base(self, alias: str) -> int:
        """The id of the newest snapshot a running learner must restart from (0: none)."""
        ...

    def close(self) -> None: ...


class SQLiteLearnerState:
    """`LearnerState` in one SQLite file (WAL; ':memory:' for one process). Thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._quick: sqlite3.Connection | None = None  # see try_apply_and_pull
        # base snapshot id per alias, valid while the snapshots' AUTOINCREMENT counter is `_bases_at`
        self._bases: dict[str, int] = {}
        self._bases_at = -1
        self.lock = threading.Lock()
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS learner_deltas (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, alias TEXT NOT NULL, request_id TEXT NOT NULL,
                model TEXT NOT NULL, x BLOB NOT NULL, residual REAL NOT NULL, cost_residual REAL,
                weight REAL NOT NULL, source TEXT NOT NULL, ts REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS learner_deltas_alias ON learner_deltas (alias, seq);
            CREATE TABLE IF NOT EXISTS learner_active (
                alias TEXT NOT NULL, request_id TEXT NOT NULL, seq INTEGER NOT NULL,
                explicit INTEGER NOT NULL, PRIMARY KEY (alias, request_id));
            CREATE TABLE IF NOT EXISTS learner_snapshots (
                id INTEGER PRIMARY KEY AUTOINCREMENT, alias TEXT NOT NULL, kind TEXT NOT NULL,
                seq INTEGER NOT NULL, ts REAL NOT NULL, outcomes REAL NOT NULL, data BLOB NOT NULL,
                UNIQUE (alias, kind, seq));
            """
        )

    @contextlib.contextmanager
    def _tx(self):  # type: ignore[no-untyped-def]
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            _commit(self.db)

    def apply(self, outcomes: Sequence[Outcome]) -> list[str]:
        with self._tx():
            return self._apply(outcomes)

    def _apply(
        self,
        outcomes: Sequence[Outcome],
        db: sqlite3.Connection | None = None,
        own: list[tuple[str, Delta]] | None = None,
        head: int | None = None,
    ) -> list[str]:
        """`apply` inside a write transaction (`_tx`): the usual batch (requests graded for the
        first time, each once) in two multi-row inserts, else outcome by outcome. `own` gets
        (alias, delta) of every row written, built from the outcomes' own arrays (what a read
        back would return), so the caller need not read its own rows back. `head`: the deltas'
        AUTOINCREMENT counter read in this transaction (`_heads`), if the caller has it."""
        db = self.db if db is None else db
        fast = self._apply_new(outcomes, db, own, head)
        if fast is not None:
            return fast
        out: list[str] = []
        now = time.time()

        bases: dict[str, int] = {}
        for o in outcomes:
            act = db.execute(
                "SELECT seq, explicit FROM learner_active WHERE alias = ? AND request_id = ?",
                (o.alias, o.request_id),
            ).fetchone()
            if act is not None:
                base = bases.get(o.alias)
                if base is None:  # once per alias and batch, only for a request graded before
                    row = db.execute(
                        "SELECT seq FROM learner_snapshots WHERE alias = ? AND kind IN "
                        "('initial', 'reset', 'rollback') ORDER BY id DESC LIMIT 1",
                        (o.alias,),
                    ).fetchone()
                    base = bases[o.alias] = 0 if row is None else int(row[0])
                if act[0] <= base:
                    act = None  # learned before the state was rolled back: no longer in the posterior
            result = "applied"
            if act is not None:  # a request graded before (the delta read only then)
                old = db.execute(
                    "SELECT model, x, residual, cost_residual, source FROM learner_deltas WHERE seq = ?",
                    (act[0],),
                ).fetchone()
                same = old[0] == o.model and old[2] == o.residual and old[4] == o.source
                if not o.explicit or same:
                    out.append("ignored")
                    continue
                cur = db.execute(
                    _INSERT_DELTA, (o.alias, o.request_id, old[0], old[1], old[2], old[3], -1.0, "undo", now)
                )
                if own is not None:
                    x_old = np.frombuffer(old[1], dtype=np.float64)
                    own.append((o.alias, Delta(int(cur.lastrowid), old[0], x_old, old[2], old[3], -1.0)))
                result = "replaced"
            x = np.ascontiguousarray(o.x, dtype=np.float64)
            residual, cost = float(o.residual), _real(o.cost_residual)
            cur = db.execute(
                _INSERT_DELTA,
                (o.alias, o.request_id, o.model, x.tobytes(), residual, cost, 1.0, o.source, now),
            )
            if own is not None:
                own.append((o.alias, Delta(int(cur.lastrowid), o.model, x, residual, cost, 1.0)))
            db.execute(
                "INSERT OR REPLACE INTO learner_active (alias, request_id, seq, explicit) VALUES (?, ?, ?, ?)",
                (o.alias, o.request_id, cur.lastrowid, int(o.explicit)),
            )
            out.append(result)
        return out

    def _apply_new(
        self,
        outcomes: Sequence[Outcome],
        db: sqlite3.Connection,
        own: list[tuple[str, Delta]] | None = None,
        head: int | None = None,
    ) -> list[str] | None:
        """All "applied" in two `executemany` when no request of the batch has an outcome yet
        (none active, none twice in the batch); None (nothing written) otherwise. Inside the
        write transaction the new deltas get consecutive sequence numbers (AUTOINCREMENT, one
        writer), checked after the insert. A batch of one (with `head`): its request's active
        row inserted first unless one exists (then None, nothing written), no lookup before."""
        if len(outcomes) == 1 and head is not None:
            return self._apply_one(outcomes[0], db, own, head)
        if len(outcomes) < 2:
            return None
        keys = {(o.alias, o.request_id) for o in outcomes}
        if len(keys) != len(outcomes):
            return None
        for alias in {o.alias for o in outcomes}:
            ids = [o.request_id for o in outcomes if o.alias == alias]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                if db.execute(
                    f"SELECT 1 FROM learner_active WHERE alias = ? AND request_id IN ({marks}) LIMIT 1",
                    (alias, *chunk),
                ).fetchone():
                    return None  # one was graded before (perhaps before a rollback): one by one
        if head is None:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'learner_deltas'").fetchone()
            head = 0 if row is None else int(row[0])
        start = head
        now = time.time()
        xs = [np.ascontiguousarray(o.x, dtype=np.float64) for o in outcomes]
        res = [float(o.residual) for o in outcomes]
        costs = [_real(o.cost_residual) for o in outcomes]
        db.executemany(
            _INSERT_DELTA,
            [
                (o.alias, o.request_id, o.model, x.tobytes(), r, c, 1.0, o.source, now)
                for o, x, r, c in zip(outcomes, xs, res, costs, strict=True)
            ],
        )
        end = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'learner_deltas'").fetchone()
        if end is None or int(end[0]) != start + len(outcomes):
            raise RuntimeError("learner_deltas sequence numbers were not consecutive; outcomes not recorded")
        if own is not None:
            own.extend(
                (o.alias, Delta(start + 1 + i, o.model, x, r, c, 1.0))
                for i, (o, x, r, c) in enumerate(zip(outcomes, xs, res, costs, strict=True))
            )
        db.executemany(
            "INSERT INTO learner_active (alias, request_id, seq, explicit) VALUES (?, ?, ?, ?)",
            [(o.alias, o.request_id, start + 1 + i, int(o.explicit)) for i, o in enumerate(outcomes)],
        )
        return ["applied"] * len(outcomes)

    @staticmethod
    def _apply_one(
        o: Outcome, db: sqlite3.Connection, own: list[tuple[str, Delta]] | None, head: int
    ) -> list[str] | None:
        """`_apply_new` of one outcome: ["applied"], or None (nothing written) when its request
        has an active outcome (then `_apply` looks at it)."""
        cur = db.execute(
            "INSERT OR IGNORE INTO learner_active (alias, request_id, seq, explicit) VALUES (?, ?, ?, ?)",
            (o.alias, o.request_id, head + 1, int(o.explicit)),
        )
        if cur.rowcount != 1:
            return None
        x = np.ascontiguousarray(o.x, dtype=np.float64)
        residual, cost = float(o.residual), _real(o.cost_residual)
        cur = db.execute(
            _INSERT_DELTA,
            (o.alias, o.request_id, o.model, x.tobytes(), residual, cost, 1.0, o.source, time.time()),
        )
        if cur.lastrowid != head + 1:
            raise RuntimeError("learner_deltas sequence number was not the next one; outcome not recorded")
        if own is not None:
            own.append((o.alias, Delta(head + 1, o.model, x, residual, cost, 1.0)))
        return ["applied"]

    def apply_and_pull(
        self, outcomes: Sequence[Outcome], after: dict[str, int], *, learned: bool = False
    ) -> tuple[list[str], dict[str, tuple[int, list[Delta]]]]:
        """`apply(outcomes)`, then per alias of `after` (alias -> last applied seq) its newest
        base snapshot id and the deltas after that seq: one thread hop and one transaction for
        a batch of outcomes (none: the reads alone). The batch's own deltas are not read back:
        they come from the outcomes' arrays, after the other writers' (`_record_and_pull`).
        `learned`: the caller's learner has the outcomes' terms already (local-first: published
        after being learned): their rows come back marked `Delta.learned` (the seq to pass); the
        undo rows of replaced outcomes are not marked (the caller learns them), and an outcome
        "ignored" here is for the caller to undo."""
        if not outcomes:
            with self.lock:
                return [], self._pull_all(after, self.db)
        with self._tx():
            return self._record_and_pull(outcomes, after, self.db, learned)

    def try_apply_and_pull(
        self, outcomes: Sequence[Outcome], after: dict[str, int], *, learned: bool = False
    ) -> tuple[list[str], dict[str, tuple[int, list[Delta]]]] | None:
        """`apply_and_pull` without waiting, for the event loop (no thread hop for a small
        batch): None, with nothing written, when another thread of this process or another
        process is writing the state (then run `apply_and_pull` on a thread). Runs on its own
        connection (busy timeout 0, no automatic checkpoint: `checkpoint` does that off the
        loop). No outcomes: the pull alone, a read (one query when no writer added terms or
        snapshots since; None if SQLite answers busy). `learned`: as in `apply_and_pull`."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            db = self._quick_db()
            if not outcomes:
                try:
                    return [], self._pull_all(after, db)
                except sqlite3.OperationalError:  # busy (e.g. another process recovering the WAL)
                    return None
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # locked by another process
                return None
            try:
                done = self._record_and_pull(outcomes, after, db, learned)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            _commit(db)
            return done
        finally:
            self.lock.release()

    def _record_and_pull(
        self,
        outcomes: Sequence[Outcome],
        after: dict[str, int],
        db: sqlite3.Connection,
        learned: bool = False,
    ) -> tuple[list[str], dict[str, tuple[int, list[Delta]]]]:
        """Inside a write transaction: record `outcomes`, then per alias of `after` its base
        and new deltas: the other writers' rows (read: sequence numbers up to the head before
        this transaction wrote, none to read when that head is not past `after`), then this
        batch's own rows, built from the outcomes (the same values a read would return; with
        `learned`, the outcomes' +1 rows marked `Delta.learned`)."""
        heads = self._heads(db)
        own: list[tuple[str, Delta]] = []
        results = self._apply(outcomes, db, own, heads[0])
        if learned:  # the outcomes' own terms (weight +1); an undo row (-1) is new to the caller
            for _, d in own:
                d.learned = d.weight > 0
        pulled: dict[str, tuple[int, list[Delta]]] = {}
        for alias, seq in after.items():
            base, deltas = self._pull(alias, seq, db, heads)
            deltas.extend(d for a, d in own if a == alias and d.seq > seq)
            pulled[alias] = (base, deltas)
        return results, pulled

    def _quick_db(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            return self.db
        if self._quick is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=0.0, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._quick = db
        return self._quick

    def checkpoint(self) -> None:
        """Move the WAL's committed pages into the database file (PASSIVE: never waits for a
        reader); for a thread, as `try_apply_and_pull`'s connection does not."""
        if self.path != ":memory:":
            with self.lock:
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @staticmethod
    def _heads(db: sqlite3.Connection) -> tuple[int, int]:
        """(newest delta seq, newest snapshot id) of every alias: the AUTOINCREMENT counters,
        which only grow (with the lock held)."""
        heads = dict(
            db.execute(
                "SELECT name, seq FROM sqlite_sequence WHERE name IN ('learner_deltas', 'learner_snapshots')"
            ).fetchall()
        )
        return int(heads.get("learner_deltas", 0)), int(heads.get("learner_snapshots", 0))

    def _pull_all(self, after: dict[str, int], db: sqlite3.Connection) -> dict[str, tuple[int, list[Delta]]]:
        """`_pull` of every alias of `after` (with the lock held), one head check for all."""
        if not after:
            return {}
        heads = self._heads(db)
        return {a: self._pull(a, seq, db, heads) for a, seq in after.items()}

    def _pull(
        self, alias: str, after: int, db: sqlite3.Connection, heads: tuple[int, int]
    ) -> tuple[int, list[Delta]]:
        """(newest base snapshot id, deltas with a seq in (`after`, head]) of an alias (with the
        lock held); `heads` (`_heads`): no query for deltas when the head is not past `after`,
        and the base ids known while no snapshot was added."""
        if heads[1] != self._bases_at:  # a snapshot was added (by anyone): read the bases again
            self._bases, self._bases_at = {}, heads[1]
        base = self._bases.get(alias)
        if base is None:
            base = self._bases[alias] = int(
                db.execute(
                    "SELECT COALESCE(MAX(id), 0) FROM learner_snapshots WHERE alias = ? AND kind IN "
                    "('initial', 'reset', 'rollback')",
                    (alias,),
                ).fetchone()[0]
            )
        if heads[0] <= after:
            return base, []
        rows = db.execute(
            "SELECT seq, model, x, residual, cost_residual, weight FROM learner_deltas "
            "WHERE alias = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (alias, after, heads[0]),
        ).fetchall()
        frombuffer = np.frombuffer
        return base, [Delta(s, m, frombuffer(x, dtype=np.float64), r, c, w) for s, m, x, r, c, w in rows]

    def deltas(self, alias: str, after: int) -> list[Delta]:
        with self.lock:
            rows = self.db.execute(
                "SELECT seq, model, x, residual, cost_residual, weight FROM learner_deltas "
                "WHERE alias = ? AND seq > ? ORDER BY seq",
                (alias, after),
            ).fetchall()
        return [Delta(s, m, np.frombuffer(x, dtype=np.float64), r, c, w) for s, m, x, r, c, w in rows]

    def head(self, alias: str) -> int:
        """The alias's newest delta sequence number (0: none)."""
        with self.lock:
            row = self.db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM learner_deltas WHERE alias = ?", (alias,)
            ).fetchone()
        return int(row[0])

    def snapshot(self, alias: str, seq: int, data: bytes, kind: str, outcomes: float = 0.0) -> int | None:
        with self._tx():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO learner_snapshots (alias, kind, seq, ts, outcomes, data) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (alias, kind, int(seq), time.time(), float(outcomes), data),
            )
            return int(cur.lastrowid) if cur.rowcount else None

    def load(self, alias: str, snapshot_id: int | None = None) -> tuple[int, int, bytes, str] | None:
        with self.lock:
            if snapshot_id is None:
                row = self.db.execute(
                    "SELECT id, seq, data, kind FROM learner_snapshots WHERE alias = ? ORDER BY id DESC LIMIT 1",
                    (alias,),
                ).fetchone()
            else:
                row = self.db.execute(
                    "SELECT id, seq, data, kind FROM learner_snapshots WHERE alias = ? AND id = ?",
                    (alias, int(snapshot_id)),
                ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]), str(row[3]))

    def snapshots(self, alias: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT id, alias, kind, seq, ts, outcomes FROM learner_snapshots"
        args: tuple[Any, ...] = ()
        if alias is not None:
            q, args = q + " WHERE alias = ?", (alias,)
        with self.lock:
            rows = self.db.execute(q + " ORDER BY id DESC", args).fetchall()
        return [
            {"id": i, "alias": a, "kind": k, "seq": s, "ts": t, "outcomes": n} for i, a, k, s, t, n in rows
        ]

    def latest_base(self, alias: str) -> int:
        with self.lock:
            row = self.db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM learner_snapshots WHERE alias = ? AND kind IN "
                "('initial', 'reset', 'rollback')",
                (alias,),
            ).fetchone()
        return int(row[0])

    def rollback(self, alias: str, snapshot_id: int) -> int:
        """Make snapshot `snapshot_id` the alias's state again: a "rollback" copy of it at the
        current sequence number (outcomes recorded until now are dropped, later ones apply).
        Returns the new snapshot's id; KeyError for an unknown id."""
        with self._tx():
            row = self.db.execute(
                "SELECT data, outcomes FROM learner_snapshots WHERE alias = ? AND id = ?",
                (alias, int(snapshot_id)),
            ).fetchone()
            if row is None:
                raise KeyError(f"no snapshot {snapshot_id} of alias {alias!r}")
            head = self.db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM learner_deltas WHERE alias = ?", (alias,)
            ).fetchone()[0]
            cur = self.db.execute(
                "INSERT INTO learner_snapshots (alias, kind, seq, ts, outcomes, data) VALUES (?, ?, ?, ?, ?, ?)",
                (alias, "rollback", int(head), time.time(), float(row[1]), row[0]),
            )
            return int(cur.lastrowid)

    def close(self) -> None:
        with self.lock:
            if self._quick is not None:
                self._quick.close()
            self.db.close()


def _commit(db: sqlite3.Connection) -> None:
    """COMMIT, and where the COMMIT itself fails (disk full, I/O error) roll back whatever SQLite
    left open: an open transaction would keep the write lock, and every later publication, of
    every worker, would wait out the busy timeout and fail."""
    try:
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _real(v: float | None) -> float | None:
    """A REAL column's value as SQLite returns it (None stays None)."""
    return None if v is None else float(v)


def learner_state_path(config: GatewayConfig, learning: LearningConfig | None = None) -> str:
    """Where the learner state lives: `learning.state` (relative to the config's folder), else
    the gateway's `state: redis://...` URL (replicas on several hosts), else beside a SQLite trace store (`<db>.learner`), else ':memory:' (memory:// store: one process)
    or `llmroute-learner.sqlite` in the config's folder (Postgres store)."""
    if learning is not None and learning.state:
        return str(config.resolve_path(learning.state))
    if config.state:
        return config.state
    url = config.store.url
    if url.startswith("memory://"):
        return ":memory:"
    if url.startswith(("postgres://", "postgresql://")):
        return str(Path(config.base_dir) / "llmroute-learner.sqlite")
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return str(config.resolve_path(path)) + ".learner"


def open_learner_state(path: str) -> LearnerState:
    """The learner state at `path` (see `learner_state_path`): a Redis URL or a SQLite file."""
    from llmroute.gateway.learning_redis import RedisLearnerState, is_redis_url

    if is_redis_url(path):
        return RedisLearnerState(path)
    return SQLiteLearnerState(path)
