"""Train the shipped default router: src/llmroute/assets/default-router.safetensors.

Usage (from the project root, with ../shared/data present)::

    .venv/bin/python scripts/train_default_router.py [--data ../shared/data] [--out PATH]

Data provenance (read at build time only; none of it is copied into the repository):

- ``routerbench_subset``: RouterBench (Hu et al. 2024, arXiv:2403.12031, HF
  ``withmartian/routerbench``, ``routerbench_0shot.pkl``), the ARC-Challenge, MBPP and
  Winogrande rows as redistributed by ``shuhao02/RouterDC`` @ 0e63989c; 3,178 prompts x 11
  models, per-call cost as reported by RouterBench; no license declared (research use).
- ``routellm``: ``lm-sys/RouteLLM`` @ 0b64fdaf (Apache-2.0 code; the per-prompt GPT-4-1106 vs
  Mixtral-8x7B outcomes on MMLU, GSM8K and MT-Bench that RouteLLM publishes), 15,521 prompts,
  cost estimated as cl100k tokens x list price.
  Its ``input_tokens`` include few-shot prefixes (GSM8K: ~1,100 tokens) that are not in the
  prompt text; they are dropped here so that the shipped cost model counts tokens from the text
  a gateway actually sends (calibrated on RouterBench, whose counts are the prompt's own).

Everyday prompts: ``src/llmroute/assets/everyday/*.jsonl`` (the project's own words, shipped in the
package) teach the router's regime head which prompts are everyday-easy (any model will do),
everyday-hard (worth the strongest model) or like the benchmark prompts above (see
``llmroute.estimators.regime``). The dev set that measures this (``datasets/everyday/dev.jsonl``)
is never read here.

What the artifact contains: weights only. The encoder is the project's static MiniLM (shipped
separately; referenced by spec). The quality estimator is parametric (the best of linear, mlp
and mf on a held-out fifth of the prompts, then refitted on all): a feature scaler and layer
weights. The cost model holds per-model token regressions and prices. Metadata holds per-model
mean quality and task-family counts (aggregates). No prompt, response or per-prompt outcome
is stored; the script checks that no array has a row per training prompt.

Model names: RouterBench's ``mistralai/mixtral-8x7b-chat`` and RouteLLM's
``mistralai/Mixtral-8x7B-Instruct-v0.1`` are the same model (Mixtral-8x7B-Instruct, $0.60/M
tokens in both price tables) and are merged under the latter name; ``gpt-4-1106-preview`` is
shared by both sets. Result: 11 models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
RENAME = {"mistralai/mixtral-8x7b-chat": MIXTRAL}
CANDIDATES = ("mlp", "linear", "mf")
NOTICE = """default-router.safetensors — llmroute's shipped default router (weights only)

Built by scripts/train_default_router.py from two third-party routing tables that are NOT part of
this repository (read from ../shared/data at build time):

- RouterBench (Hu et al. 2024, arXiv:2403.12031; Hugging Face withmartian/routerbench), the
  ARC-Challenge / MBPP / Winogrande rows as redistributed by github.com/shuhao02/RouterDC @ 0e63989c.
  No license declared by the authors (research use); underlying benchmarks ARC (CC-BY-SA-4.0),
  MBPP (CC-BY-4.0), Winogrande (CC-BY).
- RouteLLM (github.com/lm-sys/RouteLLM @ 0b64fdaf, Apache-2.0): GPT-4-1106 vs Mixtral-8x7B outcomes on
  MMLU, GSM8K and MT-Bench.

It also learned from the project's own everyday prompts (src/llmroute/assets/everyday, written for
llmroute, Apache-2.0 like the rest of the repository): its regime head tells everyday-easy,
everyday-hard and benchmark-like prompts apart.

The file holds only learned parameters (a feature scaler, estimator weights, the regime head's
weights and per-model abilities, per-model token/cost regressions and prices) and aggregate metadata (per-model mean quality, task-family counts). It
contains no prompts, responses or per-prompt outcomes. Encoder: the project's static MiniLM
(see assets/static-minilm/NOTICE), referenced by name.

{summary}
"""


def _load(data: Path) -> tuple[pd.DataFrame, dict]:
    from llmroute.data import load_table

    frames, prices = [], {}
    for name in ("routerbench_subset", "routellm"):
        table = load_table(data / name)
        df = table.df.copy()
        df["model"] = df["model"].replace(RENAME)
        df["prompt_id"] = name + ":" + df["prompt_id"].astype(str)
        if name == "routellm":
            df["input_tokens"] = np.nan  # counts include few-shot prefixes not in the text
        keep = [
            "prompt_id",
            "prompt",
            "task",
            "model",
            "quality",
            "cost_usd",
            "input_tokens",
            "output_tokens",
        ]
        frames.append(df[keep])
        for m, p in (table.prices or {}).items():
            prices[RENAME.get(m, m)] = p
    return pd.concat(frames, ignore_index=True), prices


def _check_weights_only(router, n_prompts: int) -> None:
    est_arrays, _ = router.estimator.get_state()
    cost_arrays, _ = router.cost.get_state()
    head_arrays = router.regime_head.get_state()[0] if router.regime_head is not None else {}
    for k, v in {**est_arrays, **cost_arrays, **head_arrays}.items():
        if np.ndim(v) and np.shape(v)[0] >= min(n_prompts, 1000):
            raise SystemExit(
                f"array {k} has shape {np.shape(v)}: looks like per-prompt data, refusing to ship"
            )


def main(argv: list[str] | None = None) -> int:
    """Train, validate and write the default router; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "src" / "llmroute" / "assets" / "default-router.safetensors"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.data / "routellm").is_dir() or not (args.data / "routerbench_subset").is_dir():
        print(f"need {args.data}/routellm and {args.data}/routerbench_subset", file=sys.stderr)
        return 2

    from llmroute.data import RoutingTable
    from llmroute.embed import load_encoder
    from llmroute.estimators.linear import masked_bce
    from llmroute.router import Router

    df, prices = _load(args.data)
    table = RoutingTable(df, source="routerbench_subset+routellm", prices=prices)
    print(f"table: {table.n_prompts} prompts x {table.n_models} models")
    encoder = load_encoder("static-minilm")

    # choose the estimator on a held-out fifth of the prompts (stratified by nothing: random)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(table.n_prompts)
    n_val = table.n_prompts // 5
    val_ids = [table.prompt_ids[i] for i in np.sort(perm[:n_val])]
    tr_ids = [table.prompt_ids[i] for i in np.sort(perm[n_val:])]
    train, val = table.subset(tr_ids), table.subset(val_ids)
    scores = {}
    for name in CANDIDATES:
        t0 = time.perf_counter()
        r = Router.fit(train, estimator=name, encoder=encoder, seed=args.seed)
        q, _ = r.estimate(val.prompts)
        Qv = val.quality_matrix()
        idx = [r.models.index(m) for m in val.models]
        scores[name] = masked_bce(q[:, idx], Qv)
        print(f"  {name}: held-out BCE {scores[name]:.4f} ({time.perf_counter() - t0:.1f} s)")
    best = min(scores, key=scores.get)
    print(f"chosen estimator: {best}")

    router = Router.fit(table, estimator=best, encoder=encoder, seed=args.seed)
    t0 = time.perf_counter()
    router.fit_regime_head(table, seed=args.seed)
    print(f"regime head: C={router.regime_head.C_} ({time.perf_counter() - t0:.1f} s)")
    _check_weights_only(router, table.n_prompts)
    router.info["selection"] = {"held_out_bce": scores, "chosen": best}
    router.info["data"] = ["routerbench_subset (RouterBench via RouterDC)", "routellm (lm-sys/RouteLLM)"]
    router.info["model_renames"] = RENAME
    out = router.save(args.out)
    size = out.stat().st_size
    if size > 5 * 1024 * 1024:
        raise SystemExit(f"{out} is {size} bytes (> 5 MB)")
    # round trip check
    back = Router.load(out)
    probe = [
        "What is 17 * 23?",
        "Write a haiku about autumn.",
        "def add(a, b):\n    # finish this",
        "hello, how are you?",
        "Prove that there are infinitely many primes.",
    ]
    assert [d.to_dict() for d in back.route_batch(probe)] == [d.to_dict() for d in router.route_batch(probe)]
    summary = {
        "file_bytes": size,
        "models": router.models,
        "estimator": best,
        "held_out_bce": {k: round(v, 4) for k, v in scores.items()},
        "default_policy": {
            k: v for k, v in router.policy.items() if v is not None and k != "score_quantiles"
        },
        "n_prompts": table.n_prompts,
        "regime_head": {
            k: v
            for k, v in router.info["regime_head"].items()
            if k in ("everyday_prompts", "known_prompts", "C")
        },
        "abilities": {
            m: round(float(a), 4) for m, a in zip(router.models, router.regime_head.ability_, strict=True)
        },
    }
    notice = out.with_name("default-router.NOTICE")
    notice.write_text(NOTICE.format(summary="Build summary:\n" + json.dumps(summary, indent=2)))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out} ({size / 1024:.0f} KiB) and {notice.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
