"""Train a learned answer-quality verifier (`llmroute.cascade.learned`) from a table with responses.

Usage (from the project root)::

    .venv/bin/python scripts/train_learned_verifier.py [--data ../shared/data/routerbench_subset] \
        [--holdout 0.2] [--seed 0] --out verifier.json

Holds out a share of the prompts (all their rows), fits on the rest, prints the held-out AUROC,
ECE and reliability-diagram bins (pooled and per model), then refits on every row and writes the
JSON weights that `cascade.learned_verifier` reads. Nothing of the table is stored in the file:
only the feature weights and scaler.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from llmroute.cascade.learned import LearnedVerifier
from llmroute.data import load_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/routerbench_subset")
    ap.add_argument("--holdout", type=float, default=0.2, help="share of prompts held out for the report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    table = load_table(a.data).df
    t = table[table["response"].notna() & table["quality"].notna()]
    ids = np.array(sorted(t["prompt_id"].astype(str).unique()))
    np.random.default_rng(a.seed).shuffle(ids)
    held = set(ids[: int(len(ids) * a.holdout)].tolist())
    mask = t["prompt_id"].astype(str).isin(held)
    lv = LearnedVerifier.fit_table(t[~mask])
    te = t[mask]
    p = lv.predict(te["prompt"].astype(str).tolist(), te["response"].astype(str).tolist())
    report = {"pooled": LearnedVerifier.reliability(p, te["quality"])}
    for m in sorted(te["model"].unique()):
        s = (te["model"] == m).to_numpy()
        r = LearnedVerifier.reliability(p[s], te["quality"][s])
        report[m] = {"auroc": r["auroc"], "ece": r["ece"]}
    print(json.dumps(report, indent=1))
    final = LearnedVerifier.fit_table(t)
    final.meta["holdout"] = {
        "auroc": report["pooled"]["auroc"],
        "ece": report["pooled"]["ece"],
        "seed": a.seed,
    }
    final.save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
