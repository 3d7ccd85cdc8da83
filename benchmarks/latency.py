"""Decision latency and batch throughput of the default router (issue 2, item 9; issue 10, item 7).

    .venv/bin/python benchmarks/latency.py [--router FILE] [--single 2000] [--batch 10000] [--repeats 3]

Single decision: `router.route(prompt)` one distinct prompt at a time, warm, including embedding
(every timed prompt is new to the router, so no embedding cache can answer it); p50 / p99 in ms.
Batch: `router.route_batch(prompts)` on 10,000 distinct prompts, `--repeats` times (new texts each
time); prompts per second, the median and the range of the repeats.
Prompts come from ../shared/data when present, else from the project's synthetic templates.
More routers (unless --no-trained): one with the `default` estimator fitted inside the script on
each of <data-dir>/routellm and <data-dir>/routerbench_subset (11 models, long few-shot prompts;
as `llmroute train --router default`), timed on the same prompts (decisions only, not the fit):
JSON field "trained" (one entry per set), one more column each in BENCHMARKS.md.
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


def train_default(data_dir: Path, name: str) -> tuple[object, str, float] | None:
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


def time_router(
    router: object, warm: list[str], single: list[str], batch: list[str], repeats: int = 3
) -> dict:
    """Single-decision latency, one-process batch throughput (`repeats` runs on new texts: median
    and range) and `workers=` core-count throughput."""
    for p in warm:
        router.route(p)
    times = np.empty(len(single))
    for i, p in enumerate(single):
        t = time.perf_counter_ns()
        router.route(p)
        times[i] = time.perf_counter_ns() - t
    ms = times / 1e6

    router.route_batch(warm)
    rates = []
    for r in range(max(1, repeats)):
        texts = batch if r == 0 else [f"{p}{' ' * r}" for p in batch]  # new texts: no cache can answer
        t = time.perf_counter()
        decisions = router.route_batch(texts)
        rates.append(len(texts) / (time.perf_counter() - t))
        assert len(decisions) == len(texts)
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
        "batch": {
            "n": len(batch),
            "repeats": len(rates),
            "prompts_per_s": float(np.median(rates)),
            "prompts_per_s_min": min(rates),
            "prompts_per_s_max": max(rates),
            "runs_prompts_per_s": [round(x, 1) for x in rates],
        },
        "batch_workers": {
            "n": len(batch2),
            "workers": workers,
            "seconds": par_s,
            "prompts_per_s": len(batch2) / par_s,
        },
    }


TRAINED_SETS = ("routellm", "routerbench_subset")
# issue 10, item 7: a router trained with the default estimator on routerbench_subset (11 models)
TARGETS = {"p50_ms": 0.5, "p99_ms": 2.0, "prompts_per_s": 10_000}


def _batch_cell(run: dict) -> str:
    b = run["batch"]
    if b.get("repeats", 1) > 1:
        return f"{b['prompts_per_s']:,.0f} ({b['prompts_per_s_min']:,.0f}-{b['prompts_per_s_max']:,.0f})"
    return f"{b['prompts_per_s']:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", type=Path, default=None)
    ap.add_argument("--single", type=int, default=2000, help="prompts timed one at a time")
    ap.add_argument("--batch", type=int, default=10_000, help="prompts in the route_batch call")
    ap.add_argument("--repeats", type=int, default=3, help="route_batch runs per router (median, range)")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument(
        "--trained",
        default=",".join(TRAINED_SETS),
        help="sets under --data-dir to train a default-estimator router on and time (comma-separated)",
    )
    ap.add_argument("--no-trained", action="store_true", help="time the shipped (or --router) router only")
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
    timed = time_router(router, warm, single, batch, args.repeats)
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
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "trained": {},
    }
    names = [] if args.no_trained else [n.strip() for n in args.trained.split(",") if n.strip()]
    for name in names:  # the same prompts; only decisions are timed (not the fit)
        trained = train_default(args.data_dir, name)
        if trained is None:
            print(f"skipped {name}: no {args.data_dir / name}", file=sys.stderr)
            continue
        t_router, t_desc, fit_s = trained
        res["trained"][name] = {
            "router": t_desc,
            "models": list(t_router.models),
            "fit_s": round(fit_s, 3),
            **time_router(t_router, warm, single, batch, args.repeats),
        }
    res["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    rb = res["trained"].get("routerbench_subset")
    if rb is not None:  # issue 10, item 7
        res["targets_routerbench_subset"] = {
            "p50_ms<=0.5": rb["single"]["p50_ms"] <= TARGETS["p50_ms"],
            "batch_prompts_per_s>=10000": rb["batch"]["prompts_per_s"] >= TARGETS["prompts_per_s"],
        }
    print(json.dumps(res, indent=1))
    if args.no_md:
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(res, indent=1) + "\n")
    runs = [res, *res["trained"].values()]

    def row(label: str, get: object, target: str) -> list[str]:
        return [label, *(get(r) for r in runs), target]  # type: ignore[operator]

    header = ["measure", "shipped router", *(f"default estimator ({n})" for n in res["trained"])]
    intro = f"Router: {router_src} ({len(res['models'])} models), loaded in {fmt(load_s)} s"
    if res["trained"]:
        intro += "; other columns: a router with the " + "; a router with the ".join(
            r["router"] for r in res["trained"].values()
        )
        intro += " (only decisions timed)"
    md = (
        f"{intro}; prompts: {source} "
        f"(median {res['prompt_chars']['p50']:.0f} chars, mean {res['prompt_chars']['mean']:.0f}); "
        f"{res['machine']}, load average {res['load_avg_start'][0]:.1f} at the start, "
        f"{res['load_avg'][0]:.1f} at the end ({res['generated']}). Single: `router.route(prompt)`, one "
        f"distinct prompt at a time after {WARMUP} warm-up calls, including embedding. Batch: one "
        f"`router.route_batch` call in one process, {args.repeats} runs on new texts (median, range "
        "in brackets), and one with `workers=` the core count. Targets: issue 10 item 7 (a router "
        "trained with the default estimator on routerbench_subset). Generated by "
        "`benchmarks/latency.py`; raw numbers in `benchmarks/results/latency.json`.\n\n"
        + md_table(
            [*header, "target"],
            [
                row("single decision p50 (ms)", lambda r: fmt(r["single"]["p50_ms"]), "<= 0.5"),
                row("single decision p90 (ms)", lambda r: fmt(r["single"]["p90_ms"]), ""),
                row("single decision p99 (ms)", lambda r: fmt(r["single"]["p99_ms"]), "<= 2"),
                row(
                    f"batch throughput (prompts/s, {len(batch):,} prompts, 1 process)",
                    _batch_cell,
                    ">= 10,000",
                ),
                row(
                    f"batch throughput (prompts/s, route_batch(workers={workers}))",
                    lambda r: f"{r['batch_workers']['prompts_per_s']:,.0f}",
                    "",
                ),
            ],
        )
    )
    update_section("latency", md, title="Decision latency")
    print("updated BENCHMARKS.md (latency)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
