"""Online learning inside the gateway: what it costs per outcome and per request (issue 13).

    python benchmarks/online_gateway.py [--outcomes 2000] [--duration 10] [--rounds 2] [--no-write]

1. Per outcome (in process, the shipped default router behind examples/loopback.yaml's
   `llmroute/auto` with `learning: {enabled: true}`, a SQLite trace store and learner state in a
   temporary folder): `--outcomes` requests are decided (engine + learner) and traced, then each
   gets an explicit outcome through `record_outcome` (what `/v1/feedback` runs: stored in the
   trace, then queued for the learner's next batch: trace rows read, deltas appended to the shared
   SQLite state, replay into the posterior), half one at a time and half 32 in flight, each until
   the learner's queue is empty; then the same outcomes stored without the learner
   (`aattach_feedback`). Reported: process CPU (all threads) per feedback, of storing alone, and
   their difference (the learning's cost per outcome); wall time per feedback; the learner's
   rank-1 update alone; the learner's share of the decision (`Learning.decide`) per request.
2. Throughput, learning on vs off: `llmroute serve` (one worker) on examples/loopback.yaml in front
   of the fake server, wrk -t1 at 32 connections, unique prompts, `--rounds` alternating off/on
   runs of `--duration` s; requests per second and gateway CPU per request (from /proc).

Writes benchmarks/results/online_gateway.json and the `online_gateway` section of BENCHMARKS.md
(below the online learning section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import update_section
from gateway import LUA, ensure_wrk, free_port, start, wait_ready, wrk_one_worker

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "online_gateway.json"
LEARNING = {"enabled": True, "learner": "thompson", "max_explore": 0.05}


def _config(tmp: Path, learning: bool) -> Path:
    """examples/loopback.yaml with learning on `llmroute/auto` (or not), written to `tmp`."""
    cfg = yaml.safe_load((ROOT / "examples" / "loopback.yaml").read_text())
    if learning:
        cfg["aliases"]["llmroute/auto"]["learning"] = dict(LEARNING)
    cfg.pop("admin", None)
    path = tmp / ("on.yaml" if learning else "off.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


async def per_outcome(n: int, tmp: Path) -> dict[str, Any]:
    """Decide and trace `n` requests, then learn one explicit outcome of each (see the docstring)."""
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import load_config
    from llmroute.gateway.routing import RequestContext

    os.environ["LLMROUTE_STORE_URL"] = f"sqlite:///{tmp}/inproc.sqlite"
    gw = Gateway(load_config(_config(tmp, True)))
    await gw.startup()
    learning = gw.learning
    assert learning is not None and gw.store is not None
    rng = np.random.default_rng(0)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "prove",
        "code",
        "explain",
        "summarise",
        "python",
        "integral",
        "essay",
        "list",
    ]
    decide_s: list[float] = []
    rids = []
    for i in range(n):
        text = " ".join(rng.choice(words, 8)) + f" ({i})"
        ctx = RequestContext(
            request_id=f"r{i}",
            requested="llmroute/auto",
            messages=[{"role": "user", "content": text}],
            body={},
        )
        d = await gw.engine.decide(ctx)
        t = time.perf_counter()
        learning.decide(ctx, d)
        decide_s.append(time.perf_counter() - t)
        assert d.learning is not None
        gw.store.write(
            {
                "request_id": ctx.request_id,
                "alias": d.alias,
                "model": d.model,
                "status": 200,
                "cost_usd": d.expected_cost[d.model],
                "propensity": d.learning["propensity"],
                "explored": d.learning["explored"],
                "learner": d.learning["features"],
            }
        )
        rids.append(ctx.request_id)
    await gw.store.flush()
    from llmroute.gateway.outcomes import record_outcome

    qn = n // 4
    first, rest, alone1, alone32 = rids[:qn], rids[qn : 2 * qn], rids[2 * qn : 3 * qn], rids[3 * qn :]
    half = qn

    async def one_at_a_time(fn: Any, ids: list[str]) -> tuple[float, list[float]]:
        wall = []
        cpu0 = time.process_time()
        for i, rid in enumerate(ids):
            t = time.perf_counter()
            await fn(rid, i)
            wall.append(time.perf_counter() - t)
        await learning.drain()  # the learning the calls queued is part of their cost
        return time.process_time() - cpu0, wall

    async def in_flight(fn: Any, ids: list[str]) -> float:
        cpu0 = time.process_time()
        for k in range(0, len(ids), 32):  # 32 feedback calls in flight
            await asyncio.gather(*(fn(r, k + i) for i, r in enumerate(ids[k : k + 32])))
        await learning.drain()
        return time.process_time() - cpu0

    async def feedback(rid: str, i: int) -> None:  # what /v1/feedback runs: store, then learn
        assert await record_outcome(gw, rid, float(i % 2), "feedback")

    async def attach_only(rid: str, i: int) -> None:  # the same without the learner
        assert await gw.store.aattach_feedback(rid, {"quality": float(i % 2)})

    cpu, wall = await one_at_a_time(feedback, first)
    cpu_attach, _ = await one_at_a_time(attach_only, first)
    cpu_conc = await in_flight(feedback, rest)
    cpu_conc_attach = await in_flight(attach_only, rest)

    async def learn_only(ids: list[str], k: int) -> float:  # the learner alone, batches of k
        # no batch window: its idle wait would count the other threads' idle polling
        window, learning.batch_window_s = learning.batch_window_s, 0.0
        cpu0 = time.process_time()
        for j in range(0, len(ids), k):
            for rid in ids[j : j + k]:
                learning.submit(rid, 1.0, "feedback")
            await learning.drain()
        learning.batch_window_s = window
        return (time.process_time() - cpu0) / len(ids)

    learn1, learn32 = await learn_only(alone1, 1), await learn_only(alone32, 32)
    learned = learning.stats()["llmroute/auto"]["outcomes"]
    al = learning.aliases["llmroute/auto"]
    # the learner's rank-1 update alone, on the same contexts
    x = np.asarray(learning.stats() and al.learner.context(np.ones(al.embed_dim)))
    upd = []
    for _ in range(2000):
        t = time.perf_counter()
        al.learner.observe(x, 0, 0.1, None)
        upd.append(time.perf_counter() - t)
    explored = learning.stats()["llmroute/auto"]["explored_share"]
    await gw.shutdown()
    us = 1e6
    return {
        "outcomes": n,
        "feedback_cpu_us": round(cpu / half * us, 1),
        "attach_cpu_us": round(cpu_attach / half * us, 1),
        "cpu_us_per_outcome": round(learn1 * us, 1),
        "feedback_cpu_us_32_in_flight": round(cpu_conc / max(1, len(rest)) * us, 1),
        "attach_cpu_us_32_in_flight": round(cpu_conc_attach / max(1, len(rest)) * us, 1),
        "cpu_us_per_outcome_32_in_flight": round(learn32 * us, 1),
        "wall_us_per_feedback_p50": round(statistics.median(wall) * us, 1),
        "update_us_p50": round(statistics.median(upd) * us, 2),
        "decide_us_p50": round(statistics.median(decide_s) * us, 1),
        "decide_us_p99": round(float(np.percentile(decide_s, 99)) * us, 1),
        "explored_share": round(explored, 4),
        "learned": learned,
    }


def throughput(duration: int, rounds: int, tmp: Path) -> list[dict[str, Any]]:
    """Alternating off/on wrk runs against one gateway worker each (see the docstring)."""
    wrk = ensure_wrk()
    fport = free_port()
    env = dict(os.environ, LLMROUTE_BACKEND_URL=f"http://127.0.0.1:{fport}/v1", PYTHONUNBUFFERED="1")
    py = sys.executable
    fake = start([py, "-m", "llmroute.gateway.fake", "--port", str(fport)], env, tmp / "fake.log")
    runs: list[dict[str, Any]] = []
    try:
        wait_ready(f"http://127.0.0.1:{fport}/v1/models", fake)
        lua = tmp / "auto.lua"
        lua.write_text(LUA.replace("MODEL", "llmroute/auto").replace('"STREAM"', '"'))
        for r in range(rounds):
            for learning in (False, True):
                store = tmp / f"traces-{r}-{int(learning)}.sqlite"
                log = tmp / f"gw-{r}-{learning}.log"
                res = wrk_one_worker(_config(tmp, learning), env, store, log, wrk, lua, 32, duration)
                res.update(learning=learning, round=r, load=os.getloadavg()[0])
                print(json.dumps(res), file=sys.stderr)
                runs.append(res)
    finally:
        fake.terminate()
        fake.wait(30)
    return runs


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for on in (False, True):
        rs = [r for r in runs if r["learning"] is on]
        out["on" if on else "off"] = {
            "rps_median": round(statistics.median(r["rps"] for r in rs), 1),
            "cpu_us_per_req_median": round(statistics.median(r["cpu_us_per_req_gateway"] for r in rs), 1),
            "non_2xx": sum(r["non_2xx"] for r in rs),
        }
    out["rps_ratio_on_off"] = round(out["on"]["rps_median"] / max(out["off"]["rps_median"], 1e-9), 3)
    out["cpu_ratio_on_off"] = round(
        out["on"]["cpu_us_per_req_median"] / max(out["off"]["cpu_us_per_req_median"], 1e-9), 3
    )
    return out


def _batch_window() -> float:
    from llmroute.gateway.learning import Learning

    return Learning.batch_window_s


def markdown(res: dict[str, Any]) -> str:
    o, t = res["per_outcome"], res.get("throughput")
    lines = [
        "`benchmarks/online_gateway.py`: the online learner inside the gateway (examples/loopback.yaml's "
        f"`llmroute/auto` with `learning: {json.dumps(LEARNING)}`, the shipped default router). "
        f"Load at start {res['load_start']:.1f} on {res['cpus']} CPUs.",
        "",
        f"Per outcome ({o['outcomes']} explicit outcomes through `record_outcome`, what `/v1/feedback` runs: "
        "the outcome stored in the trace, then queued for the learner, which takes the outcomes of each "
        f"{_batch_window()} s window in one batch: one trace query, one SQLite transaction on the shared "
        "state, one replay into the posterior; process CPU of all threads until the queue is learned): "
        f"back to back, one at a time {o['feedback_cpu_us']} us per feedback (storing it in the trace alone "
        f"{o['attach_cpu_us']} us); 32 in flight {o['feedback_cpu_us_32_in_flight']} us (storing alone "
        f"{o['attach_cpu_us_32_in_flight']} us). The learner alone (queued, then drained): a batch of one "
        f"outcome (a lone feedback) **{o['cpu_us_per_outcome']} us**, batches of 32 "
        f"**{o['cpu_us_per_outcome_32_in_flight']} us** per outcome (bar <= 50 us per outcome); wall p50 per feedback "
        f"{o['wall_us_per_feedback_p50']} us; the posterior's rank-1 update alone p50 {o['update_us_p50']} us. "
        "The learner's part of a decision (`Learning.decide`: embedding from "
        f"the router's cache, choice, features): p50 {o['decide_us_p50']} us, p99 {o['decide_us_p99']} us; "
        f"explored share {o['explored_share']} (max_explore {LEARNING['max_explore']}).",
    ]
    if t:
        s = t["summary"]
        lines += [
            "",
            f"Throughput (one worker, wrk -t1 -c32, unique prompts, {t['rounds']} alternating rounds of "
            f"{t['duration']} s, medians): learning off {s['off']['rps_median']} req/s, "
            f"{s['off']['cpu_us_per_req_median']} us gateway CPU per request; on {s['on']['rps_median']} req/s, "
            f"{s['on']['cpu_us_per_req_median']} us; on/off throughput {s['rps_ratio_on_off']} (bar >= 0.9), "
            f"CPU per request x{s['cpu_ratio_on_off']}; non-2xx {s['off']['non_2xx'] + s['on']['non_2xx']}.",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outcomes", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (0: skip throughput)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmroute-online-gw-"))
    res: dict[str, Any] = {"load_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    res["per_outcome"] = asyncio.run(per_outcome(args.outcomes, tmp))
    print(json.dumps(res["per_outcome"]), file=sys.stderr)
    if args.duration > 0:
        runs = throughput(args.duration, args.rounds, tmp)
        res["throughput"] = {
            "duration": args.duration,
            "rounds": args.rounds,
            "runs": runs,
            "summary": summarise(runs),
        }
    res["load_end"] = os.getloadavg()[0]
    print(markdown(res))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=1) + "\n")
        update_section("online_gateway", markdown(res), title="Online learning in the gateway")


if __name__ == "__main__":
    main()
