"""Trace store: off-hot-path writes, flush/close draining, queries, feedback, restarts, spend."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from llmroute.gateway.store import (
    TRACE_FIELDS,
    StoreError,
    TraceStore,
    normalize_record,
    normalize_row,
    open_store,
    parse_time,
)


def _rec(i: int, **kw: object) -> dict:
    base = {
        "request_id": f"req-{i:05d}",
        "ts": 1_700_000_000.0 + i,
        "key_id": "team-a" if i % 2 else "team-b",
        "alias": "llmroute/auto" if i % 3 else None,
        "model": "fake-strong" if i % 4 == 0 else "fake-weak",
        "status": 200,
        "candidates": [
            {"model": "fake-weak", "quality": 0.61, "cost": 1e-5},
            {"model": "fake-strong", "quality": 0.83, "cost": 4e-4},
        ],
        "fallbacks": [],
        "overhead_ms": 0.4,
        "upstream_ms": 12.0,
        "total_ms": 12.4,
        "tokens_in": 20,
        "tokens_out": 7,
        "cost_usd": 2.1e-5,
        "reason": "tradeoff=0.0 best q-λc",
    }
    base.update(kw)
    return base


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'traces.sqlite'}"


def test_write_flush_query_and_filters(db: str) -> None:
    with open_store(db, flush_interval_s=30) as st:
        for i in range(200):
            st.write(_rec(i))
        st.flush_sync()
        assert st.count() == 200
        rows = st.query(limit=None)
        assert len(rows) == 200
        assert [r["ts"] for r in rows] == sorted((r["ts"] for r in rows), reverse=True)  # newest first
        assert len(st.query(limit=7)) == 7
        strong = st.query(model="fake-strong", limit=None)
        assert strong and all(r["model"] == "fake-strong" for r in strong)
        assert len(strong) == 50
        both = st.query(model="fake-weak", key_id="team-a", alias="llmroute/auto", limit=None)
        assert both == [
            r
            for r in rows
            if r["model"] == "fake-weak" and r["key_id"] == "team-a" and r["alias"] == "llmroute/auto"
        ]
        window = st.query(since=1_700_000_000 + 10, until=1_700_000_000 + 20, limit=None)
        assert sorted(r["request_id"] for r in window) == [f"req-{i:05d}" for i in range(10, 20)]
        one = st.get("req-00004")
        assert one is not None
        assert one["candidates"][1] == {"model": "fake-strong", "quality": 0.83, "cost": 4e-4}
        assert one["tokens_in"] == 20 and one["cost_usd"] == pytest.approx(2.1e-5)
        assert st.get("nope") is None
        assert st.prune(1_700_000_000 + 150) == 150
        assert st.count() == 50


def test_write_is_non_blocking_and_never_raises(db: str) -> None:
    with open_store(db, flush_interval_s=30, batch_size=10_000) as st:
        for i in range(2000):
            st.write(_rec(i))
        st.write({"tokens_in": "not a number", "request_id": "bad"})  # malformed: dropped later, no raise
        # writes only queue: the writer has not been woken (long interval, batch not reached)
        assert st.stats()["written"] == 0 and st.queued == 2001
        st.flush_sync()
        assert st.count() == 2000
        assert st.stats()["errors"] == 1


def test_close_drains_and_restart_keeps_every_trace(db: str) -> None:
    st = open_store(db, flush_interval_s=60, batch_size=64)
    ids = []
    for i in range(1500):
        st.write(_rec(i))
        ids.append(f"req-{i:05d}")
    st.close_sync()  # no flush: close must drain everything
    st.close_sync()  # idempotent
    st.write(_rec(99999))  # after close: counted as dropped, no exception
    assert st.stats()["dropped"] == 1

    again = open_store(db)
    try:
        rows = again.query(limit=None)
        assert sorted(r["request_id"] for r in rows) == ids
    finally:
        again.close_sync()


def test_wal_mode_and_concurrent_reader(db: str, tmp_path: Path) -> None:
    with open_store(db) as st:
        st.write(_rec(1))
        st.flush_sync()
        con = sqlite3.connect(tmp_path / "traces.sqlite")
        try:
            assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
            assert con.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 1
        finally:
            con.close()


def test_prompt_kept_only_when_asked(tmp_path: Path) -> None:
    rec = _rec(1, prompt="my secret prompt", response="the answer")
    with open_store(str(tmp_path / "a.db")) as st:
        st.write(rec)
        got = st.get("req-00001")
        assert got is not None and got["prompt"] is None and got["response"] is None
    with open_store(str(tmp_path / "b.db"), store_prompts=True, store_responses=True) as st:
        st.write(rec)
        got = st.get("req-00001")
        assert got is not None and got["prompt"] == "my secret prompt" and got["response"] == "the answer"


def test_schema_mapping_extra_latency_and_defaults(db: str) -> None:
    with open_store(db) as st:
        st.write(
            {
                "alias": "llmroute/cheap",
                "model": "fake-weak",
                "latency": {"overhead_ms": 0.3, "upstream_ms": 5.0, "total_ms": 5.3},
                "guards": {"pii": "redacted"},
                "cache": {"hit": False},
                "stream": True,
                "extra": {"router": "default"},
            }
        )
        (row,) = st.query()
        assert len(row["request_id"]) == 32  # generated
        assert abs(row["ts"] - time.time()) < 3600
        assert (row["overhead_ms"], row["upstream_ms"], row["total_ms"]) == (0.3, 5.0, 5.3)
        assert row["stream"] is True
        assert row["extra"] == {"router": "default", "guards": {"pii": "redacted"}, "cache": {"hit": False}}


@pytest.mark.parametrize("keep", [False, True])
def test_write_row_stores_what_write_stores(tmp_path: Path, keep: bool) -> None:
    """The gateway's tuple form (`write_row`) gives the same stored record as the dict form,
    including conversions (bool, int-for-float, str subclasses) and the prompt/response filters."""

    class Name(str):
        pass

    recs = [
        _rec(1),
        _rec(2, stream=True, status=502, error="upstream", prompt="hi", response=[{"x": 1}], cost_usd=0),
        _rec(3, request_id="", ts=None, model=Name("fake-weak"), extra={"cache": "miss"}, ttft_ms=3),
        _rec(4, outcome={"quality": 1.0}, tokens_in=True, key_id=None, candidates=[]),
    ]
    for r in recs:
        rec = {k: r.get(k) for k in TRACE_FIELDS}
        row = tuple(rec[k] for k in TRACE_FIELDS)
        a = normalize_record(rec, store_prompts=keep, store_responses=keep)
        b = normalize_row(row, store_prompts=keep, store_responses=keep)
        if not rec["request_id"]:  # generated ids and write times differ
            a, b = a[2:], b[2:]
        assert a == b
        assert [type(x) for x in a] == [type(x) for x in b]
    with pytest.raises(ValueError, match="TRACE_FIELDS"):
        normalize_row(("x",), store_prompts=False, store_responses=False)

    st_dict = open_store(f"sqlite:///{tmp_path}/dict.db", store_prompts=keep, store_responses=keep)
    st_row = open_store(f"sqlite:///{tmp_path}/row.db", store_prompts=keep, store_responses=keep)
    for r in recs[:2] + recs[3:]:
        st_dict.write(r)
        st_row.write_row(tuple(r.get(k) for k in TRACE_FIELDS))
    assert st_dict.query(limit=None) == st_row.query(limit=None)
    st_dict.close_sync()
    st_row.close_sync()


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_multi_row_inserts_keep_every_record_and_upsert_order(tmp_path: Path, n: int) -> None:
    """Batches go to SQLite 64 rows per statement (the rest row by row): every record lands, and a
    request id written twice in one batch ends as its last write, keeping an earlier outcome."""
    from llmroute.gateway.store import _SQLiteBackend

    b = _SQLiteBackend(str(tmp_path / "t.db"))
    assert b._multi == 64
    norm = lambda r: normalize_record(r, store_prompts=False, store_responses=False)  # noqa: E731
    rows = [norm(_rec(i)) for i in range(n)]
    rows.insert(n // 2, norm(_rec(0, status=503, outcome={"quality": 0.5})))  # same id as rows[0], later
    rows.append(norm(_rec(0, status=201)))
    b.insert(rows)
    assert b.count() == n
    got = {r["request_id"]: r for r in b.query({}, None)}
    assert got["req-00000"]["status"] == 201 and got["req-00000"]["outcome"] == {"quality": 0.5}
    assert got[f"req-{n - 1:05d}"]["tokens_in"] == 20
    b.close()


def test_none_values_written_as_null_store_what_binding_them_stores(tmp_path: Path) -> None:
    """The SQLite backend writes a row's None values as NULL in the statement (binding None is slow
    in Python's sqlite3): runs of rows with different None columns, chunks of 64 and the rest,
    and upserts store exactly what binding every value one row at a time stores, in the same order."""
    from llmroute.gateway.store import _SQLiteBackend

    norm = lambda r: normalize_record(r, store_prompts=True, store_responses=True)  # noqa: E731
    rows = []
    for i in range(150):
        kw: dict = {}
        if i % 7 == 0:
            kw.update(error="boom", ttft_ms=3.5, prompt="p", outcome={"quality": 1.0})
        if 40 <= i < 110:  # a long run of one pattern: a 64-row chunk and smaller ones
            kw.update(alias=None, key_id=None)
        rows.append(norm(_rec(i, **kw)))
    # rewrites of earlier ids: a None outcome keeps the stored one, other Nones overwrite
    rows.append(norm(_rec(0, status=503, prompt=None, error=None)))
    rows.append(norm(_rec(7, status=201, tokens_in=None)))
    fast = _SQLiteBackend(str(tmp_path / "fast.db"))
    fast.insert(rows[:100])
    fast.insert(rows[100:])
    ref = _SQLiteBackend(str(tmp_path / "ref.db"))
    for r in rows:  # the plain statement, every value bound
        ref.db.execute(ref._insert, r)
    q = "SELECT rowid, * FROM traces ORDER BY rowid"
    got, want = fast.db.execute(q).fetchall(), ref.db.execute(q).fetchall()
    assert len(got) == 150 and got == want
    assert any(None in r for r in got) and any(r[1 + 2] is not None for r in got)
    with pytest.raises(ValueError, match="values for the"):
        fast.insert([rows[0][:-1]])
    fast.close()
    ref.close()


def test_feedback_is_ordered_after_the_write(db: str) -> None:
    with open_store(db, flush_interval_s=60) as st:
        st.write(_rec(7))
        # no flush: the feedback job runs after the queued record
        assert st.attach_feedback("req-00007", {"quality": 1.0, "source": "user"}) is True
        assert st.attach_feedback("req-00007", {"comment": "great"}) is True
        assert st.attach_feedback("missing", {"quality": 0.0}) is False
        rec = st.get("req-00007")
        assert rec is not None
        assert rec["outcome"] == {"quality": 1.0, "source": "user", "comment": "great"}
        # re-writing the same request id keeps the attached outcome
        st.write(_rec(7, status=502))
        rec = st.get("req-00007")
        assert rec is not None and rec["status"] == 502 and rec["outcome"]["quality"] == 1.0


def test_async_interface(db: str) -> None:
    async def main() -> None:
        st = open_store(db, flush_interval_s=60)
        for i in range(100):
            st.write(_rec(i))
        await st.flush()
        rows = await st.aquery(model="fake-strong", limit=5)
        assert len(rows) == 5
        assert await st.aattach_feedback("req-00003", {"quality": 0.5})
        got = await st.aget("req-00003")
        assert got is not None and got["outcome"] == {"quality": 0.5}
        with pytest.raises(TypeError):
            await st.aquery(modle="x")
        st.write(_rec(500))
        await st.close()
        again = open_store(db)
        assert again.count() == 101
        again.close_sync()

    asyncio.run(main())


def test_many_threads_write_concurrently(db: str) -> None:
    with open_store(db, batch_size=50, flush_interval_s=0.01) as st:

        def worker(t: int) -> None:
            for i in range(250):
                st.write(_rec(t * 1000 + i))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st.flush_sync()
        assert st.count() == 2000


def test_spend_persists(db: str) -> None:
    st = open_store(db)
    st.add_spend("team-a", "d:2026-01-31", 0.25)
    st.add_spend("team-a", "d:2026-01-31", 0.5)
    st.add_spend("team-a", "m:2026-01", 0.75)
    st.add_spend("team-b", "d:2026-01-30", 1.0)
    st.close_sync()
    st = open_store(db)
    try:
        assert st.load_spend(["d:2026-01-31", "m:2026-01"]) == {
            ("team-a", "d:2026-01-31"): pytest.approx(0.75),
            ("team-a", "m:2026-01"): pytest.approx(0.75),
        }
    finally:
        st.close_sync()


def test_memory_store_and_relative_paths(tmp_path: Path) -> None:
    with open_store("memory://") as st:
        st.write(_rec(1))
        assert st.count() == 1
    with open_store("sqlite:///sub/dir/t.db", base_dir=tmp_path) as st:
        st.write(_rec(1))
    assert (tmp_path / "sub" / "dir" / "t.db").exists()


def test_bad_urls_fail_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported trace store URL"):
        open_store("mysql://u:pw@host/db")
    (tmp_path / "adir").mkdir()
    with pytest.raises(StoreError, match="cannot open trace store"):
        open_store(str(tmp_path / "adir"))
    st = open_store("memory://")
    st.close_sync()
    with pytest.raises(StoreError, match="closed"):
        st.query()


def test_postgres_url_without_driver_or_server_is_a_clear_error() -> None:
    with pytest.raises(StoreError) as e:
        open_store("postgresql://llmroute:s3cret@127.0.0.1:1/none")
    assert "s3cret" not in str(e.value)


# the Postgres store against a real server: tests/test_store_postgres.py


def test_parse_time() -> None:
    now = 1_000_000.0
    assert parse_time("2h", now=now) == now - 7200
    assert parse_time("30m", now=now) == now - 1800
    assert parse_time("7d", now=now) == now - 7 * 86400
    assert parse_time(12.5) == 12.5
    assert parse_time("12.5") == 12.5
    assert parse_time("1970-01-01T00:01:00Z") == 60.0
    assert parse_time(None) is None
    with pytest.raises(ValueError, match="cannot read time"):
        parse_time("yesterday")


def test_store_is_a_tracestore() -> None:
    st = open_store("memory://")
    try:
        assert isinstance(st, TraceStore)
    finally:
        st.close_sync()


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Exceptions that end a thread (what `threading.excepthook` would print as a warning)."""
    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    return seen


def test_job_cancelled_while_running_keeps_the_writer_alive(
    db: str, thread_errors: list[BaseException | None]
) -> None:
    """Regression: an awaiting task cancelled (client disconnect) while its job ran on the writer
    thread made `_drain` set a result on a cancelled future -> InvalidStateError ended the thread."""
    started, release = threading.Event(), threading.Event()

    def slow(backend: object) -> str:
        started.set()
        assert release.wait(30)
        return "done"

    async def main() -> None:
        st = open_store(db, flush_interval_s=60)
        task = asyncio.ensure_future(st.arun(slow))
        assert await asyncio.to_thread(started.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        assert await st.arun(lambda b: 7) == 7  # the writer thread is still serving jobs
        st.write(_rec(1))
        await st.flush()
        assert st.count() == 1
        await st.close()

    asyncio.run(main())
    assert thread_errors == []


def test_job_cancelled_while_queued_still_runs_and_is_not_answered(
    db: str, thread_errors: list[BaseException | None]
) -> None:
    """A job cancelled before the writer took it still runs (it may be a queued write); its future
    stays cancelled, and the jobs after it are answered."""
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocker(backend: object) -> None:
        started.set()
        assert release.wait(30)

    st = open_store(db, flush_interval_s=60)
    try:
        first = st._submit(blocker)
        assert started.wait(30)
        queued = st._submit(lambda b: ran.append("queued"))
        assert queued.cancel()
        after = st._submit(lambda b: "after")
        release.set()
        assert first.result(30) is None
        assert after.result(30) == "after"
        assert ran == ["queued"] and queued.cancelled()
    finally:
        release.set()
        st.close_sync()
    assert thread_errors == []
