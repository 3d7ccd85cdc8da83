"""What OpenTelemetry export costs the gateway (issue 16 item 4).

    python benchmarks/telemetry.py [--records 5000] [--duration 10] [--rounds 2]

A throwaway OTLP/HTTP collector (a subprocess that answers every export with 200) receives
everything.

1. Per request, in process: `Telemetry.record` (what `Gateway._finish` adds with telemetry on:
   the server span with the routing decision, one attempt span, and with `metrics: true` the
   metric points) for `--records` decisions of examples/loopback.yaml's `llmroute/auto` (the
   shipped router), then a flush of the batch exporter; process CPU (all threads: the exporter's
   protobuf encoding and HTTP posts included) per request, sample_ratio 1 (and traces at 0.1).
2. End to end: `llmroute serve` (one worker) on examples/loopback.yaml in front of the fake
   server, wrk -t1 at 32 connections, `--rounds` alternating runs of telemetry off / traces /
   traces + metrics for `--duration` s each: requests per second and gateway CPU per request
   (from /proc).

With telemetry off the request path pays one `is not None` check (`Gateway._finish`) and one
more field per `Attempt`; that is not measurable end to end on a loaded box, so part 2 compares
on with off. Writes benchmarks/results/telemetry.json.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import LUA, ensure_wrk, free_port, start, wait_ready, wrk_one_worker

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "telemetry.json"

COLLECTOR = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _config(tmp: Path, mode: str, otel_url: str, ratio: float = 1.0) -> Path:
    """examples/loopback.yaml with telemetry `mode` ("off", "traces", "traces+metrics")."""
    cfg = yaml.safe_load((ROOT / "examples" / "loopback.yaml").read_text())
    cfg.pop("admin", None)
    if mode != "off":
        cfg["telemetry"] = {
            "otlp_endpoint": otel_url,
            "sample_ratio": ratio,
            "metrics": mode == "traces+metrics",
        }
    path = tmp / f"{mode.replace('+', '-')}-{ratio:g}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def per_request(n: int, tmp: Path, otel_url: str, metrics: bool, ratio: float) -> dict[str, Any]:
    """Process CPU of `n` `Telemetry.record` calls and the export of their spans (see the docstring)."""
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import load_config
    from llmroute.gateway.reliability import Attempt

    os.environ["LLMROUTE_STORE_URL"] = "memory://"
    mode = "traces+metrics" if metrics else "traces"
    gw = Gateway(load_config(_config(tmp, mode, otel_url, ratio)))
    tel = gw.telemetry
    assert tel is not None
    tel.start()
    prompts = [f"Question {i}: what is {i} + {i * 7}? Explain briefly." for i in range(n)]
    rows = []
    for i, p in enumerate(prompts):
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
        body = {"model": "llmroute/auto", "messages": [{"role": "user", "content": p}]}
        ctx, decision, _ = await gw.prepare(scope, body, f"r{i}", "chat")
        rows.append((ctx, decision))
    response = [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x"}}]
    cpu0 = time.process_time()
    w0 = time.perf_counter()
    for i, (ctx, decision) in enumerate(rows):
        t0 = time.perf_counter() - 0.002
        a = Attempt(decision.model, True, 0.0015, started=time.monotonic() - 0.0018)
        tel.record(
            rid=f"r{i}",
            ctx=ctx,
            decision=decision,
            model=decision.model,
            status=200,
            t0=t0,
            attempts=[a],
            usage=(25, 40, 1e-5),
            stream=False,
            ttft=None,
            error=None,
            response=response,
            extra={"cost_source": "usage"},
        )
    record_cpu = time.process_time() - cpu0
    record_wall = time.perf_counter() - w0
    tel._tp.force_flush()
    if tel._mp is not None:
        tel._mp.force_flush()
    total_cpu = time.process_time() - cpu0
    tel.shutdown()
    return {
        "mode": mode,
        "sample_ratio": ratio,
        "requests": n,
        "record_cpu_us_per_req": round(record_cpu / n * 1e6, 1),
        "record_wall_us_per_req": round(record_wall / n * 1e6, 1),
        "cpu_us_per_req_with_export": round(total_cpu / n * 1e6, 1),
    }


def throughput(duration: int, rounds: int, tmp: Path, otel_url: str) -> list[dict[str, Any]]:
    """Alternating off / traces / traces+metrics wrk runs against one gateway worker each."""
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
            for mode in ("off", "traces", "traces+metrics"):
                config = _config(tmp, mode, otel_url)
                store, log = tmp / f"traces-{r}-{mode}.sqlite", tmp / f"gw-{r}-{mode}.log"
                res = wrk_one_worker(config, env, store, log, wrk, lua, 32, duration)
                res.update(mode=mode, round=r, load=os.getloadavg()[0])
                print(json.dumps(res), file=sys.stderr)
                runs.append(res)
    finally:
        fake.terminate()
        fake.wait(30)
    return runs


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("off", "traces", "traces+metrics"):
        rs = [r for r in runs if r["mode"] == mode]
        out[mode] = {
            "rps_median": round(statistics.median(r["rps"] for r in rs), 1),
            "cpu_us_per_req_median": round(statistics.median(r["cpu_us_per_req_gateway"] for r in rs), 1),
            "non_2xx": sum(r["non_2xx"] for r in rs),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    res: dict[str, Any] = {"load_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        oport = free_port()
        col = start([sys.executable, "-c", COLLECTOR, str(oport)], dict(os.environ), tmp / "collector.log")
        otel_url = f"http://127.0.0.1:{oport}"
        try:
            time.sleep(0.5)
            res["per_request"] = [
                asyncio.run(per_request(args.records, tmp, otel_url, metrics, ratio))
                for metrics, ratio in ((False, 1.0), (True, 1.0), (False, 0.1))
            ]
            print(json.dumps(res["per_request"]), file=sys.stderr)
            if args.rounds:
                res["runs"] = throughput(args.duration, args.rounds, tmp, otel_url)
                res["summary"] = summarise(res["runs"])
        finally:
            col.terminate()
            col.wait(30)
    res["load_end"] = os.getloadavg()[0]
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
