"""Signals, rules, guards and cache: latency and detection quality.

Writes benchmarks/results/signals.json and the "signals" section of BENCHMARKS.md.

    .venv/bin/python benchmarks/signals.py [--quick] [--cache-only]

Latency: one request at a time, warm, on typical chat requests (project-written prompts, with
and without a system message), p50/p99 per signal and for a full rule evaluation of
examples/llmroute.yaml (and of an "all signals" config that adds language, shape, similarity
and out-of-domain). Quality: PII recall per type on the generated set, flag rate on
../shared/data prompts and on the everyday sets (datasets/everyday), ISBNs and other look-alikes
taken for PII; jailbreak AUROC and recall with each attack family held out of training, recall on
a held-back attack set written in other words, and blocks at the example config's threshold on
everyday prompts, on the everyday sets (through examples/llmroute.yaml) and on every
../shared/data prompt; out-of-domain AUROC over task-family splits of ../shared/data (fit on some
families, score the held-out family against held-out in-domain prompts); cache hit rate on the
paraphrase sets and false hits on the contrast sets, over a threshold sweep, on the development
pairs (which the guard's word lists were built on) and on the held-out pairs (written afterwards,
in words none of the lists has). `--cache-only` reruns just the cache part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _md import md_table, update_section  # noqa: E402
from llmroute.cache import SemanticCache  # noqa: E402
from llmroute.cache.evaldata import (  # noqa: E402
    contrast_pairs,
    heldout_contrast_pairs,
    heldout_paraphrase_pairs,
    paraphrase_pairs,
)
from llmroute.guards.evaldata import (  # noqa: E402
    clean_sentences,
    everyday_prompts,
    held_back_attacks,
    isbn_sentences,
    pii_examples,
)
from llmroute.guards.jailbreak import JailbreakDetector  # noqa: E402
from llmroute.guards.jailbreak_data import ATTACK_FAMILIES, BENIGN_FAMILIES, examples  # noqa: E402
from llmroute.guards.ood import OODDetector  # noqa: E402
from llmroute.guards.pii import PII_TYPES, PIIDetector, luhn_ok  # noqa: E402
from llmroute.signals.engine import RuleEngine  # noqa: E402
from llmroute.signals.extractors import BuildContext, build_signal  # noqa: E402
from llmroute.signals.request import SignalRequest  # noqa: E402

FAMILY_MAP = {"arc_easy": "arc", "arc_challenge": "arc", "arc-challenge": "arc", "math_prealgebra": "math",
              "gsm8k": "math", "humaneval": "code", "humaneval_js": "code", "mbpp": "code"}  # fmt: skip


def example_block_threshold() -> float:
    """The `gte` of the jailbreak block rule in examples/llmroute.yaml (what `make run` serves)."""
    rules = yaml.safe_load((ROOT / "examples" / "llmroute.yaml").read_text())["rules"]
    return float(next(r for r in rules if r["when"].get("signal") == "jailbreak")["when"]["gte"])


def pct(xs: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    """Wall-clock (and thread CPU time) percentiles in microseconds."""
    a = np.asarray(xs)
    out = {"p50_us": round(float(np.percentile(a, 50)), 1), "p99_us": round(float(np.percentile(a, 99)), 1),
           "mean_us": round(float(a.mean()), 1)}  # fmt: skip
    if cpu:
        c = np.asarray(cpu)
        out |= {
            "cpu_p50_us": round(float(np.percentile(c, 50)), 1),
            "cpu_p99_us": round(float(np.percentile(c, 99)), 1),
        }
    return out


class Timer:
    """Wall-clock and thread-CPU stopwatch (CPU time is robust to other processes on the box)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Timer:
        self._w, self._c = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu.append((time.thread_time() - self._c) * 1e6)
        self.wall.append((time.perf_counter() - self._w) * 1e6)

    def stats(self) -> dict[str, float]:
        return pct(self.wall, self.cpu)


def chat_requests() -> list[Any]:
    """Typical chat requests: short project-written prompts, half with a system message."""
    texts = [t for fam in BENIGN_FAMILIES.values() for t in fam]
    texts += [a for a, _ in paraphrase_pairs()][:60] + [s for s, _, _ in pii_examples(6, seed=3)]
    texts += [t for t, y, _ in examples(seed=5) if y == 1][:20]
    reqs: list[Any] = []
    for i, t in enumerate(texts):
        if i % 2:
            reqs.append([{"role": "system", "content": "You are a helpful assistant. Answer concisely."},
                         {"role": "user", "content": t}])  # fmt: skip
        else:
            reqs.append(t)
    return reqs


def shared_prompts(name: str, n: int | None = None, seed: int = 0) -> Any:
    import pandas as pd

    path = DATA / name / "data.parquet"
    if not path.exists():
        return None
    df = pd.read_parquet(path, columns=["prompt_id", "prompt", "task"]).drop_duplicates("prompt_id")
    if n is not None and len(df) > n:
        df = df.sample(n, random_state=seed)
    df["family"] = [FAMILY_MAP.get(t.split("/")[0], t.split("/")[0]) for t in df.task]
    return df.reset_index(drop=True)


# ---- latency ------------------------------------------------------------------------------------
def bench_latency(encoder: Any, reqs: list[Any], repeats: int, ood: OODDetector | None) -> dict[str, Any]:
    ex_cfg = yaml.safe_load((ROOT / "examples" / "llmroute.yaml").read_text())
    ctx = BuildContext(encoder=encoder)
    sig_defs: dict[str, dict[str, Any]] = {
        "tokens": {"type": "tokens"},
        "shape": {"type": "shape"},
        "language": {"type": "language"},
        "keywords": {
            "type": "keywords",
            "keywords": ["python", "javascript", "sql", "function", "stack trace"],
        },
        "regex": {"type": "regex", "patterns": {"ticket": r"\b[A-Z]{2,}-\d+\b", "url": r"https?://\S+"}},
        "similarity": {"type": "similarity", "examples": ["hello", "hi there", "good morning", "thanks!"]},
        "pii": {"type": "pii"},
        "jailbreak": {"type": "jailbreak"},
    }
    for name, spec in (ex_cfg.get("signals") or {}).items():
        sig_defs.setdefault(f"example:{name}", spec)
    signals = {n: build_signal(n, s, ctx) for n, s in sig_defs.items()}
    if ood is not None:
        from llmroute.signals.extractors import OODSignal

        o = OODSignal.__new__(OODSignal)
        o.name, o.params, o.detector = "ood", {}, ood
        signals["ood"] = o
    for s in signals.values():
        getattr(s, "warm", lambda: None)()
    out: dict[str, Any] = {}
    # embedding on its own
    tm = Timer()
    for _ in range(repeats):
        for r in reqs:
            req = SignalRequest.build(r, encoder=encoder)
            with tm:
                req.embedding()
    out["embedding"] = tm.stats()
    for name, s in signals.items():
        tm = Timer()
        for _ in range(repeats):
            for r in reqs:
                req = SignalRequest.build(r, encoder=encoder)
                if s.needs_embedding or name == "ood":
                    req.embedding()  # reported separately; shared by all embedding signals
                with tm:
                    s.compute(req)
        out[name] = tm.stats()
    # full rule evaluations
    engines = {"examples/llmroute.yaml": RuleEngine(ex_cfg, encoder=encoder, base_dir=ROOT / "examples")}
    all_rules = [
        {"name": "jb", "priority": 100, "when": {"signal": "jailbreak", "gte": 0.9}, "action": {"type": "block"}},
        {"name": "pii", "priority": 90, "when": {"signal": "pii"}, "action": {"type": "redact"}},
        {"name": "greet", "priority": 80, "when": {"all": [{"signal": "similarity", "gte": 0.9},
                                                           {"signal": "shape.turns", "lte": 1}]},
         "action": {"type": "route", "model": "small"}},
        {"name": "lang", "priority": 70, "when": {"signal": "language", "not_in": ["en"]},
         "action": {"type": "set", "tradeoff": 0.0}},
        {"name": "kw", "priority": 60, "when": {"any": [{"signal": "keywords"}, {"signal": "regex"}]},
         "action": {"type": "route", "model": "coder"}},
        {"name": "long", "priority": 50, "when": {"signal": "tokens", "gt": 2000}, "action": {"type": "set", "tradeoff": 100}},
    ]  # fmt: skip
    all_sigs = {k: v for k, v in sig_defs.items() if k in ("keywords", "regex", "similarity")}
    all_sigs.update({k.split(":", 1)[1]: v for k, v in sig_defs.items() if k.startswith("example:")})
    if ood is not None:
        import tempfile

        state = Path(tempfile.mkdtemp()) / "ood.npz"
        ood.save(state)
        all_sigs["ood"] = {"type": "ood", "state": str(state)}
        all_rules.append({"name": "ood", "priority": 40, "when": {"signal": "ood", "gt": 3.0},
                          "action": {"type": "block", "message": "out of domain"}})  # fmt: skip
    engines["all signals"] = RuleEngine({"signals": all_sigs, "rules": all_rules}, encoder=encoder)
    for name, eng in engines.items():
        eng.warm()
        tm = Timer()
        n_signals = []
        for _ in range(repeats):
            for r in reqs:
                with tm:
                    v = eng.evaluate(r)
                n_signals.append(len(v.signals))
        out[f"rules: {name}"] = {**tm.stats(), "mean_signals_computed": round(statistics.mean(n_signals), 2),
                                 "n_rules": len(eng.rules)}  # fmt: skip
    return out


# ---- quality --------------------------------------------------------------------------------
def everyday_sets() -> dict[str, list[Any]]:
    """The project's everyday prompt sets (datasets/everyday/*.jsonl: a prompt or a conversation each)."""
    out: dict[str, list[Any]] = {}
    for name in ("dev", "check"):
        path = ROOT / "datasets" / "everyday" / f"{name}.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            out[name] = [r.get("messages") or r["prompt"] for r in rows]
    return out


def _all_text(x: Any) -> str:
    return x if isinstance(x, str) else "\n".join(str(m.get("content", "")) for m in x)


def bench_pii(n_per_type: int) -> dict[str, Any]:
    det = PIIDetector()
    found = dict.fromkeys(PII_TYPES, 0)
    total = dict.fromkeys(PII_TYPES, 0)
    for sentence, t, value in pii_examples(n_per_type, seed=7):
        total[t] += 1
        if any(m.type == t and value.replace(" ", "") in m.text.replace(" ", "") for m in det.find(sentence)):
            found[t] += 1
    out: dict[str, Any] = {
        "recall": {t: round(found[t] / total[t], 4) for t in PII_TYPES},
        "n_per_type": n_per_type,
    }
    flag: dict[str, Any] = {}
    for name in ("routerbench_subset", "routellm", "routerdc_7model"):
        df = shared_prompts(name)
        if df is None:
            continue
        flagged = [det.types_in(p) for p in df.prompt]
        by_type: dict[str, int] = {}
        for f in flagged:
            for t in f:
                by_type[t] = by_type.get(t, 0) + 1
        flag[name] = {"prompts": len(df), "flag_rate": round(sum(bool(f) for f in flagged) / len(df), 5),
                      "by_type": by_type}  # fmt: skip
    out["shared_flag_rate"] = flag
    # look-alikes: valid hyphenated ISBN-13/10 (a share pass Luhn), dates, masks, versions, arithmetic
    isbns = isbn_sentences(3000, seed=11)
    out["isbn"] = {"sentences": len(isbns),
                   "luhn_passing": sum(luhn_ok(re.sub(r"\D", "", v)) for _, v in isbns),
                   "flagged_as_card": sum(any(m.type == "card" for m in det.find(s)) for s, _ in isbns)}  # fmt: skip
    clean = clean_sentences()
    out["lookalikes"] = {"sentences": len(clean), "flagged": sum(bool(det.find(s)) for s in clean)}
    out["everyday_flagged"] = {
        name: {"prompts": len(xs), "by_type": _count_types(det, xs)} for name, xs in everyday_sets().items()
    }
    return out


def _count_types(det: PIIDetector, xs: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in xs:
        for t in det.types_in(_all_text(x)):
            counts[t] = counts.get(t, 0) + 1
    return counts


def bench_jailbreak(threshold: float) -> dict[str, Any]:
    """Held-out recall (attack families held out of training; a held-back set in other words) and
    false blocks (everyday prompts, the everyday sets through examples/llmroute.yaml, every shared prompt)."""
    from sklearn.metrics import roc_auc_score

    data = examples(seed=0)
    per_family, recall_family = {}, {}
    all_y, all_s = [], []
    t0 = time.perf_counter()
    JailbreakDetector(train_examples=[(t, y) for t, y, _ in data], seed=1)  # (seed 1: not the cached fit)
    fit_s = time.perf_counter() - t0
    for held in ATTACK_FAMILIES:
        # hold out one attack family AND one third of the benign prompts
        benign_test = {t for i, (t, y, _) in enumerate(data) if y == 0 and i % 3 == 0}
        train = [(t, y) for t, y, f in data if f != held and t not in benign_test]
        det = JailbreakDetector(train_examples=train)
        test = [(t, y) for t, y, f in data if f == held or t in benign_test]
        s = [det.score(t) for t, _ in test]
        y = [y for _, y in test]
        per_family[held] = round(float(roc_auc_score(y, s)), 4)
        recall_family[held] = round(
            float(np.mean([a >= threshold for a, b in zip(s, y, strict=True) if b])), 4
        )
        all_y += y
        all_s += s
    ya, sa = np.array(all_y), np.array(all_s)
    pr = {}
    for th in (0.5, 0.7, threshold):
        pred = sa >= th
        tp = int((pred & (ya == 1)).sum())
        pr[str(th)] = {"precision": round(tp / max(1, int(pred.sum())), 4),
                       "recall": round(tp / max(1, int((ya == 1).sum())), 4)}  # fmt: skip
    det = JailbreakDetector()
    held_back = np.array([det.score(t) for t, _ in held_back_attacks()])
    out: dict[str, Any] = {
        "training": {"examples": len(data), "attacks": int(sum(y for _, y, _ in data)), "fit_seconds": round(fit_s, 2)},
        "auroc_leave_one_family_out": per_family,
        "recall_leave_one_family_out": recall_family,
        "auroc_pooled": round(float(roc_auc_score(ya, sa)), 4),
        "threshold": threshold,
        "precision": pr[str(threshold)]["precision"],
        "recall": pr[str(threshold)]["recall"],
        "benign_held_out_blocked": int(((sa >= threshold) & (ya == 0)).sum()),
        "by_threshold": pr,
        "patterns_only_recall": round(
            float(np.mean([JailbreakDetector(None).score(t) >= threshold for t, y, _ in data if y == 1])), 4
        ),
        "held_back": {"attacks": len(held_back), "recall": round(float((held_back >= threshold).mean()), 4),
                      "recall_at_0.5": round(float((held_back >= 0.5).mean()), 4),
                      "patterns_only_recall": round(float(np.mean([JailbreakDetector(None).score(t) >= threshold
                                                                    for t, _ in held_back_attacks()])), 4)},
    }  # fmt: skip
    everyday = np.array([det.score(p) for p, _ in everyday_prompts()])
    out["everyday_prompts"] = {"prompts": len(everyday), "blocked": int((everyday >= threshold).sum()),
                               "max_score": round(float(everyday.max()), 4),
                               "hello_how_are_you": round(det.score("hello, how are you?"), 4),
                               "hello_what_can_you_do": round(det.score("Hello, what can you do?"), 4)}  # fmt: skip
    ex_cfg = yaml.safe_load((ROOT / "examples" / "llmroute.yaml").read_text())
    engine = RuleEngine(ex_cfg, base_dir=ROOT / "examples")
    sets = {}
    for name, xs in everyday_sets().items():
        scores = [det.score(x if isinstance(x, str) else str(x[-1].get("content", ""))) for x in xs]
        sets[name] = {"prompts": len(xs), "refused_by_example_config": sum(engine.evaluate(x).blocked for x in xs),
                      "max_score": round(float(max(scores)), 4)}  # fmt: skip
    out["everyday_sets"] = sets
    flag = {}
    for name in ("routerbench_subset", "routellm", "routerdc_7model"):
        df = shared_prompts(name)
        if df is None:
            continue
        s = np.array([det.score(p) for p in df.prompt])
        flag[name] = {"prompts": len(df), "blocked": int((s >= threshold).sum()),
                      "flag_rate_at_threshold": round(float((s >= threshold).mean()), 5),
                      "flag_rate_at_0.5": round(float((s >= 0.5).mean()), 5),
                      "max_score": round(float(s.max()), 4)}  # fmt: skip
    out["shared_flag_rate"] = flag
    return out


def bench_ood(encoder: Any, per_family: int, repeats: int = 3) -> tuple[dict[str, Any], OODDetector | None]:
    """Leave-one-family-out AUROC, averaged over `repeats` random 80/20 splits of the in-domain prompts.

    Also reports the embedding + shape relative-Mahalanobis detector alone (the method before the
    n-gram parts) on the same splits, as `auroc_mahalanobis_only`.
    """
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {}
    keep: OODDetector | None = None
    for name in ("routerbench_subset", "routellm", "routerdc_7model"):
        df = shared_prompts(name)
        if df is None:
            continue
        import pandas as pd

        df = pd.concat([g.sample(min(len(g), per_family), random_state=0) for _, g in df.groupby("family")])
        texts = df.prompt.tolist()
        E = encoder.encode(texts)
        fam = df.family.to_numpy()
        res = {}
        for held in sorted(set(fam)):
            out_idx = np.where(fam == held)[0]
            rows: dict[str, list[float]] = {"auroc": [], "base": [], "tpr": [], "fpr": []}
            for rep in range(repeats):
                in_idx = np.random.default_rng(rep).permutation(np.where(fam != held)[0])
                n_tr = int(0.8 * len(in_idx))
                tr, te = in_idx[:n_tr], in_idx[n_tr:]
                idx = np.r_[te, out_idx]
                y = np.r_[np.zeros(len(te)), np.ones(len(out_idx))]
                tr_texts, idx_texts = [texts[i] for i in tr], [texts[i] for i in idx]
                s = OODDetector().fit(E[tr], tr_texts).score(E[idx], idx_texts)
                base = (
                    OODDetector(use_ngrams=False, ngram_dims=0).fit(E[tr], tr_texts).score(E[idx], idx_texts)
                )
                rows["auroc"].append(float(roc_auc_score(y, s)))
                rows["base"].append(float(roc_auc_score(y, base)))
                rows["tpr"].append(float((s[len(te) :] > 3).mean()))
                rows["fpr"].append(float((s[: len(te)] > 3).mean()))
            res[held] = {"auroc": round(float(np.mean(rows["auroc"])), 4),
                         "auroc_repeats": [round(x, 4) for x in rows["auroc"]],
                         "auroc_mahalanobis_only": round(float(np.mean(rows["base"])), 4),
                         "in_families": sorted(set(fam) - {held}),
                         "tpr_at_score_3": round(float(np.mean(rows["tpr"])), 4),
                         "fpr_at_score_3": round(float(np.mean(rows["fpr"])), 4)}  # fmt: skip
        out[name] = {"splits": res, "repeats": repeats,
                     "mean_auroc": round(float(np.mean([r["auroc"] for r in res.values()])), 4),
                     "mean_auroc_mahalanobis_only": round(float(np.mean([r["auroc_mahalanobis_only"]
                                                                          for r in res.values()])), 4)}  # fmt: skip
        if name == "routerbench_subset":
            keep = OODDetector().fit(E, texts)
    return out, keep


CACHE_THRESHOLDS = [0.8, 0.85, 0.88, 0.9, 0.92, 0.95]


def bench_cache(encoder: Any, thresholds: list[float]) -> dict[str, Any]:
    """Paraphrase hit rates and contrast false hits per threshold, on the development sets (the
    pairs the critical-word lists were built on) and on the held-out sets (written after them, in
    words none of the lists has)."""
    sets = {
        "dev": (paraphrase_pairs(), contrast_pairs()),
        "heldout": (heldout_paraphrase_pairs(), heldout_contrast_pairs()),
    }
    resp = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]
    }
    rows: dict[str, dict[str, Any]] = {}
    for th in thresholds:
        row: dict[str, Any] = {}
        for name, (para, contrast) in sets.items():
            c = SemanticCache(encoder, threshold=th)
            hits = 0
            for i, (a, b) in enumerate(para):
                c.store(a, resp, scope=f"p{i}")
                hits += c.lookup(b, scope=f"p{i}") is not None
            false_hits: dict[str, int] = {}
            for i, (a, b, kind) in enumerate(contrast):
                c.store(a, resp, scope=f"c{i}")
                if c.lookup(b, scope=f"c{i}") is not None:
                    false_hits[kind] = false_hits.get(kind, 0) + 1
            # the same without critical-token signatures (embedding similarity only), for comparison
            a_emb = encoder.encode([a for a, _, _ in contrast])
            b_emb = encoder.encode([b for _, b, _ in contrast])
            sim_only = int(((a_emb * b_emb).sum(1) >= th).sum())
            row[name] = {"paraphrase_hit_rate": round(hits / len(para), 4),
                         "contrast_false_hits": sum(false_hits.values()), "false_hits_by_kind": false_hits,
                         "similarity_only_false_hits": sim_only}  # fmt: skip
        rows[str(th)] = row
    pairs = {name: {"paraphrase": len(p), "contrast": len(c)} for name, (p, c) in sets.items()}
    # lookup latency on a warm cache of 1,000 entries
    c = SemanticCache(encoder)
    for i in range(1000):
        c.store(f"question number {i} about topic {i % 37}", resp)
    times = []
    for _a, b in paraphrase_pairs():
        t0 = time.perf_counter()
        c.lookup(b)
        times.append((time.perf_counter() - t0) * 1e6)
    return {"pairs": pairs, "by_threshold": rows,
            "default_threshold": SemanticCache(encoder).threshold, "lookup_latency_sqlite_1k": pct(times)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    ap.add_argument("--encoder", default="static-minilm")
    ap.add_argument(
        "--cache-only",
        action="store_true",
        help="rerun only the cache evaluation; keep the other results of the existing signals.json",
    )
    args = ap.parse_args()
    from llmroute.signals.hashenc import resolve_encoder

    encoder = resolve_encoder(args.encoder)
    out = ROOT / "benchmarks" / "results" / "signals.json"
    if args.cache_only:
        results = json.loads(out.read_text())
        results["cache"] = bench_cache(encoder, CACHE_THRESHOLDS)
        results["cache"]["generated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["cache"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out.write_text(json.dumps(results, indent=2))
        update_section("signals", render(results), title="Signals, rules, guards and cache")
        print(json.dumps(results["cache"], indent=2))
        return
    t_start = time.time()
    reqs = chat_requests()
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "encoder": args.encoder,
        "typical_requests": len(reqs),
    }
    results["pii"] = bench_pii(50 if args.quick else 300)
    results["jailbreak"] = bench_jailbreak(example_block_threshold())
    results["ood"], ood = bench_ood(encoder, 300 if args.quick else 1500)
    results["cache"] = bench_cache(encoder, CACHE_THRESHOLDS)
    results["latency"] = bench_latency(encoder, reqs, 2 if args.quick else 10, ood)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.time() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    update_section("signals", render(results), title="Signals, rules, guards and cache")
    print(json.dumps(results, indent=2))


def render(r: dict[str, Any]) -> str:
    lat = r["latency"]
    parts = [f"Encoder `{r['encoder']}`, {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; "
             f"{r['typical_requests']} typical chat requests (project-written), one at a time, warm. "
             "`benchmarks/signals.py`, raw numbers in `benchmarks/results/signals.json`.\n"]  # fmt: skip
    parts.append(md_table(["signal / evaluation", "p50 µs", "p99 µs", "mean µs", "CPU p50 µs", "CPU p99 µs"],
                          [[k, v["p50_us"], v["p99_us"], v["mean_us"], v.get("cpu_p50_us", ""), v.get("cpu_p99_us", "")]
                           for k, v in lat.items()]))  # fmt: skip
    parts.append(
        f"\nWall-clock p99 includes interference from whatever else runs on the box (1-minute load "
        f"average {r['machine']['loadavg_at_start'][0]} at start, {r['machine']['loadavg_at_end'][0]} at end, "
        f"on {r['machine']['cpus']} CPUs); the CPU-time columns (thread CPU time) measure the work itself."
    )
    pii = r["pii"]
    parts.append("\n**PII** recall on the generated set (" + str(pii["n_per_type"]) + " sentences per type): "
                 + ", ".join(f"{t} {v:.3f}" for t, v in pii["recall"].items()) + ". Flagged share of "
                 "../shared/data prompts: " + ", ".join(f"{k} {v['flag_rate']:.4f} ({v['prompts']})"
                                                        for k, v in pii["shared_flag_rate"].items()) + ".")  # fmt: skip
    if "isbn" in pii:
        isbn, look = pii["isbn"], pii["lookalikes"]
        parts.append(f"Look-alikes: {isbn['flagged_as_card']} of {isbn['sentences']} sentences with a valid hyphenated "
                     f"ISBN-13/ISBN-10 taken for a card ({isbn['luhn_passing']} of the ISBNs pass Luhn; 181 of 3000 "
                     f"were cards before issue 10); {look['flagged']} of {look['sentences']} PII-free sentences with "
                     "dates, versions, masks, loopback addresses and arithmetic flagged (8 before). Everyday sets, "
                     "prompts with PII by type (true positives: pasted contact lists): "
                     + ", ".join(f"{k} {v['by_type']} of {v['prompts']}" for k, v in pii["everyday_flagged"].items())
                     + ".")  # fmt: skip
    jb = r["jailbreak"]
    th = jb["threshold"]
    parts.append(f"\n**Jailbreak** (project-written set of {jb['training']['examples']} texts, "
                 f"{jb['training']['attacks']} attacks; fitted in {jb['training']['fit_seconds']} s at start-up): "
                 f"with each attack family held out of training, at score >= {th} (the example config's block "
                 f"threshold) recall {jb['recall']} ("
                 + ", ".join(f"{k} {v}" for k, v in jb["recall_leave_one_family_out"].items())
                 + f"), {jb['benign_held_out_blocked']} held-out benign texts blocked, pooled AUROC {jb['auroc_pooled']}; "
                 f"at >= 0.5: precision {jb['by_threshold']['0.5']['precision']}, recall "
                 f"{jb['by_threshold']['0.5']['recall']} (patterns alone: recall {jb['patterns_only_recall']}). "
                 f"Held-back attacks written in other words (never trained on): recall {jb['held_back']['recall']} "
                 f"at {th}, {jb['held_back']['recall_at_0.5']} at 0.5 (patterns alone "
                 f"{jb['held_back']['patterns_only_recall']}).")  # fmt: skip
    ev = jb["everyday_prompts"]
    sets = "; ".join(f"{k}: {v['refused_by_example_config']} of {v['prompts']} refused (highest score {v['max_score']})"
                     for k, v in jb["everyday_sets"].items())  # fmt: skip
    shared = ", ".join(f"{k} {v['blocked']} of {v['prompts']} (highest {v['max_score']}, share >= 0.5: "
                       f"{v['flag_rate_at_0.5']})" for k, v in jb["shared_flag_rate"].items())  # fmt: skip
    parts.append(f"False blocks at >= {th}: everyday prompts {ev['blocked']} of {ev['prompts']} (highest "
                 f"{ev['max_score']}; 'hello, how are you?' {ev['hello_how_are_you']}, 'Hello, what can you do?' "
                 f"{ev['hello_what_can_you_do']}); everyday sets through examples/llmroute.yaml: {sets}; shared "
                 f"prompts blocked: {shared}.")  # fmt: skip
    parts.append("Before issue 10 (embedding classifier, commit 3bf7284): recall 0.62 with each family held out on "
                 "the then 100-attack set, held-back attacks 0.23, 'hello, how are you?' blocked (0.90), shared "
                 "prompts blocked: routellm 6, routerdc_7model 4.")  # fmt: skip
    rows = []
    for ds, v in r["ood"].items():
        for fam, s in v["splits"].items():
            rows.append([ds, fam, s["auroc"], s.get("auroc_mahalanobis_only", ""), s["tpr_at_score_3"],
                         s["fpr_at_score_3"]])  # fmt: skip
        rows.append([ds, "**mean**", v["mean_auroc"], v.get("mean_auroc_mahalanobis_only", ""), "", ""])
    reps = next(iter(r["ood"].values())).get("repeats", 1) if r["ood"] else 1
    parts.append("\n**Out-of-domain**: fit on all but one task family (80% of their prompts), score the held-out "
                 f"family against the other 20%; mean over {reps} random splits. AUROC = the detector (relative "
                 "Mahalanobis over embedding + text shape + hashed character n-gram profile, plus character "
                 "n-gram vocabulary novelty); 'Mahalanobis only' = the same without the n-gram parts.\n")  # fmt: skip
    parts.append(md_table(["set", "held-out family", "AUROC", "Mahalanobis only", "TPR @ score>3", "FPR @ score>3"],
                          rows))  # fmt: skip
    c = r["cache"]
    pairs = c["pairs"]
    parts.append(
        f"\n**Semantic cache** (default threshold {c['default_threshold']}). Two sets of project-written pairs: "
        f"**dev** ({pairs['dev']['paraphrase']} paraphrase, {pairs['dev']['contrast']} contrast pairs: "
        "`contrast_pairs()` / `paraphrase_pairs()` in `src/llmroute/cache/evaldata.py`), the pairs the guard's "
        "critical-word lists were built on, so its 0 false hits there say little; **held-out** "
        f"({pairs['heldout']['paraphrase']} paraphrase, {pairs['heldout']['contrast']} contrast pairs: "
        "`heldout_*_pairs()`), written afterwards in other words of the same families, with distinguishing "
        "words that are in none of the lists (a test checks it). The held-out numbers are the guard's "
        "measure; 'w/o critical tokens' = embedding similarity alone.\n"
    )  # fmt: skip
    rows = []
    for th, v in c["by_threshold"].items():
        d, h = v["dev"], v["heldout"]
        rows.append([th, d["paraphrase_hit_rate"], h["paraphrase_hit_rate"], h["contrast_false_hits"],
                     ", ".join(f"{k} {n}" for k, n in sorted(h["false_hits_by_kind"].items())) or "-",
                     h["similarity_only_false_hits"], d["contrast_false_hits"], d["similarity_only_false_hits"]])  # fmt: skip
    parts.append(md_table(["threshold", "paraphrase hits (dev)", "paraphrase hits (held-out)",
                           "held-out contrast false hits", "by family", "held-out w/o critical tokens",
                           "dev contrast false hits", "dev w/o critical tokens"], rows))  # fmt: skip
    parts.append(
        f"\nCache lookup (SQLite, 1,000 entries): p50 {c['lookup_latency_sqlite_1k']['p50_us']} µs, "
        f"p99 {c['lookup_latency_sqlite_1k']['p99_us']} µs"
        + (
            f" (cache part rerun alone on {c['generated']}, 1-minute load average {c['loadavg_at_end'][0]})."
            if "loadavg_at_end" in c
            else "."
        )
    )
    return "\n".join(parts)


if __name__ == "__main__":
    main()
