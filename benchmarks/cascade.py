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
- the gateway's re-estimation (`estimator="difficulty"`: `DifficultyReestimator`, its max_score
  fitted per fold on the training prompts) beside the fitted one, for every signal set and on
  the pairs (`--difficulty-pairs`);
- calibration (held-out, pooled over the folds): ECE / AUROC of the learned text verifier and of
  the re-estimated P(right) of a lone first answer, per run.

    nice .venv/bin/python benchmarks/cascade.py [--pairs all|none|N] [--fitted run|keep]
        [--difficulty-pairs all|none|N] [--quick]

`--pairs none` keeps the fitted estimator's guard of the previous results file, `--fitted keep`
its signal-set runs (their commit and date are recorded in the section); the default reruns
everything.

Writes benchmarks/results/cascade.json and the "Cascades" section of BENCHMARKS.md. Evidence and
priors are cached under $TMPDIR/llmroute-cascade-cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import subprocess
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
    out["estimator"] = res["estimator"]
    out["max_score"] = res["max_score"]
    out["calibration"] = res["calibration"]
    return out


def _git(*args: str) -> str:
    """Output of a git command in the repository ('' when git is unavailable)."""
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _previous(part: str) -> dict | None:
    """`part` ("guard": the fitted estimator's two-model guard, or "runs": its signal sets) of
    the existing results file, with the commit and date it was measured at (recorded in the
    file, else the commit that last wrote the file); None when the file has none."""
    if not RESULTS.exists():
        return None
    old = json.loads(RESULTS.read_text())
    if not old.get(part):
        return None
    meta = old.get("meta", {})
    src = meta.get(f"{part}_from") or {}
    commit = src.get("commit") or meta.get("commit")
    date = src.get("date") or meta.get("date")
    if not commit:
        commit, _, date = _git("log", "-1", "--format=%h %cI", "--", str(RESULTS)).partition(" ")
    return {
        part: old[part],
        "pairs_total": meta.get("pairs_total", len(old[part])),
        "from": {"commit": commit or "unknown", "date": date or "unknown", "kept": True},
    }


def _guard_row(a: str, b: str, res: dict) -> dict:
    d = res["aiq"] - res["one_shot"]["aiq"]
    return {
        "models": [a, b],
        "aiq": res["aiq"],
        "one_shot_aiq": res["one_shot"]["aiq"],
        "diff": d,
        "gap_closed": res["gap_closed"],
        "one_shot_gap_closed": res["one_shot"]["gap_closed"],
    }


def run(
    pairs: str, quick: bool, save: Any = None, difficulty_pairs: str = "all", fitted: str = "run"
) -> dict:
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
    gateway: dict[str, Any] = {}
    guard: list[dict] = []
    guard_d: list[dict] = []
    doc = {"meta": {}, "runs": runs, "difficulty": gateway, "guard": guard, "guard_difficulty": guard_d}
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
        "pairs_total_difficulty": 0,
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--", "src", "benchmarks/cascade.py")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg": [round(x, 1) for x in os.getloadavg()],
    }
    prev = _previous("guard") if pairs == "none" else None
    kept = _previous("runs") if fitted == "keep" else None
    if fitted == "keep" and kept is None:
        sys.exit(f"--fitted keep: {RESULTS} holds no fitted runs to keep; run them (--fitted run)")
    if kept is not None:
        runs.update(kept["runs"])
        doc["meta"]["runs_from"] = kept["from"]
    if prev is not None:
        guard += prev["guard"]
        doc["meta"]["pairs_total"] = prev["pairs_total"]
        doc["meta"]["guard_from"] = prev["from"]
    if save is not None:
        save(doc)
    configs = [("all", list(ALL), STEPS)]
    if not quick:
        configs += [
            ("none", [], STEPS),
            ("checks + learned", ["checks", "learned"], STEPS),
            ("agreement", ["agreement"], STEPS),
        ]
    # the gateway's estimator first (no fitting beyond max_score and the text verifier: fast)
    for estimator, out in (("difficulty", gateway), ("fitted", runs)):
        if estimator == "fitted" and kept is not None:
            continue
        for name, signals, steps in configs:
            res = evaluate_cascade(
                table,
                priors=pri,
                evidence=ev,
                signals=signals,
                max_steps=steps,
                firsts=FIRSTS,
                estimator=estimator,
            )
            out[name] = _summary(res)
            fa = res["calibration"]["first_answer"]
            print(
                f"{estimator} {name}: gap {res['gap_closed']:.3f} cost ratio "
                f"{res['cost_ratio_at_best_quality']} (one-shot {res['one_shot']['gap_closed']:.3f}); "
                f"first answer ECE {_f(fa['ece'])} AUROC {_f(fa['auroc'])}; max_score {res['max_score']}; "
                f"{res['eval_s']:.0f} s, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            if save is not None:
                save(doc)
    combos = list(itertools.combinations(table.models, 2))
    for estimator, which, rows, key in (
        ("fitted", pairs, guard if prev is None else None, "pairs_total"),
        ("difficulty", difficulty_pairs, guard_d, "pairs_total_difficulty"),
    ):
        if which == "none" or rows is None:
            continue
        todo = combos if which == "all" else combos[: int(which)]
        doc["meta"][key] = len(todo)
        for a, b in todo:
            res = evaluate_cascade(
                table,
                priors=pri,
                evidence=ev,
                signals=list(ALL),
                models=[a, b],
                max_steps=STEPS,
                firsts=FIRSTS,
                estimator=estimator,
            )
            rows.append(_guard_row(a, b, res))
            print(f"{estimator} pair {a} / {b}: cascade - one-shot AIQ {rows[-1]['diff']:+.4f}", flush=True)
            if save is not None and len(rows) % 5 == 0:
                save(doc)
    doc["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
    doc["meta"]["load_avg_end"] = [round(x, 1) for x in os.getloadavg()]
    return doc


def _f(x: Any, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def _guard_md(rows: list[dict], total: int, label: str) -> str:
    """One sentence on a two-model guard's cascade - one-shot AIQ differences."""
    diffs = [g["diff"] for g in rows]
    worst = min(rows, key=lambda g: g["diff"])
    return (
        f"{label} ({len(diffs)} of {total} pairs): cascade AIQ - one-shot AIQ min {min(diffs):+.4f} "
        f"({' / '.join(x.split('/')[-1] for x in worst['models'])}), median "
        f"{sorted(diffs)[len(diffs) // 2]:+.4f}, max {max(diffs):+.4f}; pairs better by > 0.005: "
        f"{sum(d > 0.005 for d in diffs)}. Bar (never below by more than 0.005): "
        f"{'met' if min(diffs) >= -0.005 else 'NOT met'}."
    )


def _rows(runs: dict, estimator: str) -> list[list[str]]:
    rows = []
    for name, r in runs.items():
        cal = r.get("calibration", {})
        fa, vf = cal.get("first_answer") or {}, cal.get("verifier") or {}
        caps = [x for x in r.get("max_score") or [] if x is not None]
        rows.append(
            [
                estimator,
                name,
                ", ".join(r["signals"]) or "none (priors only)",
                _f(r["gap_closed"]),
                _f(r["cost_ratio_at_best_quality"]),
                _f(r["max_quality"], 4),
                " / ".join(_f(r["by_first"][f]["gap_closed"]) for f in FIRSTS if f in r["by_first"]),
                _f(r["one_shot"]["gap_closed"]),
                f"{_f(fa.get('ece'))} / {_f(fa.get('auroc'))}" if fa else "n/a",
                f"{_f(vf.get('ece'))} / {_f(vf.get('auroc'))}" if vf else "-",
                " ".join(f"{x:g}" for x in caps) if caps else "-",
            ]
        )
    return rows


def write_md(doc: dict) -> None:
    from _md import md_table, update_section

    m = doc["meta"]
    rows = _rows(doc.get("difficulty", {}), "gateway (difficulty)") + _rows(doc["runs"], "fitted")
    run_at = f"commit {m.get('commit', '?')}{' + uncommitted edits' if m.get('dirty') else ''}, {m.get('date', '?')}"
    load = m.get("load_avg")
    md = [
        f"`benchmarks/cascade.py` (`llmroute.cascade.offline`): routerbench_subset, {m['n_prompts']} prompts, "
        f"{m['folds']}-fold CV over prompt ids, seed {m['seed']}; max {STEPS} answers per prompt ({run_at}"
        + (f"; load average {load[0]} at the start" if load else "")
        + (f", {m['load_avg_end'][0]} at the end" if load and m.get("load_avg_end") else "")
        + "). Prior: the one-shot `default` router's "
        "out-of-fold estimates (its training prompts' priors from 3 inner folds). Two re-estimators under the "
        "same rule: **fitted** (`Reestimator`: P(answer right | prior, signals) and the expected gain of calling "
        "each model next, fitted per fold on the training prompts) and the **gateway's** (`DifficultyReestimator`, "
        "what `cascade.next: reestimate` runs: a Rasch difficulty posterior from the prior, each answer's score "
        "as a likelihood ratio capped at max_score, and the agreement of extracted answers; its max_score is "
        "chosen per fold on the training prompts by the log loss of a lone answer's P(right), listed per fold; "
        "the gateway's fixed default is 0.5, a pass no evidence). The policy calls the router's pick (or the "
        "cheapest, or the 2 / 3 cheapest at once), then escalates while gain - lambda * cost > 0 and the best "
        "answer's P(right) < tau. Cost counts every call made. Metrics are those of `llmroute eval` on the hull "
        "of all swept points (first x lambda x tau); tau = 0 is the one-shot router on the same estimates. "
        "Calibration is held out, pooled over the folds (10 bins): first answer = the re-estimated P(right) of "
        "each model's answer when it is the only one called; verifier = the per-fold learned text verifier "
        "(answers with a response)."
        + (
            f" The fitted rows are kept from the run at commit {m['runs_from']['commit']}, "
            f"{m['runs_from']['date']} (`--fitted keep`; the fitted path is unchanged since; that run "
            "recorded no calibration)."
            if m.get("runs_from")
            else ""
        ),
        "",
        md_table(
            [
                "re-estimator",
                "cascade",
                "signals",
                "gap closed",
                "cost ratio @ best single q",
                "max quality",
                "gap closed by first step: " + " / ".join(FIRSTS),
                "one-shot gap closed",
                "first answer ECE / AUROC",
                "verifier ECE / AUROC",
                "max_score per fold",
            ],
            rows,
        ),
    ]
    head = doc["runs"].get("all")
    if head is not None:
        md += [
            "",
            f"Acceptance (stretch), fitted, all signals: gap closed counting all calls {_f(head['gap_closed'])} "
            f"(bar >= 0.25; one-shot default {m['one_shot_default_gap_closed']}): "
            f"{'met' if (head['gap_closed'] or 0) >= 0.25 else 'NOT met'}; cost ratio at the best single model's "
            f"quality {_f(head['cost_ratio_at_best_quality'])} (bar <= 0.7): "
            f"{'met' if (head['cost_ratio_at_best_quality'] or 9) <= 0.7 else 'NOT met'}.",
        ]
        esc = [p for p in head["hull_points"] if p["calls"] > 1.0005]
        if esc:
            best = max(esc, key=lambda p: p["quality"])
            md += [
                "",
                f"Hull of the fitted all-signals cascade: {len(head['hull_points'])} points, {len(esc)} of them make "
                f"more than one call per prompt on average (e.g. first {best['first']}, tau {best['tau']:g}: cost "
                f"{best['cost']:.6f}, quality {best['quality']:.4f}, {best['calls']:.2f} calls per prompt); the rest "
                "are one-shot points.",
            ]
        else:
            md += [
                "",
                "Hull of the fitted all-signals cascade: only one-shot points (no escalating policy is on it).",
            ]
    if doc["guard"]:
        src = m.get("guard_from")
        kept = (
            f"; kept from the run at commit {src['commit']}, {src['date']}: `--pairs none`, the fitted path "
            "unchanged since"
            if src
            else ""
        )
        md += [
            "",
            _guard_md(
                doc["guard"],
                m["pairs_total"],
                "Guard, fitted, all signals, two-model subsets (one-shot = the 11-model default router's "
                f"out-of-fold estimates restricted to the pair{kept})",
            )
            + " Threshold 0 is the one-shot router, so the hull cannot fall below it.",
        ]
    if doc.get("guard_difficulty"):
        md += [
            "",
            _guard_md(
                doc["guard_difficulty"],
                m.get("pairs_total_difficulty", len(doc["guard_difficulty"])),
                "Guard, gateway re-estimator, all signals, the same two-model subsets",
            ),
        ]
    update_section("cascade", "\n".join(md), title="Cascades (offline, every call paid)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pairs",
        default="all",
        help="two-model guard of the fitted re-estimator: all, none (keep the previous results'), or the first N",
    )
    ap.add_argument(
        "--fitted",
        choices=("run", "keep"),
        default="run",
        help="the fitted re-estimator's signal sets: run, or keep those of the previous results file",
    )
    ap.add_argument(
        "--difficulty-pairs",
        default="all",
        help="two-model guard of the gateway's re-estimator: all, none, or N",
    )
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

    save(run(args.pairs, args.quick, save, args.difficulty_pairs, args.fitted))
    print(f"wrote {RESULTS.relative_to(ROOT)} and BENCHMARKS.md (section cascade)")


if __name__ == "__main__":
    main()
