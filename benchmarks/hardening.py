"""Issue #11 acceptance: budgets that hold, durable spend after kill -9, and no 5xx on bad input.

    python benchmarks/hardening.py [--sections budget,kill,bad] [--workers 1,2] [--kill-after 1000]

Loopback only: the project's fake OpenAI-compatible server and `llmroute serve` (ONE or TWO
workers, `--workers N`) run as subprocesses on 127.0.0.1 with a config written to a temporary
folder (the two fake models of examples/loopback.yaml, the shipped default router, API keys with
USD budgets). Three parts:

- budget: for each prompt script (ASCII, CJK, emoji, code; 3,000 characters), `n` (1 and 8) and
  mode (non-streaming, streaming, streams the client drops after the first content chunk while
  the upstream drips), a key of its own with a $0.50/day budget gets waves of 200 concurrent
  requests until a wave admits none. The key's final spend (the budgets' books, read back from the
  store once the gateway stopped) must be <= budget + one request's maximum cost, where that
  maximum is computed here independently of the gateway: every byte of the messages' JSON (+64)
  an input token at the dearer model's price, plus `n` x max_tokens output tokens.
- kill: one key, 16 concurrent non-streaming requests; once the client has received the
  `--kill-after`-th complete response the whole gateway process group gets SIGKILL. Every response
  the client received completely counts as acknowledged (its cost from its `usage` and the
  `x-llmroute-model` prices). Then a gateway is built in this process on the same config (as a
  restart would) and its budget books are compared with the acknowledged costs (lost spend must be
  0), and the trace rows in the store with the acknowledged count (lost rows must be <= the
  documented window: the responses acknowledged in the last 2 x `store.flush_interval_s` before the
  kill, i.e. one interval queued plus the transaction in progress). A real `serve` is then
  restarted to check that the killed run's workers folder is removed.
- bad: every malformed input family of tests/security (wrong types and ranges on chat and
  /v1/messages, bad `llmroute` objects, deep JSON, bad bodies, huge or too many headers, a slow
  head, a stalled body, 405/404) plus generated wrong-type mutations of every field of a chat and a
  Messages body, each -> its HTTP status; the acceptance is 0 responses >= 500 (and no dropped
  connection where a status is due).

Writes benchmarks/results/hardening.json and the `hardening` section of BENCHMARKS.md. A full run
takes about 3-5 minutes on 2 cores.

The processes (fake server, `serve`, the config, the books) are in benchmarks/_hardening_procs.py,
the bad-input cases and their run in benchmarks/_hardening_bad.py; this script holds the budget and
kill -9 runs, the report and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hardening_bad import WRONG, bad_inputs
from _hardening_bad import json_cases as json_cases
from _hardening_bad import mutation_cases as mutation_cases
from _hardening_procs import PRICES, ROOT, Served, config, fake_server, key_entry, read_books, secret
from _md import md_table, update_section
from llmroute.gateway.auth import max_request_cost, period_ids

RESULTS = ROOT / "benchmarks" / "results" / "hardening.json"

BUDGET = 0.1  # USD per day of each budget-run key (a few requests' worth: waves reach it fast)
MAX_TOKENS = 50
WAVE = 200  # concurrent requests per wave
MAX_WAVES = 20  # a disconnect bills only what was delivered, so those keys need more waves to run dry

# 3,000-character prompts in four scripts (as tests/security/test_budget_holds.py)
PROMPTS = {
    "ascii": ("Explain why the sky is blue at noon and red at sunset. " * 60)[:3000],
    "cjk": ("東京の天気はどうですか、明日は雨が降りますか。" * 140)[:3000],
    "emoji": ("😀🎉🚀🔥✨👍🏽" * 500)[:3000],
    "code": ('def f(x):\n    return {"k": [x, x ** 2]}\n' * 80)[:3000],
}
MODES = ("plain", "stream", "disconnect")
CONTENT = re.compile(rb'"content":\s*"[^"]')  # a stream chunk with some text


# ---- budget runs ---------------------------------------------------------------------------------


def one_request_max(messages: list[dict[str, Any]], n: int) -> float:
    """An independent upper bound on one request's cost: every byte of the messages' JSON (+64) an
    input token, `n` x MAX_TOKENS output tokens, at the dearer model's prices."""
    pin, pout = max(PRICES.values())
    return max_request_cost(pin, pout, len(orjson.dumps(messages)) + 64, MAX_TOKENS, n)


async def wave(
    session: aiohttp.ClientSession, url: str, key: str, messages: list[dict[str, Any]], n: int, mode: str
) -> collections.Counter[str]:
    """WAVE concurrent requests; counts "ok", "budget" (429 insufficient_quota) and other outcomes."""
    body: dict[str, Any] = {"model": "llmroute/auto", "messages": messages, "max_tokens": MAX_TOKENS, "n": n}
    if mode != "plain":
        body["stream"] = True
    data_out = orjson.dumps(body)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    out: collections.Counter[str] = collections.Counter()

    async def one() -> None:
        try:
            async with session.post(url + "/v1/chat/completions", data=data_out, headers=headers) as r:
                status = r.status
                if mode == "disconnect" and status == 200:
                    data = b""
                    async for chunk in r.content.iter_any():
                        data += chunk
                        if CONTENT.search(data):
                            break  # the first content chunk: go away mid-stream
                    r.close()  # drops the connection
                else:
                    data = await r.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            out[f"client error {type(e).__name__}"] += 1
            return
        if status == 200:
            out["ok"] += 1
        elif status == 429 and b"insufficient_quota" in data:
            out["budget"] += 1
        else:
            out[str(status)] += 1

    await asyncio.gather(*(one() for _ in range(WAVE)))
    return out


async def waves(
    url: str, key: str, messages: list[dict[str, Any]], n: int, mode: str
) -> tuple[list[int], collections.Counter[str]]:
    """Waves until one admits nobody (at most MAX_WAVES): admitted per wave, all outcomes."""
    admitted: list[int] = []
    outcomes: collections.Counter[str] = collections.Counter()
    conn = aiohttp.TCPConnector(limit=WAVE)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(MAX_WAVES):
            got = await wave(session, url, key, messages, n, mode)
            outcomes.update(got)
            admitted.append(got["ok"])
            if got["ok"] == 0:
                break
    return admitted, outcomes


def budget_runs(
    fake: str, folder: Path, workers: int, scripts: list[str], modes: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    """The budget runs on `workers` workers (`fake`: the fake server's root URL), one key per
    (script, n, mode)."""
    scenarios = [(s, n, m) for s in scripts for m, n in modes]
    ids = {sc: f"w{workers}-{sc[0]}-n{sc[1]}-{sc[2]}" for sc in scenarios}
    run_dir = folder / f"budget-w{workers}"
    run_dir.mkdir()
    cfg = config(fake + "/v1", run_dir, [key_entry(ids[sc], BUDGET) for sc in scenarios])
    served = Served(cfg, run_dir, workers, run_dir)
    rows = []
    try:
        for sc in scenarios:
            script, n, mode = sc
            messages = [{"role": "user", "content": PROMPTS[script]}]
            if mode == "disconnect":  # the upstream drips: the client leaves while it streams
                for model in PRICES:
                    httpx.post(
                        fake + "/_control/fault", json={"model": model, "fault": "drip", "delay": 0.02}
                    )
            t0 = time.monotonic()
            try:
                admitted, outcomes = asyncio.run(waves(served.url, secret(ids[sc]), messages, n, mode))
            finally:
                httpx.delete(fake + "/_control/fault")
            rows.append(
                {
                    "workers": workers,
                    "script": script,
                    "n": n,
                    "mode": mode,
                    "key": ids[sc],
                    "admitted_per_wave": admitted,
                    "outcomes": dict(outcomes),
                    "budget": BUDGET,
                    "one_request_max": one_request_max(messages, n),
                    "seconds": round(time.monotonic() - t0, 2),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        served.stop()
    books = read_books(served.cfg_path, [r["key"] for r in rows])
    for r in rows:
        b = books[r["key"]]
        r["spend"] = b["day_spent"]
        r["reserved_left"] = b["day_reserved"]
        r["trace_cost"] = b["trace_cost"]
        r["bound"] = r["budget"] + r["one_request_max"]
        errors = sum(v for k, v in r["outcomes"].items() if k not in ("ok", "budget"))
        r["pass"] = bool(r["spend"] <= r["bound"] and r["admitted_per_wave"][-1] == 0 and errors == 0)
    return rows


# ---- kill -9 -------------------------------------------------------------------------------------


def kill_run(fake: str, folder: Path, workers: int, kill_after: int, conc: int = 16) -> dict[str, Any]:
    run_dir = folder / f"kill-w{workers}"
    run_dir.mkdir()
    tmpdir = run_dir / "tmp"
    tmpdir.mkdir()
    cfg = config(fake + "/v1", run_dir, [key_entry("kill", 1000.0)])
    cfg["aliases"]["llmroute/auto"].pop("tradeoff")  # routed as the shipped router decides: both models
    served = Served(cfg, run_dir, workers, tmpdir)
    key = secret("kill")
    acks: list[tuple[float, float]] = []  # (client time, cost) of every complete 200 response
    failures: collections.Counter[str] = collections.Counter()
    killed_at: list[float] = []

    async def main() -> None:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        counter = iter(range(10**9))
        conn = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def loop() -> None:
                while not killed_at:
                    i = next(counter)
                    body = {
                        "model": "llmroute/auto",
                        "max_tokens": 20,
                        "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i * 7}?"}],
                    }
                    try:
                        async with session.post(
                            served.url + "/v1/chat/completions", data=orjson.dumps(body), headers=headers
                        ) as r:
                            status, model = r.status, r.headers.get("x-llmroute-model", "")
                            data = orjson.loads(await r.read())
                    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as e:
                        failures[type(e).__name__] += 1
                        continue
                    if status != 200:
                        failures[str(status)] += 1
                        continue
                    pin, pout = PRICES[model]
                    u = data["usage"]
                    acks.append(
                        (time.monotonic(), (u["prompt_tokens"] * pin + u["completion_tokens"] * pout) / 1e6)
                    )
                    if len(acks) >= kill_after and not killed_at:
                        killed_at.append(time.monotonic())
                        served.kill9()

            await asyncio.gather(*(loop() for _ in range(conc)))

    t0 = time.monotonic()
    asyncio.run(main())
    if not killed_at:  # pragma: no cover - the loop only ends by the kill
        raise SystemExit("kill run ended without a kill")
    elapsed = killed_at[0] - t0
    from llmroute.gateway.config import load_config

    flush_s = load_config(served.cfg_path).store.flush_interval_s
    window_rows = sum(1 for t, _ in acks if t >= killed_at[0] - 2 * flush_s)
    stale_after_kill = sorted(p.name for p in tmpdir.iterdir() if p.name.startswith("llmroute-workers-"))
    books = read_books(served.cfg_path, ["kill"])["kill"]
    # restart the real server (the killed run's workers folder must go), then stop it
    again = Served(cfg, run_dir, workers, tmpdir)
    stale_after_restart = sorted(
        p.name
        for p in tmpdir.iterdir()
        if p.name in stale_after_kill and p.name.startswith("llmroute-workers-")
    )
    again.stop()
    ack_cost = sum(c for _, c in acks)
    res = {
        "workers": workers,
        "kill_after": kill_after,
        "acknowledged": len(acks),
        "acknowledged_cost": ack_cost,
        "ack_rate_per_s": round(len(acks) / elapsed, 1) if elapsed > 0 else None,
        "client_failures_at_kill": dict(failures),
        "ledger_spend_after_restart": books["day_spent"],
        "reserved_after_restart": books["day_reserved"],
        "spend_lost": max(0.0, ack_cost - books["day_spent"]),
        "spend_lost_share": max(0.0, ack_cost - books["day_spent"]) / ack_cost if ack_cost else 0.0,
        "trace_rows_200": int(books["trace_rows_200"]),
        "trace_rows_lost": max(0, len(acks) - int(books["trace_rows_200"])),
        "flush_interval_s": flush_s,
        "window_rows": window_rows,
        "workers_dirs_after_kill": stale_after_kill,
        "workers_dirs_left_after_restart": stale_after_restart,
    }
    res["spend_pass"] = res["spend_lost"] <= 1e-12 * max(1.0, ack_cost)
    res["traces_pass"] = res["trace_rows_lost"] <= window_rows
    print(json.dumps(res), file=sys.stderr)
    return res


# ---- report --------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    md = [
        f"`python benchmarks/hardening.py` on {m['cpus']} CPUs (load average {m['loadavg_at_start'][0]:.1f} at the "
        f"start), loopback: the fake server and `llmroute serve --workers N` as subprocesses "
        "(the config of examples/loopback.yaml with context windows, API keys with budgets, shipped router). "
        f"Run of {result['date']}, {result['seconds']:.0f} s.",
    ]
    budget = result.get("budget") or []
    if budget:
        fails = sum(not r["pass"] for r in budget)
        md += [
            "",
            f"**Budgets.** Each row: one key with a ${BUDGET:.2f}/day budget, waves of {WAVE} concurrent requests "
            f"(3,000-character prompt, max_tokens {MAX_TOKENS}) until a wave admits none. `disconnect`: streams "
            "the client drops after the first content chunk while the upstream drips. Spend = the key's books "
            "as a restarted gateway reads them; bound = budget + one request's maximum cost computed "
            "independently (every byte of the messages' JSON + 64 an input token, n x max_tokens output, at "
            f"fake-strong's prices). {len(budget) - fails} of {len(budget)} runs within the bound.",
            "",
            md_table(
                ["workers", "script", "n", "mode", "admitted per wave", "spend $", "budget $", "bound $", "trace cost $", "pass"],
                [
                    [
                        r["workers"], r["script"], r["n"], r["mode"], " ".join(map(str, r["admitted_per_wave"])),
                        r["spend"], r["budget"], r["bound"], r["trace_cost"], "yes" if r["pass"] else "**no**",
                    ]
                    for r in budget
                ],
                digits=4,
            ),
        ]  # fmt: skip
    kills = result.get("kill") or []
    if kills:
        md += [
            "",
            "**kill -9.** 16 concurrent requests; SIGKILL to the whole `serve` process group once the client "
            "holds the k-th complete response (responses completed after that still count). Spend after restart "
            "= the budget books of a gateway started afresh on the same config; the window = responses "
            "acknowledged in the last 2 x `store.flush_interval_s` before the kill (one interval queued plus the "
            "transaction in progress, as the store documents).",
            "",
            md_table(
                ["workers", "acknowledged", "acknowledged $", "spend after restart $", "spend lost", "holds left $", "trace rows",
                 "rows lost", "window (rows)", "workers folder left", "pass"],
                [
                    [
                        k["workers"], k["acknowledged"], k["acknowledged_cost"], k["ledger_spend_after_restart"],
                        f"{k['spend_lost_share']:.2%}", k["reserved_after_restart"], k["trace_rows_200"], k["trace_rows_lost"], k["window_rows"],
                        len(k["workers_dirs_left_after_restart"]),
                        "yes" if k["spend_pass"] and k["traces_pass"] else "**no**",
                    ]
                    for k in kills
                ],
                digits=5,
            ),
        ]  # fmt: skip
    bad = result.get("bad")
    if bad:
        groups: dict[str, collections.Counter[str]] = {}
        for r in bad["named"]:
            groups.setdefault(r["group"], collections.Counter())[str(r["status"])] += 1
        md += [
            "",
            f"**Bad input.** {bad['inputs']} inputs, {bad['responses_5xx']} answered 5xx, "
            f"{bad['closed_without_status']} closed without a status, /healthz after: {bad['healthz_after']}, "
            f"tracebacks in the log: {bad['tracebacks_in_log']}"
            + (f" ({'; '.join(bad.get('exceptions_in_log', []))[:300]})" if bad.get("exceptions_in_log") else "")
            + ". Statuses per family (count x status); the "
            "mutations replace each field and item of a full chat / Messages body in turn by "
            f"{', '.join(json.dumps(v) for v in WRONG)} (some are valid values: 200).",
            "",
            md_table(
                ["family", "inputs", "statuses"],
                [[g, sum(c.values()), ", ".join(f"{v} x {k}" for k, v in sorted(c.items()))] for g, c in groups.items()]
                + [
                    [f"mutations of {p}", sum(c.values()), ", ".join(f"{v} x {k}" for k, v in sorted(c.items()))]
                    for p, c in bad["mutations"].items()
                ],
            ),
            "",
            "<details><summary>Every named input and its status</summary>",
            "",
            md_table(["family", "input", "endpoint", "status"], [[r["group"], r["case"], r["path"], r["status"]] for r in bad["named"]]),
            "",
            "</details>",
        ]  # fmt: skip
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="budget,kill,bad")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--scripts", default=",".join(PROMPTS))
    ap.add_argument(
        "--modes",
        default="plain:1,plain:8,stream:1,stream:8,disconnect:8",
        help="budget runs per script: mode:n, mode one of " + ", ".join(MODES),
    )
    ap.add_argument("--kill-after", type=int, default=1000)
    ap.add_argument("--no-write", action="store_true", help="do not write results / BENCHMARKS.md")
    ap.add_argument(
        "--md-only", action="store_true", help="rewrite the BENCHMARKS.md section from the last results"
    )
    args = ap.parse_args()
    if args.md_only:
        update_section("hardening", markdown(json.loads(RESULTS.read_text())), title="Gateway hardening")
        return
    sections = set(args.sections.split(","))
    workers = [int(w) for w in args.workers.split(",")]
    load_start = os.getloadavg()
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "day": period_ids(time.time())[0],
    }
    with tempfile.TemporaryDirectory(prefix="llmroute-hardening-") as tmp, fake_server(Path(tmp)) as fake:
        folder = Path(tmp)
        if "budget" in sections:
            result["budget"] = []
            for w in workers:
                modes = [(m, int(n)) for m, n in (x.split(":") for x in args.modes.split(","))]
                result["budget"] += budget_runs(fake, folder, w, args.scripts.split(","), modes)
        if "kill" in sections:
            result["kill"] = [kill_run(fake, folder, w, args.kill_after) for w in workers]
        if "bad" in sections:
            result["bad"] = bad_inputs(fake, folder)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    ok = all(r["pass"] for r in result.get("budget", [])) and all(
        k["spend_pass"] and k["traces_pass"] for k in result.get("kill", [])
    )
    ok = ok and (result.get("bad") or {"pass": True})["pass"]
    result["pass"] = ok
    if args.no_write:
        print(json.dumps(result, indent=2, default=str))
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    update_section("hardening", markdown(result), title="Gateway hardening (issue 11 acceptance)")
    print(f"wrote {RESULTS} and BENCHMARKS.md; acceptance {'met' if ok else 'NOT met'}", file=sys.stderr)


if __name__ == "__main__":
    main()
