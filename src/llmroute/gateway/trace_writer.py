"""The trace store's writer (`TraceStore`): one ordered queue in front of one database connection
owned by a background thread; group commit, the kill -9 journal and retention. Created by
`llmroute.gateway.store.open_store` (whose docstring has the interface); the backends are in
`llmroute.gateway.store_sqlite` and `llmroute.gateway.store_postgres`.

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
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from llmroute.gateway.store_schema import (
    StoreError,
    _Backend,
    _redact,
    normalize_record,
    normalize_row,
    parse_time,
)

log = logging.getLogger("llmroute.gateway.store")

_PRUNE_CHUNK = 10_000  # rows per DELETE when enforcing retention (keeps each write transaction short)


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
