"""What keys managed without restarts cost the request path (issue 15).

1. The per-request check every request pays: comparing the workers' shared key generation (an
   mmap'd counter, or a plain integer with one worker) with the one this worker loaded.
2. The reload the first request after a change pays on each worker: the key store read (SQLite)
   and the new key set applied to the Authenticator and the budget ledger, for N stored keys.

    .venv/bin/python benchmarks/admin_keys.py [--keys 100 1000] [--out results/admin_keys.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import timeit
import types
from pathlib import Path
from typing import Any


def check_ns(folder: str | None, n: int = 1_000_000) -> float:
    """Nanoseconds per request for the generation check (best of 5, minus an empty call)."""
    from llmroute.gateway.keystore import KeyGeneration

    km = types.SimpleNamespace(generation=KeyGeneration(folder), seen=0)

    def check(km: Any = km) -> None:
        if km.generation.value != km.seen:
            raise AssertionError

    def empty(km: Any = km) -> None:
        pass

    t = min(timeit.repeat(check, number=n, repeat=5)) / n
    t0 = min(timeit.repeat(empty, number=n, repeat=5)) / n
    km.generation.close()
    return (t - t0) * 1e9


async def reload_ms(n_keys: int, folder: Path) -> float:
    """Milliseconds for one worker's reload after a change, with `n_keys` keys in the store."""
    from llmroute.gateway.admin import merge_keys
    from llmroute.gateway.auth import Authenticator, BudgetManager, hash_key
    from llmroute.gateway.keystore import KeyStore
    from llmroute.gateway.store import open_store

    store = open_store(f"sqlite:///{folder}/keys-{n_keys}.sqlite")
    ks = KeyStore(store)
    for i in range(n_keys):
        await ks.acreate(f"k{i}", hash_key(f"sk-{i}"), budget_usd_day=1.0, rpm=600)
    auth = Authenticator(shared_dir=folder)
    budgets = BudgetManager(ledger_path=folder / f"keys-{n_keys}.ledger", store=store)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        keys, _ = merge_keys([], await ks.alist(revoked=True))
        auth.set_keys(keys)
        budgets.set_keys(keys)
        times.append(time.perf_counter() - t)
    auth.close()
    budgets.close()
    await store.close()
    return min(times[1:]) * 1000  # the first one also claims the ledger slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        out["check_ns_one_worker"] = round(check_ns(None), 1)
        out["check_ns_shared_mmap"] = round(check_ns(d), 1)
        for n in args.keys:
            (Path(d) / str(n)).mkdir()
            out[f"reload_ms_{n}_keys"] = round(asyncio.run(reload_ms(n, Path(d) / str(n))), 2)
    print(json.dumps(out, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
