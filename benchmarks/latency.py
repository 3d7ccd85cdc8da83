"""Decision latency and batch throughput of the default router (issue 2, item 9).

    .venv/bin/python benchmarks/latency.py [--router FILE] [--single 2000] [--batch 10000]

Single decision: `router.route(prompt)` one distinct prompt at a time, warm, including embedding
(every timed prompt is new to the router, so no embedding cache can answer it); p50 / p99 in ms.
Batch: `router.route_batch(prompts)` on 10,000 distinct prompts; prompts per second.
Prompts come from ../shared/data when present, else from the project's synthetic templates.
Second router (unless --no-trained): one with the `default` estimator fitted inside the script on
<data-dir>/routellm (as `llmroute train --router default`), timed on the same prompts (decisions
only, not the fit): JSON field "trained_default", a second column in BENCHMARKS.md.
Writes benchmarks/results/latency.json and the "Decision latency" section of BENCHMARKS.md;
with --no-md it only prints the JSON and writes no file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _md import fmt, md_table, update_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
WARMUP = 50


def distinct_prompts(n: int, data_dir: Path) -> tuple[list[str], str]:
    """`n` distinct prompts (shared data if present, else synthetic) and where they come from."""
    seen: dict[str, None] = {}
    source = []
    if data_dir.is_dir():
        import pandas as pd

        for name in ("routerbench_subset", "routellm", "routerdc_7model"):
            f = data_dir / name / "data.parquet"
            if not f.is_file():
                continue
            col = pd.read_parquet(f, columns=["prompt"])["prompt"].astype(str)
            for p in pd.unique(col):
                seen.setdefault(p, None)
            source.append(name)
            if len(seen) >= n:
                break
    if len(seen) < n:
        from llmroute.data import make_synthetic_table

        table = make_synthetic_table(n_prompts=max(n - len(seen), 1) * 2, seed=1)
        for i, p in enumerate(table.prompts):
            seen.setdefault(f"{p} (variant {i})", None)
        source.append("synthetic")
    prompts = list(seen)
    rng = np.random.default_rng(0)
    rng.shuffle(prompts)
    return prompts[:n], "+".join(source)


def load_router(path: Path | None) -> tuple[object, str]:
    """The router to time: `path`, else the shipped default, else one fitted on synthetic data."""
    from llmroute.router import Router

    if path is not None:
        return Router.load(path), str(path)
    try:
        from llmroute.router import default_router_path

        p = Path(default_router_path())
        if p.exists():
            return Router.load(p), f"shipped default ({p.name})"
    except ImportError:
        pass
    from llmroute.data import make_synthetic_table

    return Router.fit(
        make_synthetic_table(n_prompts=400, seed=0), estimator="default"
    ), "default fitted on synthetic"


def train_default(data_dir: Path, name: str = "routellm") -> tuple[object, str, float] | None:
    """A router with the `default` estimator fitted on `data_dir/name` (as `llmroute train --router
    default`), saved and loaded again as the official runs use it; None when the data is absent.
    Returns (router, description, fit seconds)."""
    if not (data_dir / name).is_dir():
        return None
    import tempfile

    from llmroute.eval.runner import load_dataset, with_cost_fallback
    from llmroute.router import Router

    table, _ = with_cost_fallback(load_dataset(data_dir / name))
    t0 = time.perf_counter()
    fitted = Router.fit(table, estimator="default", encoder="static-minilm", seed=0)
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "default.safetensors"
        fitted.save(path)
        router = Router.load(path)  # a fresh router: no embedding cache from the fit
    desc = f"default estimator trained on {name} ({table.n_prompts:,} prompts, fit {fit_s:.1f} s)"
    return router, desc, fit_s


def time_router(router: object, warm: list[str], single: list[str], batch: list[str]) -> dict:
    """Single-decision latency, one-process batch throughput and `workers=` core-count throughput."""
    for p in warm:
        router.route(p)
    times = np.empty(len(single))
    for i, p in enumerate(single):
        t = time.perf_counter_ns()
        router.route(p)
        times[i] = time.perf_counter_ns() - t
    ms = times / 1e6

    router.route_batch(warm)
    t = time.perf_counter()
    decisions = router.route_batch(batch)
    batch_s = time.perf_counter() - t
    assert len(decisions) == len(batch)
    # the same batch (new texts: no cache can answer) spread over every core
    workers = os.cpu_count() or 1
    batch2 = [f"{p} ." for p in batch]
    t = time.perf_counter()
    decisions = router.route_batch(batch2, workers=workers)
    par_s = time.perf_counter() - t
    assert len(decisions) == len(batch2)
    return {
        "single": {
            "n": len(single),
            "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()),
        },
        "batch": {"n": len(batch), "seconds": batch_s, "prompts_per_s": len(batch) / batch_s},
        "batch_workers": {
            "n": len(batch2),
            "workers": workers,
            "seconds": par_s,
            "prompts_per_s": len(batch2) / par_s,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", type=Path, default=None)
    ap.add_argument("--single", type=int, default=2000, help="prompts timed one at a time")
    ap.add_argument("--batch", type=int, default=10_000, help="prompts in the route_batch call")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument(
        "--no-trained",
        action="store_true",
        help="skip the second router (default estimator trained on <data-dir>/routellm)",
    )
    ap.add_argument("--no-md", action="store_true", help="print the results only: write no file")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    router, router_src = load_router(args.router)
    load_s = time.perf_counter() - t0
    prompts, source = distinct_prompts(WARMUP + args.single + args.batch, args.data_dir)
    warm, single, batch = (
        prompts[:WARMUP],
        prompts[WARMUP : WARMUP + args.single],
        prompts[WARMUP + args.single :],
    )
    timed = time_router(router, warm, single, batch)
    workers = timed["batch_workers"]["workers"]

    res = {
        "router": router_src,
        "models": list(router.models),
        "prompts_source": source,
        "prompt_chars": {
            "p50": float(np.median([len(p) for p in prompts])),
            "mean": float(np.mean([len(p) for p in prompts])),
            "p99": float(np.percentile([len(p) for p in prompts], 99)),
        },
        "router_load_s": round(load_s, 4),
        **timed,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    trained = None if args.no_trained else train_default(args.data_dir)
    if trained is not None:  # the same prompts; only decisions are timed (not the fit)
        t_router, t_desc, fit_s = trained
        res["trained_default"] = {
            "router": t_desc,
            "models": list(t_router.models),
            "fit_s": round(fit_s, 3),
            **time_router(t_router, warm, single, batch),
        }
        res["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res, indent=1))
    if args.no_md:
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(res, indent=1) + "\n")
    runs = [res] + ([res["trained_default"]] if "trained_default" in res else [])

    def row(label: str, get: object, target: str) -> list[str]:
        return [label, *(get(r) for r in runs), target]  # type: ignore[operator]

    header = ["measure", "shipped router"]
    intro = f"Router: {router_src} ({len(res['models'])} models), loaded in {fmt(load_s)} s"
    if len(runs) > 1:
        header.append("default estimator (routellm)")
        intro += (
            f"; second column: a router with the {res['trained_default']['router']} (only decisions timed)"
        )
    md = (
        f"{intro}; prompts: {source} "
        f"(median {res['prompt_chars']['p50']:.0f} chars, mean {res['prompt_chars']['mean']:.0f}); "
        f"{res['machine']}, load average {res['load_avg'][0]:.1f}. Single: `router.route(prompt)`, one distinct prompt at a time after {WARMUP} "
        "warm-up calls, including embedding. Batch: one `router.route_batch` call, in one process and with `workers=` the core count. Generated by "
        "`benchmarks/latency.py`; raw numbers in `benchmarks/results/latency.json`.\n\n"
        + md_table(
            [*header, "target"],
            [
                row("single decision p50 (ms)", lambda r: fmt(r["single"]["p50_ms"]), "<= 0.5"),
                row("single decision p90 (ms)", lambda r: fmt(r["single"]["p90_ms"]), ""),
                row("single decision p99 (ms)", lambda r: fmt(r["single"]["p99_ms"]), "<= 2"),
                row(
                    f"batch throughput (prompts/s, {len(batch):,} prompts, 1 process)",
                    lambda r: f"{r['batch']['prompts_per_s']:,.0f}",
                    ">= 10,000",
                ),
                row(
                    f"batch throughput (prompts/s, route_batch(workers={workers}))",
                    lambda r: f"{r['batch_workers']['prompts_per_s']:,.0f}",
                    ">= 10,000",
                ),
            ],
        )
    )
    update_section("latency", md, title="Decision latency")
    print("updated BENCHMARKS.md (latency)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
