"""Encoder benchmark: load time, single-prompt latency (p50/p99, one core) and batch throughput.

Prompts: the routerbench_subset prompts from ../shared/data when present (read, never copied),
else generated questions.  Single-prompt latency is measured pinned to one CPU core (where the OS
allows it), one prompt at a time, warm; batch throughput encodes all prompts in one call with every
core available.  "cold load" runs a fresh interpreter that imports llmroute and builds the encoder.

    .venv/bin/python benchmarks/encoders.py [--n 2000] [--encoders static-minilm,tfidf,onnx-minilm]

Writes benchmarks/results/encoders.json and the "encoders" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = ROOT / ".." / "shared" / "data" / "routerbench_subset" / "data.parquet"


def _short_prompts(n: int) -> list[str]:
    """Generated chat-style questions of 6-30 words (the 'short prompts' of the targets)."""
    rng = np.random.default_rng(0)
    words = [
        "what",
        "how",
        "why",
        "when",
        "explain",
        "write",
        "code",
        "python",
        "rust",
        "function",
        "solve",
        "equation",
        "integral",
        "capital",
        "city",
        "history",
        "model",
        "data",
        "the",
        "a",
        "of",
        "in",
        "for",
        "to",
        "and",
        "with",
        "is",
        "are",
        "please",
        "summarise",
        "translate",
        "compare",
        "list",
    ]
    return [" ".join(rng.choice(words, size=int(rng.integers(6, 31)))) + "?" for _ in range(n)]


def _shared_prompts(n: int) -> list[str] | None:
    """routerbench_subset prompts from ../shared/data (long: few-shot benchmark prompts), or None."""
    if not DATA.exists():
        return None
    import pandas as pd

    prompts = pd.read_parquet(DATA, columns=["prompt_id", "prompt"]).drop_duplicates("prompt_id")["prompt"]
    texts = [str(p) for p in prompts.tolist()]
    rng = np.random.default_rng(0)
    pool = texts * -(-n // len(texts))
    return [pool[i] for i in rng.permutation(len(pool))[:n]]


def _pin_one_core() -> bool:
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return True
    except (AttributeError, OSError):
        return False


def _unpin(cores: set[int] | None) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


def _cold_load(spec: str) -> tuple[float, float] | None:
    """(wall s, process CPU s) of import + build + first encode in a fresh interpreter."""
    code = (
        "import time; t=time.perf_counter(); c=time.process_time(); from llmroute.embed import load_encoder; "
        f"e=load_encoder({spec!r}); e.encode(['warm up']); "
        "print(time.perf_counter()-t, time.process_time()-c)"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
        )
    except (subprocess.SubprocessError, OSError):
        return None
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def bench(name: str, prompts: list[str], fit_texts: list[str], single_n: int, cold: bool = True) -> dict:
    """Measure one encoder."""
    from llmroute.embed import load_encoder

    t0 = time.perf_counter()
    enc = load_encoder(name)
    load_s = time.perf_counter() - t0
    fit_s = None
    if name == "tfidf":
        t0 = time.perf_counter()
        enc.fit(fit_texts)  # type: ignore[attr-defined]
        fit_s = time.perf_counter() - t0
    enc.encode(prompts[:50])

    cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    pinned = _pin_one_core()
    try:
        for p in prompts[:100]:  # warm-up
            enc.encode([p])
        lat = np.empty(single_n)
        cpu = np.empty(single_n)  # CPU time of this thread: what the call costs without contention
        for i in range(single_n):
            p = [prompts[i % len(prompts)]]
            c0 = time.thread_time()
            t0 = time.perf_counter()
            enc.encode(p)
            lat[i] = time.perf_counter() - t0
            cpu[i] = time.thread_time() - c0
        n1 = min(len(prompts), 2000)
        t0 = time.perf_counter()
        enc.encode(prompts[:n1])
        batch_1core = n1 / (time.perf_counter() - t0)
    finally:
        _unpin(cores)
    c0 = time.process_time()
    t0 = time.perf_counter()
    enc.encode(prompts)
    batch = len(prompts) / (time.perf_counter() - t0)
    batch_cpu = len(prompts) / max(time.process_time() - c0, 1e-9)
    cold_load = _cold_load(name) if cold and name != "tfidf" else None
    return {
        "encoder": name,
        "dim": enc.dim,
        "load_s": load_s,
        "cold_load_s": cold_load[0] if cold_load else None,
        "cold_load_cpu_s": cold_load[1] if cold_load else None,
        "fit_s": fit_s,
        "single_ms_p50": float(np.percentile(lat, 50) * 1e3),
        "single_ms_p99": float(np.percentile(lat, 99) * 1e3),
        "single_cpu_ms_p50": float(np.percentile(cpu, 50) * 1e3),
        "single_cpu_ms_p99": float(np.percentile(cpu, 99) * 1e3),
        "single_pinned_one_core": pinned,
        "batch_per_s": batch,
        "batch_per_cpu_s": batch_cpu,
        "batch_per_s_one_core": batch_1core,
        "n_single": single_n,
        "n_batch": len(prompts),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="encoder latency/throughput benchmark")
    parser.add_argument("--n", type=int, default=5_000, help="prompts in the batch run")
    parser.add_argument("--single", type=int, default=2_000, help="single-prompt calls timed")
    parser.add_argument("--encoders", default="static-minilm,tfidf,onnx-minilm")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encoders.json")
    parser.add_argument("--no-md", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--md-only", action="store_true", help="rewrite BENCHMARKS.md from --out, no runs")
    args = parser.parse_args(argv)
    if args.md_only:
        write_markdown(json.loads(args.out.read_text()))
        return

    sets = {"short": _short_prompts(args.n)}
    shared = _shared_prompts(args.n)
    if shared is not None:
        sets["routerbench"] = shared
    results = []
    for set_name, prompts in sets.items():
        for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
            heavy = name == "onnx-minilm"
            n_single = min(args.single, 300) if heavy else args.single
            prompts_e = prompts[:1000] if heavy else prompts
            try:
                r = bench(name, prompts_e, prompts[:3000], n_single, cold=set_name == "short")
            except ImportError as exc:
                print(f"{name}: skipped ({exc})")
                continue
            r["prompts"] = set_name
            r["mean_chars"] = float(np.mean([len(p) for p in prompts_e]))
            results.append(r)
            cold = r["cold_load_s"] if r["cold_load_s"] is not None else float("nan")
            print(
                f"{set_name:11s} {name:14s} dim={r['dim']:4d} load={r['load_s'] * 1e3:6.1f} ms cold={cold:.2f} s "
                f"p50={r['single_ms_p50']:.3f} ms p99={r['single_ms_p99']:.3f} ms "
                f"(cpu p50={r['single_cpu_ms_p50']:.3f} p99={r['single_cpu_ms_p99']:.3f}) "
                f"batch={r['batch_per_s']:,.0f}/s (1 core {r['batch_per_s_one_core']:,.0f}/s, "
                f"per cpu-s {r['batch_per_cpu_s']:,.0f})",
                flush=True,
            )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    payload = {
        "prompt_sets": {
            "short": "generated 6-30 word questions",
            "routerbench": "routerbench_subset prompts (../shared/data), long few-shot prompts",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_end": load,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not args.no_md:
        write_markdown(payload)


def write_markdown(payload: dict) -> None:
    """Write the "encoders" section of BENCHMARKS.md from a results payload."""
    from _md import md_table, update_section

    cols = [
        ("prompts", lambda r: r["prompts"]),
        ("chars", lambda r: round(r["mean_chars"])),
        ("encoder", lambda r: r["encoder"]),
        ("dim", lambda r: r["dim"]),
        ("load ms", lambda r: r["load_s"] * 1e3),
        ("cold load s (cpu s)", lambda r: _pair(r.get("cold_load_s"), r.get("cold_load_cpu_s"), 2)),
        ("p50 ms (cpu)", lambda r: _pair(r["single_ms_p50"], r["single_cpu_ms_p50"], 3)),
        ("p99 ms (cpu)", lambda r: _pair(r["single_ms_p99"], r["single_cpu_ms_p99"], 3)),
        ("batch/s", lambda r: round(r["batch_per_s"])),
        ("batch/s 1 core", lambda r: round(r["batch_per_s_one_core"])),
        ("batch per cpu-s", lambda r: round(r["batch_per_cpu_s"])),
    ]
    rows = [[f(r) for _, f in cols] for r in payload["results"]]
    table = md_table([c for c, _ in cols], rows, digits=1)
    load = payload["machine"].get("loadavg_at_end")
    note = (
        f"`benchmarks/encoders.py`: {payload['machine']['cpus']} CPUs, shared with other jobs (load average "
        f"{load[0] if load else float('nan'):.1f} at the end), so wall times are pessimistic; the CPU-time "
        "figures in brackets (thread time of the call) are what a call costs on an idle core. Single prompt: "
        "pinned to one core, warm, one prompt per call. Batch: one encode() call over all prompts (5,000; "
        "1,000 for ONNX). Cold load: fresh interpreter, import + build + first encode. TF-IDF is fitted "
        "on 3,000 prompts of the set first. Prompts: 'short' = generated 6-30 word questions, "
        "'routerbench' = routerbench_subset prompts (long few-shot prompts, ../shared/data)."
    )
    update_section("encoders", f"{note}\n\n{table}", title="Encoders")


def _pair(a: float | None, b: float | None, digits: int) -> str:
    if a is None:
        return "-"
    return f"{a:.{digits}f} ({b:.{digits}f})" if b is not None else f"{a:.{digits}f}"


if __name__ == "__main__":
    main()
