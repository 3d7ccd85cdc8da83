"""Shared setup of the dashboard tests (`test_ui.py`, `test_ui_browser.py`): a SQLite trace store
seeded by `benchmarks/dashboard.py`'s `seed` (copied row by row into a Postgres store when a
`postgresql://` URL is given), a gateway on it (stub router, the fake upstream, three API keys,
admin demo mode on loopback), real chat requests and feedback through the official openai client,
and an independent recomputation of the savings from the store's rows (`trace_rows`: this file's
own SQL on either database)."""

from __future__ import annotations

import contextlib
import importlib
import math
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from conftest import StubRouter, loopback_config, run_gateway, start_fake_server

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SEEDED = 3000
LONG_PROMPT = "Explain, step by step and with a proof, why the halting problem is undecidable. " * 3


class SummaryStubRouter(StubRouter):
    """The stub router with a training summary (`info`), as `Router.fit` writes one."""

    def __init__(self) -> None:
        super().__init__()
        self.info = {
            "source": "synthetic",
            "n_prompts": 1200,
            "mean_quality": {"strong": 0.86, "weak": 0.61},
        }


def bench() -> ModuleType:
    """benchmarks/dashboard.py as a module (its `seed`, `key_hash`, `KEYS`)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("dashboard")
    finally:
        sys.path.remove(str(BENCH))


def ui_config(db: Path | str, upstream: str, tmp: Path, **admin: Any) -> dict[str, Any]:
    """The loopback test config on the store `db` (a SQLite path or a postgresql:// URL), with the
    seeded keys and `admin` (default demo)."""
    d = bench()
    cfg = loopback_config(upstream, tmp)
    cfg["store"] = {"url": store_url(db), "flush_interval_s": 0.02, "commit_interval_s": 0.05}
    if store_url(db).startswith(
        "postgresql"
    ):  # its ledger in `tmp`, not the cwd (a dict config has no folder)
        cfg["store"]["ledger"] = str(tmp / "spend.ledger")
    cfg["aliases"]["llmroute/cheap"] = {
        "router": "default",
        "candidates": ["fake-strong", "fake-weak"],
        "tradeoff": 1000,
    }
    cfg["keys"] = [
        {"id": k, "key_sha256": d.key_hash(k), "budget_usd_day": 50.0, "budget_usd_month": 500.0}
        for k in d.KEYS
    ]
    cfg["admin"] = admin or {"demo": True}
    return cfg


def store_url(db: Path | str) -> str:
    """The trace store URL of a SQLite path or a postgresql:// URL."""
    return db if isinstance(db, str) and db.startswith("postgresql://") else f"sqlite:///{db}"


def trace_rows(db: Path | str, columns: str, where: str = "") -> list[tuple]:
    """Rows of `SELECT columns FROM <traces> where` from a SQLite path or a Postgres URL, with
    JSON columns as text (`candidates::text` on Postgres)."""
    if isinstance(db, str) and db.startswith("postgresql://"):
        import asyncio

        import asyncpg  # type: ignore[import-not-found]

        cols = ", ".join(
            f"{c}::text" if c in ("candidates", "fallbacks", "outcome", "extra") else c
            for c in (x.strip() for x in columns.split(","))
        )

        async def fetch() -> list[tuple]:
            conn = await asyncpg.connect(db)
            try:
                return [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM llmroute_traces {where}")]
            finally:
                await conn.close()

        return asyncio.run(fetch())
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT {columns} FROM traces {where}").fetchall()
    finally:
        con.close()


def delete_trace(db: Path | str, request_id: str) -> None:
    """Delete one trace row behind the store's back (SQLite path or Postgres URL)."""
    if isinstance(db, str) and db.startswith("postgresql://"):
        import asyncio

        import asyncpg  # type: ignore[import-not-found]

        async def go() -> None:
            conn = await asyncpg.connect(db)
            try:
                await conn.execute("DELETE FROM llmroute_traces WHERE request_id = $1", request_id)
            finally:
                await conn.close()

        asyncio.run(go())
        return
    con = sqlite3.connect(db)
    con.execute("DELETE FROM traces WHERE request_id = ?", (request_id,))
    con.commit()
    con.close()


def copy_to_postgres(db: Path, url: str) -> None:
    """Every trace row of the SQLite store `db`, in rowid order, written to the store at `url`."""
    import json

    from llmroute.gateway.store import TRACE_FIELDS, open_store

    rows = trace_rows(db, ", ".join(TRACE_FIELDS), "ORDER BY rowid")
    json_at = [
        i
        for i, f in enumerate(TRACE_FIELDS)
        if f in ("candidates", "fallbacks", "outcome", "extra", "learner")
    ]
    store = open_store(url, batch_size=4096, store_prompts=True, store_responses=True)
    try:
        for r in rows:
            v = list(r)
            for i in json_at:
                v[i] = None if v[i] is None else json.loads(v[i])
            store.write_row(tuple(v))
        store.flush_sync(120)
    finally:
        store.close_sync()


@contextlib.contextmanager
def seeded_gateway(
    tmp: Path, n: int = SEEDED, postgres: str | None = None, **admin: Any
) -> Iterator[tuple[Any, list[str], Path | str]]:
    """(gateway handle, request ids of the seeded and real requests, the store: a SQLite path, or
    the URL `postgres` of an empty Postgres database the seeded rows are copied to)."""
    import openai

    d = bench()
    seeded = tmp / "traces.sqlite"
    ids = d.seed(seeded, n, seed_=1)
    db: Path | str = seeded
    if postgres is not None:
        copy_to_postgres(seeded, postgres)
        db = postgres
    with (
        start_fake_server() as fake,
        run_gateway(
            ui_config(db, fake.base_url, tmp, **admin), routers={"default": SummaryStubRouter()}
        ) as gw,
    ):
        client = openai.OpenAI(base_url=str(gw), api_key="sk-team-a", max_retries=0, timeout=30)
        for prompt, model in [
            ("hi", "llmroute/auto"),
            (LONG_PROMPT, "llmroute/auto"),
            (LONG_PROMPT, "llmroute/cheap"),
            ("hello there", "fake-strong"),
        ]:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}]
            )
            rid = raw.headers["x-llmroute-request-id"]
            ids.append(rid)
        client.post("/feedback", cast_to=object, body={"request_id": ids[-2], "quality": 0.25})
        gw.app.store.flush_sync(30)
        yield gw, ids, db


def recompute(db: Path | str) -> dict[str, float]:
    """Spend, baseline and savings recomputed from the store's rows with this file's own SQL and
    arithmetic: per answered routed request, the candidate of highest expected quality (ties: the
    dearer) priced at billed cost x its expected cost / the served model's expected cost."""
    rows = trace_rows(db, "status, alias, model, candidates, cost_usd")
    import json

    spend = base = 0.0
    for status, alias, model, cands, cost in rows:
        cost = cost or 0.0
        spend += cost
        b = cost
        cs = json.loads(cands) if cands else []
        if status == 200 and alias and cs:
            top = sorted(cs, key=lambda c: (c["expected_quality"], c["expected_cost"]))[-1]
            served = [c for c in cs if c["model"] == model]
            if top["model"] != model and served and served[0]["expected_cost"] > 0:
                b = cost * top["expected_cost"] / served[0]["expected_cost"]
        base += b
    assert math.isfinite(base)
    return {"spend": spend, "baseline": base, "saved": base - spend}
