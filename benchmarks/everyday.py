"""Everyday traffic through the config `make run` serves: does each prompt go where a careful person would send it?

Starts `llmroute serve --config examples/llmroute.yaml` (the embedded defaults, no API key) on a
free loopback port, asks `POST /v1/route` for every prompt of the project's everyday dev set
(`datasets/everyday/dev.jsonl`: greetings, simple facts, rewrites, formatting and short creative
requests labelled `easy`; proofs, multi-step maths, non-trivial code, systems design and long
analysis labelled `hard`; a few `medium`, reported only) and counts where each tier went:

- the candidates of the alias (default `llmroute/auto`) are ordered by list price (input + output
  USD per 1M tokens); the *cheaper half* is the floor(m/2) cheapest, the *dearer half* the
  floor(m/2) dearest (with an odd m the middle model belongs to neither);
- targets (issue 10): easy -> cheaper half >= 85%, hard -> dearer half >= 75%, 0 refused (any
  answer other than 200 counts as refused);
- the decisions go through everything the gateway does before a model is called (signals, rules,
  guards, the router), exactly as a client sees them.

The same counts for `datasets/everyday/check.jsonl`, a second set by a fourth writer asked for
unusual wordings (terse, non-native, pasted emails, API-style): a stand-in for held-back sets in
other words. Neither set is ever used for training (the router's regime head learns from the
separate corpus in `src/llmroute/assets/everyday/`). Writes `benchmarks/results/everyday.json` and
the "Everyday routing" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/everyday.py [--config examples/llmroute.yaml] [--alias llmroute/auto]
       [--data datasets/everyday/dev.jsonl datasets/everyday/check.jsonl] [--no-md]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _md import md_table, update_section  # noqa: E402
from llmroute.data.everyday import load_everyday  # noqa: E402
from llmroute.gateway.config import load_config  # noqa: E402

TARGETS = {"easy_to_cheaper_half": 0.85, "hard_to_dearer_half": 0.75, "refused": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(config: Path) -> Iterator[str]:
    """`llmroute serve --config CONFIG` on a free loopback port; yields its base URL."""
    import httpx

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LLMROUTE_STORE_URL": f"sqlite:///{tmp}/traces.sqlite"}
        for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # the keyless first run of `make run`
            env.pop(var, None)
        exe = Path(sys.executable).with_name("llmroute")
        cmd = [str(exe), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            end = time.monotonic() + 120
            while time.monotonic() < end:
                if proc.poll() is not None:
                    raise RuntimeError(f"llmroute serve exited: {proc.stderr.read() if proc.stderr else ''}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError("llmroute serve did not answer /healthz within 120 s")
            yield url
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()


def halves(config: Path, alias: str) -> tuple[list[str], list[str], list[str]]:
    """(candidates by price, cheaper half, dearer half) of `alias` in `config`."""
    cfg = load_config(config)
    a = cfg.aliases[alias]
    names = a.candidates or [m.name for m in cfg.models]
    price = {n: cfg.model(n).input_per_mtok + cfg.model(n).output_per_mtok for n in names}  # type: ignore[union-attr]
    order = sorted(names, key=lambda n: (price[n], n))
    k = len(order) // 2
    return order, order[:k], order[len(order) - k :]


def run(url: str, config: Path, alias: str, data: Path) -> dict[str, Any]:
    """Route every prompt of `data` through the gateway at `url` and count where each tier went."""
    import httpx

    items = load_everyday(data)
    order, cheap, dear = halves(config, alias)
    by_tier: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_cat: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    refused: list[dict[str, Any]] = []
    misrouted: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for x in items:
            r = client.post("/v1/route", json={"model": alias, "messages": x.messages})
            if r.status_code != 200:
                refused.append({"id": x.id, "tier": x.tier, "status": r.status_code, "error": r.text[:200]})
                by_tier[x.tier]["(refused)"] += 1
                continue
            model = r.json()["model"]
            by_tier[x.tier][model] += 1
            by_cat[f"{x.tier}/{x.category}"][model] += 1
            wrong = (x.tier == "easy" and model not in cheap) or (x.tier == "hard" and model not in dear)
            if wrong:
                misrouted.append({"id": x.id, "tier": x.tier, "category": x.category, "model": model})
    elapsed = time.perf_counter() - t0

    def share(c: collections.Counter[str], group: list[str]) -> float:
        n = sum(c.values())
        return sum(c[m] for m in group) / n if n else float("nan")

    tiers = {
        t: {
            "n": sum(c.values()),
            "cheaper_half": share(c, cheap),
            "dearer_half": share(c, dear),
            "models": dict(sorted(c.items())),
        }
        for t, c in sorted(by_tier.items())
    }
    result = {
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "alias": alias,
        "data": str(data.relative_to(ROOT) if data.is_relative_to(ROOT) else data),
        "n_prompts": len(items),
        "candidates_by_price": order,
        "cheaper_half": cheap,
        "dearer_half": dear,
        "tiers": tiers,
        "categories": {k: dict(sorted(v.items())) for k, v in sorted(by_cat.items())},
        "easy_to_cheaper_half": tiers.get("easy", {}).get("cheaper_half"),
        "hard_to_dearer_half": tiers.get("hard", {}).get("dearer_half"),
        "refused": len(refused),
        "refusals": refused,
        "misrouted": misrouted,
        "targets": TARGETS,
        "seconds": round(elapsed, 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
    }
    result["met"] = bool(
        (result["easy_to_cheaper_half"] or 0) >= TARGETS["easy_to_cheaper_half"]
        and (result["hard_to_dearer_half"] or 0) >= TARGETS["hard_to_dearer_half"]
        and result["refused"] == TARGETS["refused"]
    )
    return result


def markdown(runs: list[dict[str, Any]]) -> str:
    """The BENCHMARKS.md section: one block per data set."""
    return "\n".join(_markdown_one(res) for res in runs)


def _markdown_one(res: dict[str, Any]) -> str:
    cheap, dear = ", ".join(res["cheaper_half"]), ", ".join(res["dearer_half"])
    rows = []
    for t in ("easy", "medium", "hard"):
        if t not in res["tiers"]:
            continue
        v = res["tiers"][t]
        models = ", ".join(f"{m} {n}" for m, n in sorted(v["models"].items(), key=lambda kv: -kv[1]))
        rows.append([t, v["n"], f"{v['cheaper_half']:.1%}", f"{v['dearer_half']:.1%}", models])
    table = md_table(["tier", "prompts", "to cheaper half", "to dearer half", "models"], rows)
    cats = md_table(
        ["tier/category", "models"],
        [
            [k, ", ".join(f"{m} {n}" for m, n in sorted(v.items(), key=lambda kv: -kv[1]))]
            for k, v in res["categories"].items()
        ],
    )
    verdict = "met" if res["met"] else "NOT met"
    return f"""`benchmarks/everyday.py` ({res["date"]}): every prompt of `{res["data"]}` ({res["n_prompts"]} prompts in the
project's own words, never used for training) sent to `POST /v1/route` of `llmroute serve --config {res["config"]}`
(what `make run` serves, no API key), alias `{res["alias"]}`. Candidates by list price: {", ".join(res["candidates_by_price"])};
cheaper half = {cheap}; dearer half = {dear}.

{table}

Targets: easy -> cheaper half >= {TARGETS["easy_to_cheaper_half"]:.0%}, hard -> dearer half >= {TARGETS["hard_to_dearer_half"]:.0%},
0 refused. Result: easy {res["easy_to_cheaper_half"]:.1%}, hard {res["hard_to_dearer_half"]:.1%}, refused {res["refused"]}: **{verdict}**.

<details><summary>By category</summary>

{cats}
</details>
"""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "llmroute.yaml")
    ap.add_argument("--alias", default="llmroute/auto")
    ap.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[
            ROOT / "datasets" / "everyday" / "dev.jsonl",
            ROOT / "datasets" / "everyday" / "check.jsonl",
        ],
        help="everyday JSONL files (default: the dev set, then the independent check set)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "everyday.json")
    ap.add_argument("--no-md", action="store_true", help="print only; write no file")
    args = ap.parse_args(argv)
    config = args.config.resolve()
    with serve(config) as url:
        runs = [run(url, config, args.alias, d.resolve()) for d in args.data if d.is_file()]
    if not runs:
        print(f"none of {[str(d) for d in args.data]} exists", file=sys.stderr)
        return 2
    keys = ("data", "easy_to_cheaper_half", "hard_to_dearer_half", "refused", "met")
    print(json.dumps([{k: res[k] for k in keys} for res in runs], indent=2))
    if not args.no_md:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        update_section(
            "everyday", markdown(runs), title="Everyday routing (what `make run` does with ordinary prompts)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
