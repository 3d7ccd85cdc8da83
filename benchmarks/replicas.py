"""Gateway replicas on one Redis (`state: redis://...`): throughput, budget exactness, kill -9.

    python benchmarks/replicas.py [--duration 5] [--connections 32,128] [--replicas 1,2,4]

Starts, as subprocesses on 127.0.0.1, the project's fake OpenAI-compatible server (instant
answers), a throwaway `redis-server` (Debian package; append-only file in a temporary folder) and
gateway processes (`llmroute serve`, ONE worker each, different ports, the same config: two fake
models, `llmroute/auto` routed by the shipped default router, one API key with a day budget and a
rate limit, so every request books its budget hold, its settle and its rate-limit token). Each
process writes its traces to its own SQLite file.

1. Throughput: wrk (one thread per gateway, the connections split evenly over the gateways) for
   `--duration` seconds after a 2 s warm-up, every prompt unique (no cache). Aggregate req/s is
   the sum over the wrk instances, p50 the request-weighted mean of their p50s and p99 the largest
   of their p99s. Runs: one process with the in-process state (the ledger file, no `state:`) and
   1, 2, 4 processes on Redis. The ratio Redis / in-process on one process is the acceptance
   (>= 0.8). All processes share the box's cores with wrk, the fake server and Redis, so more
   processes add no cores here: the multi-process rows show the cost of sharing, not scaling.
2. Budget exactness: 3 processes, 500 concurrent requests of a key with a small day budget
   spread round-robin, then one request at a time until every replica refuses: the spend in
   Redis must end within [budget, budget + one request's maximum cost] and equal the costs the
   clients were answered with.
3. kill -9: 3 processes, 300 requests of another key, 30 at a time (the fake upstream answering
   after 0.1 s), one replica killed with SIGKILL after 60 answers: the spend in Redis must cover every answered cost (and exceed it by at most
   the cut-off requests' maximum costs).

Writes benchmarks/results/replicas.json and the `replicas` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import md_table, update_section
from gateway import cpu_seconds, ensure_wrk, free_port, parse_wrk, set_upstream_latency, start, wait_ready
from llmroute.gateway.auth import estimate_input_tokens, hash_key, max_request_cost
from llmroute.gateway.state import RedisState, spawn_redis_server

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "replicas.json"
KEY_LOAD = "sk-bench-replicas-load-0123456789"
KEY_BUDGET = "sk-bench-replicas-budget-0123456789"
KEY_KILL = "sk-bench-replicas-kill-0123456789"
PRICE_IN, PRICE_OUT = 10.0, 30.0  # fake-strong, USD per 1M tokens
BUDGET = 0.05
MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in one short paragraph, please."}]
LUA = r"""
local prompts = {
  "What is the capital of France?",
  "Write a Python function that returns the n-th Fibonacci number using memoization.",
  "Explain the difference between a process and a thread in operating systems, with examples.",
  "Solve for x: 3x + 7 = 22. Show your steps.",
  "Summarise the causes of the French Revolution in three sentences.",
}
local i = 0
request = function()
  i = i + 1
  local p = prompts[(i % #prompts) + 1]
  local body = '{"model":"llmroute/auto","messages":[{"role":"user","content":"' .. p .. ' (TAG ' .. i .. ')"}],"max_tokens":64}'
  return wrk.format("POST", "/v1/chat/completions",
    {["Content-Type"]="application/json", ["Authorization"]="Bearer KEY"}, body)
end
"""


def config(fake_port: int, redis_url: str | None) -> dict[str, Any]:
    """The gateway config: two fake models, a routed alias, three keys; `state:` when given."""
    models = [
        {"name": "fake-strong", "base_url": f"http://127.0.0.1:{fake_port}/v1", "input_per_mtok": PRICE_IN,
         "output_per_mtok": PRICE_OUT, "timeout_s": 30, "router_model": "gpt-4-1106-preview"},
        {"name": "fake-weak", "base_url": f"http://127.0.0.1:{fake_port}/v1", "input_per_mtok": 0.2,
         "output_per_mtok": 0.2, "timeout_s": 30, "router_model": "mistralai/mistral-7b-chat"},
    ]  # fmt: skip
    cfg: dict[str, Any] = {
        "server": {"request_timeout_s": 30},
        "models": models,
        "aliases": {"llmroute/auto": {"router": "default", "candidates": ["fake-strong", "fake-weak"]}},
        "keys": [
            {"id": "load", "key_sha256": hash_key(KEY_LOAD), "budget_usd_day": 1e9, "rpm": 1_000_000_000},
            {"id": "budget", "key_sha256": hash_key(KEY_BUDGET), "budget_usd_day": BUDGET},
            {"id": "kill", "key_sha256": hash_key(KEY_KILL), "budget_usd_day": 1e9},
        ],
        "store": {"url": "${LLMROUTE_STORE_URL}"},
    }
    if redis_url:
        cfg["state"] = redis_url
    return cfg


class Fleet:
    """`n` gateway processes on one config, each with its own trace store and log."""

    def __init__(self, n: int, cfg_path: Path, tmp: Path, tag: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        for i in range(n):
            port = free_port()
            env = dict(
                os.environ, LLMROUTE_STORE_URL=f"sqlite:///{tmp}/{tag}-{i}.sqlite", PYTHONUNBUFFERED="1"
            )
            env.pop("LLMROUTE_SHARED_DIR", None)
            cmd = [sys.executable, "-m", "llmroute.gateway.serve", "--config", str(cfg_path), "--port", str(port),
                   "--workers", "1"]  # fmt: skip
            self.procs.append(start(cmd, env, tmp / f"{tag}-{i}.log"))
            self.ports.append(port)
        for p, port in zip(self.procs, self.ports, strict=True):
            wait_ready(f"http://127.0.0.1:{port}/healthz", p, timeout=180)

    @property
    def roots(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def wrk_fleet(
    wrk: str, fleet: Fleet, conns: int, duration: int, tmp: Path, tag: str, redis_pid: int | None = None
) -> dict[str, Any]:
    """wrk against every process at once (connections split evenly); aggregate numbers (and the
    redis-server's CPU per request when `redis_pid` is given)."""
    n = len(fleet.ports)
    each = max(1, conns // n)
    scripts = []
    for i in range(n):
        lua = tmp / f"{tag}-{i}.lua"
        lua.write_text(LUA.replace("KEY", KEY_LOAD).replace("TAG", f"{tag}-{i}"))
        scripts.append(lua)
    warm = [subprocess.Popen([wrk, "-t1", f"-c{each}", "-d2s", "-s", str(s), r], stdout=subprocess.DEVNULL)
            for s, r in zip(scripts, fleet.roots, strict=True)]  # fmt: skip
    for w in warm:
        w.wait()
    pids = [p.pid for p in fleet.procs]
    cpu0 = sum(cpu_seconds(p) for p in pids)
    rcpu0 = cpu_seconds(redis_pid) if redis_pid else 0.0
    runs = [
        subprocess.Popen(
            [wrk, "-t1", f"-c{each}", f"-d{duration}s", "--latency", "-s", str(s), r],
            stdout=subprocess.PIPE,
            text=True,
        )
        for s, r in zip(scripts, fleet.roots, strict=True)
    ]
    outs = [parse_wrk(w.communicate()[0]) for w in runs]
    total = sum(o["requests"] for o in outs) or 1
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    rcpu = cpu_seconds(redis_pid) - rcpu0 if redis_pid else 0.0
    return {
        "processes": n,
        "connections": each * n,
        "rps": round(sum(o["rps"] for o in outs), 1),
        "p50_ms": round(sum(o["p50_ms"] * o["requests"] for o in outs) / total, 2),
        "p99_ms": round(max(o["p99_ms"] for o in outs), 2),
        "non_2xx": sum(o["non_2xx"] for o in outs),
        "socket_errors": sum(o["socket_errors"] for o in outs),
        "gateway_cpu_us_per_req": round(cpu / total * 1e6, 1),
        "redis_cpu_us_per_req": round(rcpu / total * 1e6, 1),
    }


async def burst(
    roots: list[str], key: str, n: int, kill: tuple[int, int] | None = None, concurrency: int | None = None
) -> list[tuple[str, float]]:
    """`n` requests round-robin over `roots`, all at once or `concurrency` at a time (a closed
    loop): (outcome, answered cost). `kill` = (pid, after k answers) sends SIGKILL to that
    process once k answers have arrived."""
    clients = [openai.AsyncOpenAI(base_url=f"{r}/v1", api_key=key, max_retries=0, timeout=120) for r in roots]
    done = [0]

    async def one(i: int) -> tuple[str, float]:
        try:
            r = await clients[i % len(clients)].chat.completions.create(
                model="fake-strong",
                messages=MESSAGES,
                max_tokens=50,  # type: ignore[arg-type]
            )
        except openai.APIStatusError as e:
            return str((e.body or {}).get("code") or e.status_code), 0.0  # type: ignore[union-attr]
        except openai.APIConnectionError:
            return "connection", 0.0
        done[0] += 1
        if kill is not None and done[0] == kill[1]:
            os.kill(kill[0], signal.SIGKILL)
        u = r.usage
        return "ok", (u.prompt_tokens * PRICE_IN + u.completion_tokens * PRICE_OUT) / 1e6 if u else 0.0

    sem = asyncio.Semaphore(concurrency or n)

    async def gated(i: int) -> tuple[str, float]:
        async with sem:
            return await one(i)

    try:
        return list(await asyncio.gather(*(gated(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()


def spent(state: RedisState, kid: str) -> tuple[float, float]:
    v = state.client.hmget(state.key("b", kid), "ds", "dr")
    return float(v[0] or 0), float(v[1] or 0)


def budget_check(fleet: Fleet, state: RedisState) -> dict[str, Any]:
    one_max = max_request_cost(PRICE_IN, PRICE_OUT, estimate_input_tokens(MESSAGES), 50)
    res = asyncio.run(burst(fleet.roots, KEY_BUDGET, 500))
    ok_burst = sum(o == "ok" for o, _ in res)
    answered = sum(c for _, c in res)
    refused, i, more = 0, 0, 0
    while refused < 2 * len(fleet.roots) and i < 500:
        r = httpx.post(
            f"{fleet.roots[i % len(fleet.roots)]}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY_BUDGET}"},
            json={"model": "fake-strong", "messages": MESSAGES, "max_tokens": 50},
            timeout=60,
        )
        i += 1
        if r.status_code == 200:
            u = r.json()["usage"]
            answered += (u["prompt_tokens"] * PRICE_IN + u["completion_tokens"] * PRICE_OUT) / 1e6
            refused, more = 0, more + 1
        else:
            refused += 1
    ds, dr = spent(state, "budget")
    return {
        "processes": len(fleet.roots),
        "concurrent": 500,
        "budget_usd": BUDGET,
        "one_request_max_usd": one_max,
        "admitted_in_burst": ok_burst,
        "admitted_after": more,
        "spent_usd": ds,
        "reserved_after_usd": dr,
        "answered_usd": answered,
        "over_budget_usd": ds - BUDGET,
        "exact": BUDGET <= ds <= BUDGET + one_max and abs(ds - answered) <= 1e-9 * max(1.0, ds),
    }


def kill_check(fleet: Fleet, state: RedisState, fake_url: str) -> dict[str, Any]:
    one_max = max_request_cost(PRICE_IN, PRICE_OUT, estimate_input_tokens(MESSAGES), 50)
    before, _ = spent(state, "kill")
    victim = fleet.procs[-1]
    set_upstream_latency(fake_url, 100.0)  # answers take 0.1 s: many requests are in flight at the kill
    try:
        res = asyncio.run(burst(fleet.roots, KEY_KILL, 300, kill=(victim.pid, 60), concurrency=30))
    finally:
        set_upstream_latency(fake_url, 0.0)
    victim.wait(30)
    answered = sum(c for _, c in res)
    ok = sum(o == "ok" for o, _ in res)
    cut = len(res) - ok
    after, _ = spent(state, "kill")
    booked = after - before
    return {
        "processes": len(fleet.roots),
        "requests": len(res),
        "answered": ok,
        "cut_off_by_kill": cut,
        "answered_usd": answered,
        "booked_usd": booked,
        "lost_acknowledged_usd": max(0.0, answered - booked),
        "ok": answered - 1e-12 <= booked <= answered + cut * one_max,
    }


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = []
    for t in r["throughput"]:
        rows.append(
            [
                t["state"],
                t["processes"],
                t["connections"],
                t.get("round", 0),
                t["rps"],
                t["p50_ms"],
                t["p99_ms"],
                t.get("gateway_cpu_us_per_req", ""),
                t.get("redis_cpu_us_per_req", "") if t["state"] == "redis" else "",
                t["non_2xx"] + t["socket_errors"],
            ]
        )
    b, k = r["budget"], r["kill"]
    lines = [
        f"`python benchmarks/replicas.py` on {m['cpus']} CPUs, load average {m['load_start'][0]:.1f} at the start and "
        f"{m['load_end'][0]:.1f} at the end (the box was shared with other engineers' jobs; wrk, the fake server, "
        "Redis and every gateway process share the same cores, so more processes add no cores here). Each "
        "gateway process: one worker, every request routed by the shipped default router (`llmroute/auto`), "
        "authenticated, with a budget hold + settle and a rate-limit token per request (on Redis: two "
        "scripts per request, auto-pipelined with the other requests' commands of the same event-loop pass; "
        "rate-limit leases topped up in the background). Aggregate req/s = sum "
        "over one wrk per process (connections split evenly), p50 = request-weighted mean, p99 = the largest.",
        "",
        md_table(
            [
                "state",
                "processes",
                "connections",
                "round",
                "req/s",
                "p50 ms",
                "p99 ms",
                "gateway CPU us/req",
                "redis-server CPU us/req",
                "errors",
            ],
            rows,
        ),
        "",
        f"Redis state vs in-process state on one process (medians of {r['rounds']} interleaved runs each): "
        f"**{r['ratio_32']:.2f}** of the throughput at 32 connections, **{r['ratio_128']:.2f}** at 128 (target >= 0.80: "
        f"{'met' if min(r['ratio_32'], r['ratio_128']) >= 0.8 else 'NOT met'}); by gateway CPU per request (less "
        f"sensitive to the box's load) {r['cpu_ratio_32']:.2f} and {r['cpu_ratio_128']:.2f}.",
        "",
        f"Budget exactness ({b['processes']} processes, {b['concurrent']} concurrent requests then one at a time "
        f"until all refuse): budget ${b['budget_usd']}, spent ${b['spent_usd']:.6f} (over by ${b['over_budget_usd']:.6f}; "
        f"one request's maximum cost ${b['one_request_max_usd']:.6f}), answered costs ${b['answered_usd']:.6f}, "
        f"holds left ${b['reserved_after_usd']:.6f}: {'exact' if b['exact'] else 'NOT exact'}.",
        "",
        f"kill -9 ({k['processes']} processes, {k['requests']} requests 30 at a time, one replica killed after 60 "
        f"answers): {k['answered']} answered (${k['answered_usd']:.6f}), {k['cut_off_by_kill']} cut off; booked in Redis "
        f"${k['booked_usd']:.6f}; acknowledged spend lost: ${k['lost_acknowledged_usd']:.6f} "
        f"({'none' if k['ok'] else 'SOME'}).",
    ]
    if "checks_load" in r:
        lines.append(f"(Budget and kill -9 checks rerun alone, load average {r['checks_load'][0]:.1f}.)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", default="32,128")
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument(
        "--checks-only", action="store_true", help="rerun the budget and kill -9 checks into the last results"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved in-process / Redis runs on one process"
    )
    ap.add_argument("--no-write", action="store_true", help="do not write results / BENCHMARKS.md")
    ap.add_argument(
        "--md-only", action="store_true", help="rewrite the BENCHMARKS.md section from the last results"
    )
    args = ap.parse_args()
    if args.md_only:
        update_section(
            "replicas", markdown(json.loads(RESULTS.read_text())), title="Replicas on shared Redis state"
        )
        return
    wrk = ensure_wrk()
    load_start = os.getloadavg()
    conns = [int(x) for x in args.connections.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="llmroute-replicas-"))
    fport, rport = free_port(), free_port()
    redis_dir = tmp / "redis"
    redis_dir.mkdir()
    redis = spawn_redis_server(rport, str(redis_dir))
    redis_url = f"redis://127.0.0.1:{rport}/0"
    fake = start(
        [sys.executable, "-m", "llmroute.gateway.fake", "--port", str(fport)],
        dict(os.environ),
        tmp / "fake.log",
    )
    state = RedisState(redis_url)
    throughput: list[dict[str, Any]] = []
    try:
        wait_ready(f"http://127.0.0.1:{fport}/v1/models", fake)
        local_cfg, redis_cfg = tmp / "local.yaml", tmp / "redis.yaml"
        local_cfg.write_text(yaml.safe_dump(config(fport, None)))
        redis_cfg.write_text(yaml.safe_dump(config(fport, redis_url)))
        # one process each, in-process vs Redis state: alternated `--rounds` times per connection
        # count (the box is shared: the medians of interleaved runs compare like with like)
        pair = (
            {}
            if args.checks_only
            else {
                "in-process": Fleet(1, local_cfg, tmp, "in-process-1"),
                "redis": Fleet(1, redis_cfg, tmp, "redis-1"),
            }
        )
        try:
            for c in conns:
                for k in range(args.rounds):
                    for name, fleet in pair.items():
                        rpid = redis.pid if name == "redis" else None
                        res = wrk_fleet(wrk, fleet, c, args.duration, tmp, f"{name}-1-{c}-{k}", rpid)
                        res["state"], res["round"] = name, k
                        throughput.append(res)
                        print(json.dumps(res), flush=True)
        finally:
            for fleet in pair.values():
                fleet.stop()
        for n in [] if args.checks_only else [int(x) for x in args.replicas.split(",") if int(x) > 1]:
            fleet = Fleet(n, redis_cfg, tmp, f"redis-{n}")
            try:
                for c in conns:
                    res = wrk_fleet(wrk, fleet, c, args.duration, tmp, f"redis-{n}-{c}", redis.pid)
                    res["state"], res["round"] = "redis", 0
                    throughput.append(res)
                    print(json.dumps(res), flush=True)
            finally:
                fleet.stop()
        fleet = Fleet(3, redis_cfg, tmp, "checks")
        try:
            budget = budget_check(fleet, state)
            print(json.dumps(budget), flush=True)
            kill = kill_check(fleet, state, f"http://127.0.0.1:{fport}")
            print(json.dumps(kill), flush=True)
        finally:
            fleet.stop()
    finally:
        state.close()
        fake.terminate()
        redis.terminate()
        fake.wait(30)
        redis.wait(30)

    if args.checks_only:  # the throughput of the last full run, new checks
        result = json.loads(RESULTS.read_text())
        result.update(budget=budget, kill=kill, checks_load=os.getloadavg())
        print(json.dumps({"budget": budget, "kill": kill}))
        if not args.no_write:
            RESULTS.write_text(json.dumps(result, indent=2) + "\n")
            update_section("replicas", markdown(result), title="Replicas on shared Redis state")
        return

    def med(state_name: str, c: int, field: str = "rps") -> float:
        xs = sorted(
            t[field]
            for t in throughput
            if t["state"] == state_name and t["processes"] == 1 and t["connections"] == c
        )
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": load_start,
            "load_end": os.getloadavg(),
        },
        "duration_s": args.duration,
        "throughput": throughput,
        "rounds": args.rounds,
        "ratio_32": med("redis", conns[0]) / max(1e-9, med("in-process", conns[0])),
        "ratio_128": med("redis", conns[-1]) / max(1e-9, med("in-process", conns[-1])),
        # gateway CPU per request, in-process / Redis: less sensitive to the box's load
        "cpu_ratio_32": med("in-process", conns[0], "gateway_cpu_us_per_req")
        / max(1e-9, med("redis", conns[0], "gateway_cpu_us_per_req")),
        "cpu_ratio_128": med("in-process", conns[-1], "gateway_cpu_us_per_req")
        / max(1e-9, med("redis", conns[-1], "gateway_cpu_us_per_req")),
        "budget": budget,
        "kill": kill,
    }
    print(json.dumps({k: result[k] for k in ("ratio_32", "ratio_128", "machine")}))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        update_section("replicas", markdown(result), title="Replicas on shared Redis state")


if __name__ == "__main__":
    main()
