"""Routing quality on every dev set in ../shared/data (issue 2, item 9).

    .venv/bin/python benchmarks/quality.py [--sets routellm,routellm/mmlu] [--routers default,knn] [--seeds 0,1,2,3,4]

For each set (and each RouteLLM family: mmlu, gsm8k, mt_bench) runs `llmroute.eval.runner.evaluate`
with all five routers, 5 folds, once per seed (default 0-4: the seed sets the fold split and the
routers' randomness); writes benchmarks/results/quality.json after every (seed, set) run (each
run's scalar metrics, and per set the mean and range over the seeds), a per-set report of the first
seed under benchmarks/results/<set>/ (results.json, curves.png, report.html; gitignored) and the
"Routing quality" section of BENCHMARKS.md (mean and range over the seeds). Prints the wall time of
each eval (acceptance: the routellm all-routers eval < 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from _md import fmt, md_table, update_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
ROUTERS = ("default", "knn", "linear", "mlp", "mf")
FAMILIES = {"routellm": ("mmlu", "gsm8k", "mt_bench")}


def discover(data_dir: Path) -> list[tuple[str, Path, str | None]]:
    """(label, folder, task prefix) for every set with a data.parquet, plus RouteLLM families."""
    out: list[tuple[str, Path, str | None]] = []
    for d in sorted(p for p in data_dir.iterdir() if (p / "data.parquet").is_file()):
        out.append((d.name, d, None))
        for fam in FAMILIES.get(d.name, ()):
            out.append((f"{d.name}/{fam}", d, fam))
    return out


# scalar metrics summarised over seeds (per router and for the random baseline)
METRICS = (
    "aiq",
    "gap_closed",
    "cost_ratio_at_best_quality",
    "max_quality",
    "apgr",
    "cpt50",
    "cpt80",
    "decision_ms_p50",
    "decision_ms_p99",
)
# per-run keys dropped from the committed JSON (curves and breakdowns: ~680 KB per seed)
_BULKY = ("curve", "curve_points", "by_task", "tasks")


def compact_run(res: dict) -> dict:
    """One `evaluate` result without curves and per-task breakdowns (what quality.json keeps per seed)."""
    out = {k: v for k, v in res.items() if k not in _BULKY}
    out["routers"] = {n: {k: v for k, v in r.items() if k not in _BULKY} for n, r in res["routers"].items()}
    base = dict(res["baselines"])
    base["random"] = {k: v for k, v in base["random"].items() if k not in _BULKY}
    base.pop("oracle", None)
    out["baselines"] = base
    return out


def spread(values: list[float | None]) -> dict:
    """{"mean", "min", "max", "n", "values"} over the finite values (mean None when there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": None, "min": None, "max": None, "n": 0, "values": list(values)}
    return {"mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs), "n": len(xs), "values": list(values)}


def summarize(runs: list[dict]) -> list[dict]:
    """Per set (in first-seen order): mean and range over seeds of every metric of every router.

    `runs` are `evaluate` results (full or `compact_run`), one per (seed, set). A set's summary
    has `dataset`, `n_prompts`, `models`, `cost_source`, the seed-independent baselines (hull,
    oracle, best single), `seeds`, `elapsed_s` (a spread) and `routers` / `random`:
    {name: {metric: spread}}.
    """
    by_set: dict[str, list[dict]] = {}
    for r in runs:
        by_set.setdefault(r["dataset"], []).append(r)
    out = []
    for name, rs in by_set.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        first = rs[0]
        routers: dict[str, dict] = {}
        for rn in first["routers"]:
            per = [r["routers"].get(rn, {}) for r in rs]
            routers[rn] = {m: spread([p.get(m) for p in per]) for m in METRICS}
        rand = [r["baselines"]["random"] for r in rs]
        base = {k: first["baselines"][k] for k in ("single_hull_aiq", "oracle_aiq", "best_single")}
        out.append(
            {
                "dataset": name,
                "n_prompts": first["n_prompts"],
                "models": first["models"],
                "cost_source": first["cost_source"],
                "folds": first["folds"],
                "seeds": [r["seed"] for r in rs],
                "baselines": base,
                "routers": routers,
                "random": {m: spread([p.get(m) for p in rand]) for m in METRICS},
                "elapsed_s": spread([r["elapsed_s"] for r in rs]),
                "embed_s": spread([r["embed_s"] for r in rs]),
            }
        )
    return out


def cell(s: dict, digits: int = 3) -> str:
    """'mean (min-max)' for a spread; '-' when empty; '(k of n seeds)' when some seeds lack it."""
    if not s or s.get("mean") is None:
        return "-"
    text = fmt(s["mean"], digits)
    if s["n"] > 1:
        text += f" ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"
    if s["n"] < len(s["values"]):
        text += f" [{s['n']} of {len(s['values'])} seeds]"
    return text


def markdown(summary: list[dict], meta: dict) -> str:
    """The BENCHMARKS.md section: one table per set (mean and range over seeds), then the acceptance summary."""
    seeds = meta["seeds"]
    parts = [
        f"5-fold CV over prompt ids, **{len(seeds)} seeds ({', '.join(map(str, seeds))})**: the seed sets the "
        "fold split, the routers' own randomness and the random baseline. Every cell is the **mean over the "
        "seeds, with the range (min-max) in parentheses**. "
        f"Encoder `{meta['encoder']}`, on {meta['machine']} (load average {_load(meta)}: latencies and "
        "wall times include contention from other processes). Every number uses out-of-fold estimates of "
        "quality and cost. AIQ, gap closed (share of the single-model-hull → oracle AIQ gap), cost ratio at "
        "the best single model's quality, APGR/CPT (two-model sets) and decision latency (one "
        "`router.route(prompt)` at a time, warm, including embedding) as defined in "
        "`src/llmroute/eval/metrics.py`. Generated by `benchmarks/quality.py`; raw numbers (every seed) in "
        "`benchmarks/results/quality.json`.",
    ]
    for res in summary:
        two = len(res["models"]) == 2
        base = res["baselines"]
        head = ["router", "AIQ", "gap closed", "cost ratio", "max quality"]
        head += ["APGR", "CPT(50%)", "CPT(80%)"] if two else []
        head += ["p50 ms", "p99 ms"]
        rows = []
        for name, r in [*res["routers"].items(), ("random", res["random"])]:
            row = [
                name,
                cell(r["aiq"], 4),
                cell(r["gap_closed"]),
                cell(r["cost_ratio_at_best_quality"]),
                cell(r["max_quality"], 4),
            ]
            if two:
                row += [cell(r["apgr"]), cell(r["cpt50"], 2), cell(r["cpt80"], 2)]
            row += [cell(r["decision_ms_p50"]), cell(r["decision_ms_p99"])]
            rows.append(row)
        best = base["best_single"]
        parts.append(
            f"### {res['dataset']}\n\n{res['n_prompts']} prompts, {len(res['models'])} models, cost: "
            f"{res['cost_source']}. Single-model hull AIQ {fmt(base['single_hull_aiq'], 4)}, oracle AIQ "
            f"{fmt(base['oracle_aiq'], 4)}, best single `{best['model']}` (quality {fmt(best['quality'], 4)}, "
            f"cost {fmt(best['cost'], 4)}). Eval wall time per seed {cell(res['elapsed_s'], 1)} s "
            f"(embedding {cell(res['embed_s'], 1)} s).\n\n" + md_table(head, rows)
        )
    parts.append(
        '### Acceptance summary\n\nGap closed, mean over the seeds (range). "default > knn & linear" '
        "compares the means; the next column counts the seeds in which the default beat both.\n\n"
        + md_table(*acceptance(summary))
    )
    return "\n\n".join(parts)


def _load(meta: dict) -> str:
    a, b = meta.get("load_avg_start"), meta.get("load_avg_end")
    return f"{a[0]:.1f} at start, {b[0]:.1f} at end" if a and b else "not recorded"


def _beats(summary_routers: dict, i: int | None = None) -> bool | None:
    """Default's gap closed above both knn's and linear's: on the mean (i None) or in seed index i."""
    try:
        d, k, lin = (summary_routers[n]["gap_closed"] for n in ("default", "knn", "linear"))
    except KeyError:
        return None
    if i is None:
        vals = [d["mean"], k["mean"], lin["mean"]]
    else:
        vals = [d["values"][i], k["values"][i], lin["values"][i]]
    if any(v is None for v in vals):
        return None
    return vals[0] > vals[1] and vals[0] > vals[2]


def acceptance(summary: list[dict]) -> tuple[list[str], list[list]]:
    """Rows: default router vs knn / linear on every set, on the mean over seeds and seed by seed."""
    head = [
        "set",
        "default gap closed",
        "knn",
        "linear",
        "default > knn & linear (mean)",
        "seeds where default > both",
        "default APGR",
        "eval s",
    ]
    rows = []
    for res in summary:
        r = res["routers"]
        beats = _beats(r)
        n_seeds = len(res["seeds"])
        wins = [_beats(r, i) for i in range(n_seeds)]
        rows.append(
            [
                res["dataset"],
                cell(r.get("default", {}).get("gap_closed", {})),
                cell(r.get("knn", {}).get("gap_closed", {})),
                cell(r.get("linear", {}).get("gap_closed", {})),
                "-" if beats is None else ("yes" if beats else "no"),
                "-" if beats is None else f"{sum(bool(w) for w in wins)} of {n_seeds}",
                cell(r.get("default", {}).get("apgr", {})),
                cell(res["elapsed_s"], 1),
            ]
        )
    return head, rows


def _parse_seeds(text: str) -> list[int]:
    seeds = [int(x) for x in text.split(",") if x.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def write_results(path: Path, meta: dict, runs: list[dict]) -> list[dict]:
    """Write quality.json ({meta, datasets: per-set summary over seeds, runs: one per seed and set});
    returns the summary."""
    summary = summarize(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({"meta": meta, "datasets": summary, "runs": runs}, indent=1, allow_nan=False) + "\n"
    )
    os.replace(tmp, path)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument(
        "--sets", default="", help="comma-separated labels (e.g. routellm,routellm/gsm8k); default all"
    )
    ap.add_argument("--routers", default=",".join(ROUTERS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--seeds",
        default="0,1,2,3,4",
        help="comma-separated seeds (fold split + model randomness); default 0-4",
    )
    ap.add_argument("--encoder", default="static-minilm")
    ap.add_argument("--no-md", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--md-only", action="store_true", help="rewrite BENCHMARKS.md from the existing quality.json"
    )
    args = ap.parse_args(argv)
    out = RESULTS / "quality.json"

    if args.md_only:
        saved = json.loads(out.read_text())
        update_section("quality", markdown(saved["datasets"], saved["meta"]), title="Routing quality")
        print("updated BENCHMARKS.md (quality)")
        return 0

    if not args.data_dir.is_dir():
        print(f"skipping: {args.data_dir} is absent (the shared routing data is needed)", file=sys.stderr)
        return 0
    from llmroute.embed import load_encoder
    from llmroute.eval.report import write_report
    from llmroute.eval.runner import evaluate, load_dataset

    seeds = _parse_seeds(args.seeds)
    sets = discover(args.data_dir)
    if args.sets:
        want = {s.strip() for s in args.sets.split(",") if s.strip()}
        unknown = want - {s[0] for s in sets}
        if unknown:
            print(f"unknown set(s) {sorted(unknown)}; have {[s[0] for s in sets]}", file=sys.stderr)
            return 2
        sets = [s for s in sets if s[0] in want]
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    encoder = load_encoder(args.encoder)
    meta = {
        "seeds": seeds,
        "folds": args.folds,
        "encoder": getattr(encoder, "name", args.encoder),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "generated": "",
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "load_avg_end": None,
    }
    # a partial run (--sets) replaces its (seed, set) runs and keeps the others
    runs: list[dict] = []
    if args.sets and out.exists():
        runs = [
            r for r in json.loads(out.read_text()).get("runs", []) if r["dataset"] not in {s[0] for s in sets}
        ]
    tables = {label: load_dataset(folder, tasks=fam) for label, folder, fam in sets}
    for seed in seeds:
        for label, _folder, _fam in sets:
            print(f"== {label} seed {seed}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            res = evaluate(
                tables[label],
                routers=routers,
                folds=args.folds,
                seed=seed,
                encoder=encoder,
                progress=not args.no_progress,
                dataset=label,
            )
            wall = time.perf_counter() - t0
            if seed == seeds[0]:
                write_report(res, RESULTS / label.replace("/", "_"))
            runs.append(compact_run(res))
            meta["generated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            meta["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
            write_results(out, meta, runs)  # as it goes: a killed run keeps what it finished
            summary = ", ".join(f"{n} {fmt(r['gap_closed'])}" for n, r in res["routers"].items())
            print(f"{label} seed {seed}: {wall:.1f} s wall; gap closed: {summary}", flush=True)
    summary = write_results(out, meta, runs)
    print(f"wrote {out}")
    if not args.no_md:
        update_section("quality", markdown(summary, meta), title="Routing quality")
        print("updated BENCHMARKS.md (quality)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
