"""Online learning inside the gateway: what it costs per outcome and per request (issue 13).

    python benchmarks/online_gateway.py [--outcomes 7740] [--duration 10] [--rounds 4] [--paired-rounds 60]
        [--no-write | --md-only]

1. Per outcome (in process, the shipped default router behind examples/loopback.yaml's
   `llmroute/auto` with `learning: {enabled: true}`, a SQLite trace store and learner state in a
   temporary folder): `--outcomes` requests are decided (engine + learner) and traced, then each
   gets an explicit outcome through `record_outcome` (what `/v1/feedback` runs: stored in the
   trace with the learner's fields read in the same hop, then learned by this worker at once
   (local-first: its update made at the learner's next read, e.g. the next decision) and
   published to the shared state lazily: `_PUBLISH_AT` pending outcomes, or the periodic sync,
   write them in one SQLite transaction), in four patterns: one at a time back to back (each
   call awaited), 32 in flight, isolated (each outcome's update made before the next is sent,
   the block's outcomes published together at its end, as one sync would), and isolated,
   published alone (each outcome learned and published before the next: a sync interval with
   one outcome); each against the same calls storing the outcome alone (`aattach_feedback`), in
   interleaved blocks, rounds of all four. Every block's CPU runs until its outcomes are
   learned and published (`Learning.drain`: the publication's transaction is counted).
   Reported: process CPU (all threads) per feedback, of storing alone, and the median
   difference over the rounds (the learning's cost per outcome); the learner's rank-1 update
   alone; the learner's share of the
   decision per request (`Learning.decide_batch`, the routing engine's micro-batch listener:
   256 requests one at a time, the rest 32 in flight, micro-batches of 32).
2. Throughput, learning on vs off: `llmroute serve` (one worker) on examples/loopback.yaml in front
   of the fake server, wrk -t1 at 32 connections, unique prompts, `--rounds` alternating off/on
   runs of `--duration` s; requests per second and gateway CPU per request (from /proc).
3. CPU per request, learning off vs on, in one process (`--paired-rounds` rounds of
   `--paired-burst` requests): two `Gateway`s on examples/loopback.yaml (learning off / on, each its
   own trace store) behind one fake upstream, 32 clients calling the ASGI app directly, bursts
   alternating between them; the paired per-round differences give the learning's CPU per request
   with a standard error (single wrk runs of the same code swing by tens of percent on this box).

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
    from llmroute.gateway.serve import freeze_startup_objects

    os.environ["LLMROUTE_STORE_URL"] = f"sqlite:///{tmp}/inproc.sqlite"
    gw = Gateway(load_config(_config(tmp, True)))
    await gw.startup()
    # as `llmroute serve` does once the app is built: the startup objects out of the cyclic
    # collector's reach and young collections rare (without it each full collection walks the
    # router's ~100k objects, a cost any allocation may trigger: it was counted to whichever
    # calls allocate most)
    freeze_startup_objects()
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
    # the learner's part of the decisions: the routing engine's batch listener (`decide_batch`),
    # timed per micro-batch, per request; the first 256 requests one at a time (batches of one)
    decide_s: dict[int, list[float]] = {1: [], 32: []}
    listeners = gw.engine.batch_listeners
    real = listeners[listeners.index(learning.decide_batch)]

    def timed(pairs: list[Any]) -> None:
        t = time.perf_counter()
        real(pairs)
        dt = (time.perf_counter() - t) / len(pairs)
        decide_s[1 if len(pairs) == 1 else 32].extend([dt] * len(pairs))

    listeners[listeners.index(real)] = timed
    ctxs = []
    for i in range(n):
        text = " ".join(rng.choice(words, 8)) + f" ({i})"
        ctxs.append(
            RequestContext(
                request_id=f"r{i}",
                requested="llmroute/auto",
                messages=[{"role": "user", "content": text}],
                body={},
            )
        )
    ds = [await gw.engine.decide(c) for c in ctxs[:256]]
    for k in range(256, n, 32):  # the rest in micro-batches of 32 (32 requests in flight)
        ds += await asyncio.gather(*(gw.engine.decide(c) for c in ctxs[k : k + 32]))
    listeners[listeners.index(timed)] = real
    rids = []
    for ctx, d in zip(ctxs, ds, strict=True):
        learning.decide(ctx, d)  # what the request path calls: decided with its batch already
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

    async def feedback(rid: str, i: int) -> None:  # what /v1/feedback runs: store, then learn
        assert await record_outcome(gw, rid, float(i % 2), "feedback")

    async def attach_only(rid: str, i: int) -> None:  # the same without the learner
        assert await gw.store.aattach_feedback(rid, {"quality": float(i % 2)})

    async def sequential(fn: Any, ids: list[str]) -> float:  # back to back, each call awaited
        cpu0 = time.process_time()
        for i, rid in enumerate(ids):
            await fn(rid, i)
        await learning.drain()  # the learning the calls queued is part of their cost
        return time.process_time() - cpu0

    async def in_flight(fn: Any, ids: list[str]) -> float:
        cpu0 = time.process_time()
        for k in range(0, len(ids), 32):  # 32 feedback calls in flight
            await asyncio.gather(*(fn(r, k + i) for i, r in enumerate(ids[k : k + 32])))
        await learning.drain()
        return time.process_time() - cpu0

    al = learning.aliases["llmroute/auto"]

    catch_up_s: list[float] = []  # the loop thread's CPU of each isolated outcome's update

    async def isolated(fn: Any, ids: list[str]) -> float:  # each outcome's update made before the next
        cpu0 = time.process_time()
        for i, rid in enumerate(ids):
            await fn(rid, i)
            t = time.thread_time()
            al.catch_up()  # what the next decision's read of the learner does
            if fn is feedback:
                catch_up_s.append(time.thread_time() - t)
        await learning.drain()  # published together, as the periodic sync does
        return time.process_time() - cpu0

    async def alone(fn: Any, ids: list[str]) -> float:  # each outcome learned and published alone
        # no batch window (Redis's batches): its idle wait would count the other threads' idle polling
        window, learning.batch_window_s = learning.batch_window_s, 0.0
        cpu0 = time.process_time()
        for i, rid in enumerate(ids):
            await fn(rid, i)
            await learning.drain()
        learning.batch_window_s = window
        return time.process_time() - cpu0

    modes = {
        "sequential": (sequential, 150),
        "in_flight": (in_flight, 160),
        "isolated": (isolated, 60),
        "alone": (alone, 60),
    }
    per_round = (sum(b for _, b in modes.values())) * 2
    rounds = max(1, n // per_round)
    it = iter(rids)
    cpu: dict[str, dict[str, list[float]]] = {m: {"feedback": [], "attach": []} for m in modes}
    for _ in range(rounds):  # interleaved A/B blocks: the box's load hits both alike
        for mode, (run, block) in modes.items():
            for name, fn in (("feedback", feedback), ("attach", attach_only)):
                ids = [next(it) for _ in range(block)]
                cpu[mode][name].append(await run(fn, ids) / block)
    diff = {
        m: statistics.median(f - a for f, a in zip(v["feedback"], v["attach"], strict=True))
        for m, v in cpu.items()
    }
    learned = learning.stats()["llmroute/auto"]["outcomes"]
    # the learner's rank-1 update alone, on the same contexts
    x = np.asarray(al.learner.context(np.ones(al.embed_dim)))
    upd = []
    for _ in range(2000):
        t = time.perf_counter()
        al.learner.observe(x, 0, 0.1, None)
        upd.append(time.perf_counter() - t)
    explored = learning.stats()["llmroute/auto"]["explored_share"]
    await gw.shutdown()
    us = 1e6
    med = {m: {k: round(statistics.median(v) * us, 1) for k, v in c.items()} for m, c in cpu.items()}
    return {
        "outcomes": rounds * per_round,
        "rounds": rounds,
        "load": round(os.getloadavg()[0], 2),
        # process CPU (all threads) per feedback, medians over the rounds, and the learning's part
        "feedback_cpu_us": med["sequential"]["feedback"],
        "attach_cpu_us": med["sequential"]["attach"],
        "cpu_us_per_outcome": round(diff["sequential"] * us, 1),
        "feedback_cpu_us_32_in_flight": med["in_flight"]["feedback"],
        "attach_cpu_us_32_in_flight": med["in_flight"]["attach"],
        "cpu_us_per_outcome_32_in_flight": round(diff["in_flight"] * us, 1),
        "feedback_cpu_us_isolated": med["isolated"]["feedback"],
        "attach_cpu_us_isolated": med["isolated"]["attach"],
        "cpu_us_per_outcome_isolated": round(diff["isolated"] * us, 1),
        "feedback_cpu_us_alone": med["alone"]["feedback"],
        "attach_cpu_us_alone": med["alone"]["attach"],
        "cpu_us_per_outcome_alone": round(diff["alone"] * us, 1),
        "publish_at": _publish_at(),
        "isolated_update_us_p50": round(statistics.median(catch_up_s) * us, 1),
        "update_us_p50": round(statistics.median(upd) * us, 2),
        "decide_us_p50": round(statistics.median(decide_s[32]) * us, 1),
        "decide_us_p99": round(float(np.percentile(decide_s[32], 99)) * us, 1),
        "decide_one_us_p50": round(statistics.median(decide_s[1]) * us, 1),
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


async def paired_cpu(rounds: int, burst: int, tmp: Path) -> dict[str, Any]:
    """CPU per request with learning off and on, in one process (see the docstring, item 3)."""
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import load_config
    from llmroute.gateway.serve import freeze_startup_objects

    fport = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    fake = start(
        [sys.executable, "-m", "llmroute.gateway.fake", "--port", str(fport)], env, tmp / "fake-p.log"
    )
    gws: dict[str, Any] = {}
    try:
        wait_ready(f"http://127.0.0.1:{fport}/v1/models", fake)
        os.environ["LLMROUTE_BACKEND_URL"] = f"http://127.0.0.1:{fport}/v1"
        for name in ("off", "on"):
            os.environ["LLMROUTE_STORE_URL"] = f"sqlite:///{tmp}/paired-{name}.sqlite"
            gws[name] = Gateway(load_config(_config(tmp, name == "on")))
            await gws[name].startup()
        freeze_startup_objects()  # as `llmroute serve` does once the app is built
        sent = [0]

        async def one(app: Any) -> int:  # one chat completion through the ASGI app; its status
            sent[0] += 1
            body = json.dumps(
                {
                    "model": "llmroute/auto",
                    "messages": [{"role": "user", "content": f"question {sent[0]}: why?"}],
                }
            ).encode()
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/chat/completions",
                "raw_path": b"/v1/chat/completions",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
                "client": ("127.0.0.1", 40000),
                "server": ("127.0.0.1", 8000),
            }
            first, status, complete = [True], [0], asyncio.Event()

            async def receive() -> dict[str, Any]:
                if first[0]:
                    first[0] = False
                    return {"type": "http.request", "body": body, "more_body": False}
                # as uvicorn does: a pending receive is answered with http.disconnect once the
                # response is complete (so the gateway's disconnect watcher ends on its own; a
                # receive that never returns would have it cancelled, a garbage cycle per request)
                await complete.wait()
                return {"type": "http.disconnect"}

            async def send(msg: dict[str, Any]) -> None:
                if msg["type"] == "http.response.start":
                    status[0] = msg["status"]
                elif msg["type"] == "http.response.body" and not msg.get("more_body"):
                    complete.set()

            await app(scope, receive, send)
            return status[0]

        async def run(app: Any, n: int) -> int:  # 32 clients until n requests; the non-200 count
            left, bad = [n], [0]

            async def client() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    bad[0] += await one(app) != 200

            await asyncio.gather(*(client() for _ in range(32)))
            return bad[0]

        for g in gws.values():
            await run(g, 500)  # warm: caches, the learner's factors, the stores' first pages
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        bad = 0
        for r in range(rounds):
            for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                c0 = time.process_time()
                bad += await run(gws[name], burst)
                gws[name].store.flush_sync()  # the trace writer's share is counted
                cpu[name].append((time.process_time() - c0) / burst * 1e6)
    finally:
        for g in gws.values():
            await g.shutdown()
        fake.terminate()
        fake.wait(30)
    diff = [a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    off_med, on_med = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    return {
        "rounds": rounds,
        "burst": burst,
        "cpu_us_off_median": round(off_med, 1),
        "cpu_us_on_median": round(on_med, 1),
        "diff_us_median": round(statistics.median(diff), 1),
        "diff_us_mean": round(statistics.mean(diff), 1),
        "diff_us_se": round(statistics.stdev(diff) / len(diff) ** 0.5, 1) if len(diff) > 1 else None,
        "cpu_ratio_on_off": round(on_med / off_med, 3),
        "throughput_ratio_at_full_cpu": round(off_med / on_med, 3),
        "non_200": bad,
        "load": os.getloadavg()[0],
        "cpu_us_off": [round(v, 1) for v in cpu["off"]],
        "cpu_us_on": [round(v, 1) for v in cpu["on"]],
    }


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


def _publish_at() -> int:
    from llmroute.gateway.learning import _PUBLISH_AT

    return _PUBLISH_AT


def _sync_interval() -> float:
    from llmroute.gateway.config import LearningConfig

    return float(LearningConfig().sync_interval_s)


def _vector_min() -> int:
    from llmroute.gateway.learning import _VECTOR_MIN

    return _VECTOR_MIN


def _learned_how(o: dict[str, Any]) -> str:
    """How the outcomes were learned (results written before local-first: batched)."""
    if "publish_at" not in o:
        return (
            "queued for the learner, which took the outcomes of each 0.02 s window in one batch: one SQLite "
            "transaction on the shared state, one update per model"
        )
    return (
        "learned by this worker at once (local-first: the update made at the learner's next read, one "
        "rank-k update per model for the outcomes given since) and published lazily to the shared state: "
        f"{o['publish_at']} pending outcomes, the periodic sync (every {_sync_interval()} s by default) or "
        "stop write them in one SQLite transaction (up to 64 from the event loop when nobody else writes it, "
        "else on a thread)"
    )


def _isolated(o: dict[str, Any]) -> str:
    """The isolated-outcome figures (results written before local-first: a batch of one)."""
    if "cpu_us_per_outcome_alone" not in o:
        return (
            f"an isolated outcome (learned before the next is sent: a batch of one) "
            f"**{o['cpu_us_per_outcome_isolated']} us** ({o['feedback_cpu_us_isolated']} vs "
            f"{o['attach_cpu_us_isolated']} us)"
        )
    return (
        "an isolated outcome (its update made before the next is sent, the 60 of a block published "
        f"together as one sync would) **{o['cpu_us_per_outcome_isolated']} us** "
        f"({o['feedback_cpu_us_isolated']} vs {o['attach_cpu_us_isolated']} us; the update itself p50 "
        f"{o['isolated_update_us_p50']} us of the loop thread's CPU); published alone (learned and "
        "published before the next is sent: a sync interval with one outcome, one SQLite transaction each) "
        f"**{o['cpu_us_per_outcome_alone']} us** ({o['feedback_cpu_us_alone']} vs {o['attach_cpu_us_alone']} us)"
    )


def _one(o: dict[str, Any]) -> str:
    """The batch-of-one figure (absent from results written before it was measured)."""
    return f", one request at a time p50 {o['decide_one_us_p50']} us" if "decide_one_us_p50" in o else ""


def markdown(res: dict[str, Any]) -> str:
    o, t = res["per_outcome"], res.get("throughput")
    lines = [
        "`benchmarks/online_gateway.py`: the online learner inside the gateway (examples/loopback.yaml's "
        f"`llmroute/auto` with `learning: {json.dumps(LEARNING)}`, the shipped default router). "
        f"Load at start {res['load_start']:.1f} on {res['cpus']} CPUs.",
        "",
        f"Per outcome ({o['outcomes']} explicit outcomes through `record_outcome`, what `/v1/feedback` runs: "
        "the outcome stored in the trace and the learner's fields read in the same hop, then "
        f"{_learned_how(o)}; "
        "process CPU of all threads until the outcomes are learned and published, against the same calls "
        f"storing the outcome alone, {o['rounds']} interleaved rounds, medians, load {o['load']:.1f}). "
        "The learning's CPU per outcome (bar <= 50 us): one feedback at a time, back to back, "
        f"**{o['cpu_us_per_outcome']} us** ({o['feedback_cpu_us']} us per feedback, storing alone "
        f"{o['attach_cpu_us']} us); 32 in flight **{o['cpu_us_per_outcome_32_in_flight']} us** "
        f"({o['feedback_cpu_us_32_in_flight']} vs {o['attach_cpu_us_32_in_flight']} us); {_isolated(o)}. "
        "The posterior's rank-1 update alone p50 "
        f"{o['update_us_p50']} us. The learner's part of a decision (`Learning.decide_batch`, the routing "
        "engine's listener of each micro-batch: embeddings from the router's cache, contexts and posterior "
        "products for the whole batch, pick probabilities and draws vectorised from "
        f"{_vector_min()} requests on, "
        f"features) per request: micro-batches of 32 p50 {o['decide_us_p50']} us, p99 {o['decide_us_p99']} us"
        f"{_one(o)}; "
        f"explored share {o['explored_share']} (max_explore {LEARNING['max_explore']}).",
    ]
    p = res.get("paired_cpu")
    if p:
        lines += [
            "",
            f"CPU per request in one process (two gateways, learning off and on, behind one fake upstream; 32 "
            f"clients calling the ASGI app directly; {p['rounds']} rounds of {p['burst']} requests per gateway, "
            "the order alternating; process CPU of all threads, trace writers included): off "
            f"{p['cpu_us_off_median']} us, on {p['cpu_us_on_median']} us (medians); on - off per round: "
            f"median {p['diff_us_median']} us, mean {p['diff_us_mean']} +- {p['diff_us_se']} us (standard error); "
            f"on/off throughput at full CPU {p['throughput_ratio_at_full_cpu']} (bar >= 0.9); non-200 "
            f"{p['non_200']}; load {p['load']:.1f}. Short paired rounds cancel the box's drift that makes "
            "single wrk runs swing; no HTTP server or client is counted, so the learning's share is larger "
            "here than in the served ratio below.",
        ]
    if t:
        s = t["summary"]
        lines += [
            "",
            f"Throughput (one worker, wrk -t1 -c32, unique prompts, {t['rounds']} alternating rounds of "
            f"{t['duration']} s, medians): learning off {s['off']['rps_median']} req/s, "
            f"{s['off']['cpu_us_per_req_median']} us gateway CPU per request; on {s['on']['rps_median']} req/s, "
            f"{s['on']['cpu_us_per_req_median']} us; on/off throughput {s['rps_ratio_on_off']} (bar >= 0.9), "
            f"CPU per request x{s['cpu_ratio_on_off']}; non-2xx {s['off']['non_2xx'] + s['on']['non_2xx']}; "
            f"load {min(r['load'] for r in t['runs']):.1f}-{max(r['load'] for r in t['runs']):.1f} "
            "(requests per second swing 2-4x between runs at that load; CPU per request is the steadier).",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--outcomes",
        type=int,
        default=7740,
        help="9 rounds of 860 (3 rounds read 30-110 us for the same code: the blocks slow each other)",
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (0: skip throughput)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument(
        "--paired-rounds", type=int, default=60, help="rounds of the in-process off/on CPU pairs (0: skip)"
    )
    ap.add_argument("--paired-burst", type=int, default=600, help="requests per gateway and round")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--md-only", action="store_true", help="rewrite the BENCHMARKS.md section from the last results"
    )
    args = ap.parse_args()
    if args.md_only:
        update_section(
            "online_gateway",
            markdown(json.loads(RESULTS.read_text())),
            title="Online learning in the gateway",
        )
        return
    tmp = Path(tempfile.mkdtemp(prefix="llmroute-online-gw-"))
    res: dict[str, Any] = {"load_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    res["per_outcome"] = asyncio.run(per_outcome(args.outcomes, tmp))
    print(json.dumps(res["per_outcome"]), file=sys.stderr)
    if args.paired_rounds > 0:
        res["paired_cpu"] = asyncio.run(paired_cpu(args.paired_rounds, args.paired_burst, tmp))
        print(
            json.dumps({k: v for k, v in res["paired_cpu"].items() if not k.startswith("cpu_us_o")}),
            file=sys.stderr,
        )
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
