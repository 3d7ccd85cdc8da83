"""Cascade benchmark (issue 14 acceptance): offline cascades on routerbench_subset's stored answers.

5-fold CV over prompt ids, seed 0 (the folds of `llmroute eval`). The prior is the `default`
router's out-of-fold estimate (the one-shot router; its training prompts' priors come from 3 inner
folds). `llmroute.cascade.offline.evaluate_cascade` fits the re-estimator inside each fold and
sweeps first model (router pick / cheapest) x trade-off x threshold; cost counts every call made.

- headline: all signals (built-in checks, learned text verifier, agreement of extracted answers),
  gap closed (bar >= 0.25; the one-shot default 0.197) and cost ratio at the best single model's
  quality (bar <= 0.7);
- ablation: no answer signal (priors only), the text signals (checks + learned) and agreement alone;
- first step: the router's pick, the cheapest, or the 2 / 3 cheapest at once; at most 4 answers;
- guard: every two-model subset of the table (55 pairs): cascade AIQ - one-shot AIQ (bar >= -0.005).
  The pair's one-shot router is the 11-model default router's out-of-fold estimates restricted to
  the pair (refitting the default router per pair would take 55 x 20 fits).

    nice .venv/bin/python benchmarks/cascade.py [--pairs all|none|N] [--quick]

Writes benchmarks/results/cascade.json and the "Cascades" section of BENCHMARKS.md. Evidence and
priors are cached under $TMPDIR/llmroute-cascade-cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = ROOT.parent / "shared" / "data" / "routerbench_subset"
RESULTS = ROOT / "benchmarks" / "results" / "cascade.json"
CACHE = Path(tempfile.gettempdir()) / "llmroute-cascade-cache"
ALL = ("checks", "learned", "agreement")
STEPS = 4
#: first step: the router's pick, the cheapest model, or the 2 / 3 cheapest at once (agreement evidence)
FIRSTS = ("router", "cheapest", "cheapest:2", "cheapest:3")
ONE_SHOT_DEFAULT = 0.197  # benchmarks/results/routerbench_subset/results.json, router default


def _cached(name: str, make: Any) -> Any:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{name}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    value = make()
    path.write_bytes(pickle.dumps(value))
    return value


def _summary(res: dict) -> dict:
    keep = (
        "signals",
        "max_steps",
        "aiq",
        "gap_closed",
        "cost_ratio_at_best_quality",
        "max_quality",
        "eval_s",
    )
    out = {k: res[k] for k in keep}
    out["one_shot"] = {k: res["one_shot"][k] for k in ("aiq", "gap_closed", "cost_ratio_at_best_quality")}
    out["by_first"] = {
        f: {k: v[k] for k in ("aiq", "gap_closed", "cost_ratio_at_best_quality")}
        for f, v in res["by_first"].items()
    }
    out["hull_points"] = res["hull_points"]
    return out


def run(pairs: str, quick: bool, save: Any = None) -> dict:
    from llmroute.cascade.offline import evaluate_cascade, oof_priors, table_evidence
    from llmroute.eval.runner import load_dataset

    t0 = time.perf_counter()
    table = load_dataset(DATA)
    ev = _cached(f"evidence-{table.n_prompts}", lambda: table_evidence(table))
    pri = _cached(
        f"priors-{table.n_prompts}-default-5-0-3", lambda: oof_priors(table, folds=5, seed=0, inner_folds=3)
    )
    print(f"evidence + priors: {time.perf_counter() - t0:.0f} s", flush=True)
    runs: dict[str, Any] = {}
    configs = [("all", list(ALL), STEPS)]
    if not quick:
        configs += [
            ("none", [], STEPS),
            ("checks + learned", ["checks", "learned"], STEPS),
            ("agreement", ["agreement"], STEPS),
        ]
    for name, signals, steps in configs:
        res = evaluate_cascade(
            table, priors=pri, evidence=ev, signals=signals, max_steps=steps, firsts=FIRSTS
        )
        runs[name] = _summary(res)
        print(
            f"{name}: gap {res['gap_closed']:.3f} cost ratio {res['cost_ratio_at_best_quality']} "
            f"(one-shot {res['one_shot']['gap_closed']:.3f}) {res['eval_s']:.0f} s",
            flush=True,
        )
    guard: list[dict] = []
    doc = {"meta": {}, "runs": runs, "guard": guard}
    doc["meta"] = {
        "dataset": "routerbench_subset",
        "data": str(DATA.relative_to(ROOT.parent)),
        "n_prompts": table.n_prompts,
        "folds": 5,
        "seed": 0,
        "inner_folds": 3,
        "prior": "default",
        "one_shot_default_gap_closed": ONE_SHOT_DEFAULT,
        "pairs_total": 0,
    }
    if save is not None:
        save(doc)
    if pairs != "none":
        combos = list(itertools.combinations(table.models, 2))
        if pairs != "all":
            combos = combos[: int(pairs)]
        for a, b in combos:
            res = evaluate_cascade(
                table,
                priors=pri,
                evidence=ev,
                signals=list(ALL),
                models=[a, b],
                max_steps=STEPS,
                firsts=FIRSTS,
            )
            d = res["aiq"] - res["one_shot"]["aiq"]
            guard.append(
                {
                    "models": [a, b],
                    "aiq": res["aiq"],
                    "one_shot_aiq": res["one_shot"]["aiq"],
                    "diff": d,
                    "gap_closed": res["gap_closed"],
                    "one_shot_gap_closed": res["one_shot"]["gap_closed"],
                }
            )
            print(f"pair {a} / {b}: cascade - one-shot AIQ {d:+.4f}", flush=True)
            doc["meta"]["pairs_total"] = len(combos)
            if save is not None and len(guard) % 5 == 0:
                save(doc)
    doc["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return doc


def _f(x: Any, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def write_md(doc: dict) -> None:
    from _md import md_table, update_section

    rows = []
    for name, r in doc["runs"].items():
        rows.append(
            [
                name,
                ", ".join(r["signals"]) or "none (priors only)",
                str(r["max_steps"]),
                _f(r["gap_closed"]),
                _f(r["cost_ratio_at_best_quality"]),
                _f(r["max_quality"], 4),
                " / ".join(_f(r["by_first"][f]["gap_closed"]) for f in FIRSTS if f in r["by_first"]),
                _f(r["one_shot"]["gap_closed"]),
            ]
        )
    head = doc["runs"]["all"]
    m = doc["meta"]
    md = [
        f"`benchmarks/cascade.py` (`llmroute.cascade.offline`): routerbench_subset, {m['n_prompts']} prompts, "
        f"{m['folds']}-fold CV over prompt ids, seed {m['seed']}. Prior: the one-shot `default` router's "
        "out-of-fold estimates (its training prompts' priors from 3 inner folds). Per fold the re-estimator "
        "(P(answer right | prior, signals) and the expected gain of calling each model next) is fitted on the "
        "training prompts only; the policy calls the router's pick (or the cheapest, or the 2 / 3 cheapest at once), "
        "then escalates while "
        "gain - lambda * cost > 0 and the best answer's P(right) < tau, within max steps. Cost counts every "
        "call made. Metrics are those of `llmroute eval` on the hull of all swept points (first x lambda x tau); "
        "tau = 0 is the one-shot router on the same estimates (last column).",
        "",
        md_table(
            [
                "cascade",
                "signals",
                "max steps",
                "gap closed",
                "cost ratio @ best single q",
                "max quality",
                "gap closed by first step: " + " / ".join(FIRSTS),
                "one-shot gap closed",
            ],
            rows,
        ),
        "",
        f"Acceptance (stretch): gap closed counting all calls {_f(head['gap_closed'])} (bar >= 0.25; one-shot "
        f"default {m['one_shot_default_gap_closed']}): {'met' if (head['gap_closed'] or 0) >= 0.25 else 'NOT met'}; "
        f"cost ratio at the best single model's quality {_f(head['cost_ratio_at_best_quality'])} (bar <= 0.7): "
        f"{'met' if (head['cost_ratio_at_best_quality'] or 9) <= 0.7 else 'NOT met'}.",
    ]
    esc = [p for p in head["hull_points"] if p["calls"] > 1.0005]
    if esc:
        best = max(esc, key=lambda p: p["quality"])
        md += [
            "",
            f"Hull of the all-signals cascade: {len(head['hull_points'])} points, {len(esc)} of them make more than "
            f"one call per prompt on average (e.g. first {best['first']}, tau {best['tau']:g}: cost "
            f"{best['cost']:.6f}, quality {best['quality']:.4f}, {best['calls']:.2f} calls per prompt); the rest "
            "are one-shot points.",
        ]
    else:
        md += ["", "Hull of the all-signals cascade: only one-shot points (no escalating policy is on it)."]
    if doc["guard"]:
        diffs = [g["diff"] for g in doc["guard"]]
        worst = min(doc["guard"], key=lambda g: g["diff"])
        md += [
            "",
            f"Guard, two-model subsets ({len(diffs)} of {doc['meta']['pairs_total']} pairs; one-shot = the 11-model default router's "
            f"out-of-fold estimates restricted to the pair): cascade AIQ - one-shot AIQ min {min(diffs):+.4f} "
            f"({' / '.join(x.split('/')[-1] for x in worst['models'])}), median "
            f"{sorted(diffs)[len(diffs) // 2]:+.4f}, max {max(diffs):+.4f}; pairs better by > 0.005: "
            f"{sum(d > 0.005 for d in diffs)}. Bar (never below by more than 0.005): "
            f"{'met' if min(diffs) >= -0.005 else 'NOT met'} (threshold 0 is the one-shot router, so the hull "
            "cannot fall below it).",
        ]
    update_section("cascade", "\n".join(md), title="Cascades (offline, every call paid)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="all", help="two-model guard: all, none, or the first N pairs")
    ap.add_argument("--quick", action="store_true", help="only the all-signals cascade")
    ap.add_argument("--md-only", action="store_true", help="rewrite the BENCHMARKS.md section from results")
    args = ap.parse_args()
    if args.md_only:
        write_md(json.loads(RESULTS.read_text()))
        return
    if not DATA.exists():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data/routerbench_subset")

    def save(doc: dict) -> None:
        RESULTS.write_text(json.dumps(doc, indent=1))
        write_md(doc)

    save(run(args.pairs, args.quick, save))
    print(f"wrote {RESULTS.relative_to(ROOT)} and BENCHMARKS.md (section cascade)")


if __name__ == "__main__":
    main()
