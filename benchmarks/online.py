"""Online learning benchmark (issue 13, the acceptance items that need no gateway).

On routerbench_subset and routellm (prompts with every model's outcome and cost), 5 seeds (one
random stream order each), lambda at the middle of the single-model cost range
(`llmroute.online.simulate.mid_tradeoff`), reward = quality - lambda * cost:

- *cold start*: the learner starts from nothing (no router: base quality 0.5, unknown costs)
  and makes one pass; mean reward over the last 20% of the stream against the offline 5-fold
  cross-validated default router on the same prompts; cumulative regret and its growth exponent
  (slope of log regret on log t over the second half; < 1 is sub-linear);
- *warm start*: a default router trained on the first 10% of the stream (full information), then
  the learner corrects it on the other 90%: the worst 500-request window against that router
  (bar: >= -0.01) and the last 20% against the cv router;
- *new model* (routerbench_subset): a 12th model, better and cheaper than all others (per prompt
  the best quality of the 11, at half the cheapest cost), added with no profile after 1,000
  warm-start requests: the first 100-request window in which it gets >= 50% of the picks;
- update cost per outcome (p50 / p99 of `OnlineLearner.update`);
- *what-if* (`--whatif 100`): coverage of `llmroute.online.whatif`'s 95% intervals for another
  trade-off on the learner's logged stream (see `whatif_run`; results/online_whatif.json);
- *replicas on one Redis* (`--replicas`): the gateway's learner replicas (`OnlineLearner` per
  replica, state through `llmroute.gateway.learning_redis.RedisLearnerState` on a throwaway
  redis-server) with the stream spread round-robin over 3 of them, against 1, each recording its
  outcomes and pulling every other replica's in batches (see `replicas_run`;
  results/online_replicas.json).

    nice .venv/bin/python benchmarks/online.py [--seeds 5] [--sets routerbench_subset,routellm]
    nice .venv/bin/python benchmarks/online.py --whatif 100 [--whatif-scale 0.5]
    nice .venv/bin/python benchmarks/online.py --replicas [--seeds 5]

Writes benchmarks/results/online.json and the "Online learning" section of BENCHMARKS.md. The
cross-validated estimates are cached under $TMPDIR/llmroute-online-cache (keyed by set and size).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "online.json"
WHATIF = ROOT / "benchmarks" / "results" / "online_whatif.json"
REPLICAS = ROOT / "benchmarks" / "results" / "online_replicas.json"
DRIFT = ROOT / "benchmarks" / "results" / "online_drift.json"
#: outcomes a replica records per batch, pulling the other replicas' outcomes with them (the
#: gateway learns in batches and syncs every sync_interval_s: here the staleness in requests)
REPLICA_BATCH = 32
CACHE = Path(tempfile.gettempdir()) / "llmroute-online-cache"
LEARNER = "thompson"
#: learner settings compared: the defaults, and a tighter exploration bound
CONFIGS = {"default": {}, "explore0.05": {"max_explore": 0.05}}
#: the refit of the default estimator on the logged outcomes (`llmroute.online.refit.Refitter`
#: settings; its defaults) in every run of the simulation and of the new-model check
REFIT: dict = {}
#: with a warm start, the refits also train on the warm-start router's table (`Refitter.set_table`)
REFIT_TABLE = False
#: with a warm start, exploration decaying as evidence accumulates (`run_stream`'s explore_decay; 0: off)
EXPLORE_DECAY = 0.0
ADD_AT = 1000
NEW_WINDOW = 100


def _cv(name: str, table, enc) -> tuple[np.ndarray, np.ndarray]:
    from llmroute.online.simulate import cv_estimates

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{name}-{table.n_prompts}-default-cv.npz"
    if path.exists():
        z = np.load(path)
        return z["q"], z["c"]
    t0 = time.time()
    q, c = cv_estimates(table, enc, "default", 5, 0)
    np.savez(path, q=q, c=c)
    print(f"{name}: cv of the default router {time.time() - t0:.0f} s", flush=True)
    return q, c


def new_model_run(table, enc, lam: float, seed: int) -> dict:
    """Warm start from 10%, then a 12th model (better and cheaper than all) joins at ADD_AT."""
    from llmroute.online.learner import OnlineLearner
    from llmroute.online.refit import Refitter
    from llmroute.online.simulate import run_stream
    from llmroute.router import Router

    Q, C = table.quality_matrix(), table.cost_matrix()
    Q12 = np.column_stack([Q, Q.max(axis=1)])
    C12 = np.column_stack([C, 0.5 * C.min(axis=1)])
    n = table.n_prompts
    perm = np.random.default_rng(seed).permutation(n)
    n_warm = round(0.1 * n)
    stream = perm[n_warm:]
    ids, prompts = table.prompt_ids, table.prompts
    r = Router.fit(table.subset([ids[i] for i in perm[:n_warm]]), encoder=enc, seed=seed)
    qw, cw = r.estimate([prompts[i] for i in stream])
    cols = [r.models.index(m) for m in table.models]
    qb = np.column_stack([qw[:, cols], np.full(len(stream), np.nan)])
    cb = np.column_stack([cw[:, cols], np.full(len(stream), np.nan)])
    E = np.asarray(enc.encode([prompts[i] for i in stream]), dtype=np.float64)
    L = OnlineLearner(table.models, E.shape[1], method=LEARNER, tradeoff=lam, seed=seed)
    rf = Refitter(len(table.models), **{"seed": seed, "tradeoff": lam, **REFIT})
    if REFIT_TABLE:
        E_warm = np.asarray(enc.encode([prompts[i] for i in perm[:n_warm]]), dtype=np.float64)
        rf.set_table(E_warm, Q[perm[:n_warm]])
    out = run_stream(L, E, Q12[stream], C12[stream], qb, cb, tradeoff=lam, add_at=ADD_AT, refitter=rf)
    after = out["picks"][ADD_AT : ADD_AT + 500] == Q12.shape[1] - 1
    shares = [float(after[a : a + NEW_WINDOW].mean()) for a in range(0, len(after), NEW_WINDOW)]
    first = next((i for i, s in enumerate(shares) if s >= 0.5), None)
    return {
        "seed": seed,
        "share_per_100": shares,
        "share_first_500": float(after.mean()),
        "reached_50pct_by": None if first is None else (first + 1) * NEW_WINDOW,
    }


def whatif_run(name: str, trials: int, target_scale: float = 0.5, lam: float | None = None) -> dict:
    """Off-policy check (issue 13 item 6): the learner (warm start from 10%, default settings)
    logs one pass with exact propensities; `llmroute.online.whatif` estimates from that log what
    the warm-start router at lambda * `target_scale` would have had; the truth comes from the
    full table. One trial per seed (stream order and the learner's draws); the warm-start router
    is the same in every trial (seed 0's first 10%)."""
    from llmroute.embed import load_encoder
    from llmroute.eval.runner import EvalEncoder, load_dataset
    from llmroute.online.learner import OnlineLearner
    from llmroute.online.simulate import complete_table, mid_tradeoff
    from llmroute.online.whatif import offpolicy_estimate
    from llmroute.policy import choose
    from llmroute.router import Router

    table = complete_table(load_dataset(DATA / name))
    enc = EvalEncoder(load_encoder("static-minilm"))
    enc.prime(table.prompts)
    Q, C = table.quality_matrix(), table.cost_matrix()
    if lam is None:
        lam = mid_tradeoff(Q, C, *_cv(name, table, enc))
    lam_t = lam * target_scale
    n = table.n_prompts
    perm = np.random.default_rng(0).permutation(n)
    n_warm = round(0.1 * n)
    stream = perm[n_warm:]
    ids, prompts = table.prompt_ids, table.prompts
    r = Router.fit(table.subset([ids[i] for i in perm[:n_warm]]), encoder=enc, seed=0)
    qw, cw = r.estimate([prompts[i] for i in stream])
    cols = [r.models.index(m) for m in table.models]
    qb, cb = qw[:, cols], cw[:, cols]
    E = np.asarray(enc.encode([prompts[i] for i in stream]), dtype=np.float64)
    Qs, Cs = Q[stream], C[stream]
    target = np.asarray(choose(qb, cb, tradeoff=lam_t))
    rows = np.arange(len(stream))
    true = {
        "quality": float(Qs[rows, target].mean()),
        "cost": float(Cs[rows, target].mean()),
        "reward": float((Qs[rows, target] - lam_t * Cs[rows, target]).mean()),
    }
    logging_greedy = np.asarray(choose(qb, cb, tradeoff=lam))
    cover = {e: {k: 0 for k in true} for e in ("ips", "snips", "dr")}
    width, ess, zero_support, t0 = [], [], [], time.time()
    for t in range(trials):
        order = np.random.default_rng(1000 + t).permutation(len(stream))
        L = OnlineLearner(table.models, E.shape[1], method=LEARNER, tradeoff=lam, seed=t, profiled=True)
        chosen = np.empty(len(order), dtype=np.intp)
        prop = np.empty(len(order))
        lp = np.empty((len(order), len(table.models)))
        for j, i in enumerate(order):
            ch = L.choose(E[i], qb[i], cb[i], tradeoff=lam)
            L.update(ch, ch.index, float(Qs[i, ch.index]), float(Cs[i, ch.index]))
            chosen[j], prop[j], lp[j] = ch.index, ch.propensity, ch.propensities
        res = offpolicy_estimate(
            chosen,
            prop,
            Qs[order, chosen],
            Cs[order, chosen],
            target[order],
            qb[order],
            cb[order],
            tradeoff=lam_t,
            logging_probs=lp,
        )
        for e, d in res.estimates.items():
            for k, iv in d.items():
                cover[e][k] += int(iv.covers(true[k]))
        width.append(res.estimates["dr"]["reward"].hi - res.estimates["dr"]["reward"].lo)
        ess.append(res.ess)
        zero_support.append(float((lp[rows, target[order]] <= 0).mean()))
        if t % 10 == 9:
            print(f"whatif {name}: {t + 1} trials, {time.time() - t0:.0f} s, coverage {cover}", flush=True)
    return {
        "set": name,
        "trials": trials,
        "n_logged": len(stream),
        "logging_tradeoff": lam,
        "target_tradeoff": lam_t,
        "target_differs_from_logging_greedy": float((target != logging_greedy).mean()),
        "true": true,
        "coverage": cover,
        "dr_reward_ci_width_median": float(np.median(width)),
        "ess_median": float(np.median(ess)),
        "zero_support_share_median": float(np.median(zero_support)),
        "seconds": time.time() - t0,
    }


def replica_stream(
    base,
    E: np.ndarray,
    Q: np.ndarray,
    C: np.ndarray,
    qb: np.ndarray | None,
    cb: np.ndarray | None,
    lam: float,
    seed: int,
    replicas: int,
    url: str,
    shared: bool = True,
) -> np.ndarray:
    """One pass with the stream spread round-robin over `replicas` learners on the Redis at `url`
    (emptied first): each starts from `base`'s bytes (as gateway replicas start from the shared
    initial snapshot: the same projection), chooses its requests, and every `REPLICA_BATCH` of
    its own requests records their outcomes (`Outcome`, as `Learning._outcome` builds them from a
    trace row) and applies every term recorded since its last pull, its own and the others'
    (`apply_and_pull`, as `Learning.sync`). `shared=False`: each replica under its own alias (the
    control: every replica learns from its own third of the outcomes only). Returns the reward
    per step."""
    from llmroute.gateway.learning import Outcome
    from llmroute.gateway.learning_redis import RedisLearnerState
    from llmroute.online.learner import OnlineLearner

    aliases = [f"bench{r}" if not shared else "bench" for r in range(replicas)]
    data = base.to_bytes()
    learners, states = [], []
    for r in range(replicas):
        L = OnlineLearner.from_bytes(data)
        L.rng = np.random.default_rng([seed, r])  # each process its own draws (Learning: seed + pid)
        learners.append(L)
        st = RedisLearnerState(url)
        states.append(st)
    states[0].st.client.flushdb()
    seqs = [0] * replicas
    todo: list[list] = [[] for _ in range(replicas)]
    index = {m: j for j, m in enumerate(base.models)}
    reward = np.empty(len(E))

    def sync(r: int) -> None:
        _, pulled = states[r].apply_and_pull(todo[r], {aliases[r]: seqs[r]})
        todo[r] = []
        for d in pulled[aliases[r]][1]:
            learners[r].observe(d.x, index[d.model], d.residual, d.cost_residual, weight=d.weight)
            seqs[r] = d.seq

    try:
        for t in range(len(E)):
            r = t % replicas
            L = learners[r]
            x = L.context(E[t])
            q0 = None if qb is None else qb[t]
            c0 = None if cb is None else cb[t]
            ch = L.choose(E[t], q0, c0, tradeoff=lam, context=x)
            k = ch.index
            _, qf, cf = L._pending.pop(ch.decision_id)  # the filled estimates the trace would hold
            xk = x.copy()
            xk[-2] = qf[k] - 0.5
            res, cres = float(Q[t, k] - qf[k]), float(C[t, k] - cf[k])
            todo[r].append(Outcome(aliases[r], f"{seed}-{t}", ch.model, xk, res, cres, "feedback", True))
            reward[t] = Q[t, k] - lam * C[t, k]
            if len(todo[r]) >= REPLICA_BATCH:
                sync(r)
    finally:
        for st in states:
            st.close()
    return reward


def replicas_run(name: str, seeds: list[int], counts: tuple[int, ...] = (1, 3)) -> dict:
    """Acceptance: three replicas on one Redis learn as fast as one process. Per seed (stream
    order), cold start and warm start from 10% (as `simulate`), the last-20% mean reward with the
    stream spread over each replica count (same stream, same starting learner)."""
    from llmroute.embed import load_encoder
    from llmroute.eval.runner import EvalEncoder, load_dataset
    from llmroute.gateway.state import spawn_redis_server
    from llmroute.online.learner import OnlineLearner
    from llmroute.online.simulate import complete_table, mid_tradeoff
    from llmroute.router import Router

    table = complete_table(load_dataset(DATA / name))
    enc = EvalEncoder(load_encoder("static-minilm"))
    enc.prime(table.prompts)
    Q, C = table.quality_matrix(), table.cost_matrix()
    lam = mid_tradeoff(Q, C, *_cv(name, table, enc))
    n = table.n_prompts
    ids, prompts = table.prompt_ids, table.prompts
    E_all = np.asarray(enc.encode(prompts), dtype=np.float64)
    with socket.socket() as sock:  # a free port for the throwaway redis-server
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    folder = tempfile.mkdtemp(prefix="llmroute-bench-redis-")
    proc = spawn_redis_server(port, folder)
    url = f"redis://127.0.0.1:{port}/0"
    out: dict = {"set": name, "n_prompts": n, "tradeoff": lam, "batch": REPLICA_BATCH, "counts": list(counts)}
    t_all = time.time()
    try:
        for label, warm in (("cold", 0.0), ("warm10", 0.1)):
            runs = []
            for seed in seeds:
                perm = np.random.default_rng(seed).permutation(n)
                n_warm = round(warm * n)
                stream = perm[n_warm:]
                qb = cb = None
                if n_warm:
                    r = Router.fit(table.subset([ids[i] for i in perm[:n_warm]]), encoder=enc, seed=seed)
                    qw, cw = r.estimate([prompts[i] for i in stream])
                    cols = [r.models.index(m) for m in table.models]
                    qb, cb = qw[:, cols], cw[:, cols]
                base = OnlineLearner(
                    table.models, E_all.shape[1], method=LEARNER, tradeoff=lam, seed=seed, profiled=n_warm > 0
                )
                last = len(stream) - len(stream) // 5
                row: dict = {"seed": seed}
                for cnt, shared in [(c, True) for c in counts] + [(max(counts), False)]:
                    t0 = time.time()
                    rew = replica_stream(
                        base, E_all[stream], Q[stream], C[stream], qb, cb, lam, seed, cnt, url, shared
                    )
                    key = str(cnt) if shared else f"{cnt}_unshared"
                    row[f"last20_{key}"] = float(rew[last:].mean())
                    row[f"mean_{key}"] = float(rew.mean())
                    row[f"seconds_{key}"] = time.time() - t0
                runs.append(row)
                print(f"replicas {name} {label} seed {seed}: {json.dumps(row)}", flush=True)
            out[label] = runs
    finally:
        proc.terminate()
        proc.wait(30)
    out["seconds"] = time.time() - t_all
    return out


def run_set(
    name: str,
    seeds: list[int],
    new_model: bool,
    starts: tuple[str, ...] = ("cold", "warm10"),
    configs: tuple[str, ...] = tuple(CONFIGS),
) -> dict:
    from llmroute.embed import load_encoder
    from llmroute.eval.runner import EvalEncoder, load_dataset
    from llmroute.online.simulate import complete_table, simulate

    table = complete_table(load_dataset(DATA / name))
    enc = EvalEncoder(load_encoder("static-minilm"))
    enc.prime(table.prompts)
    cv = _cv(name, table, enc)
    out: dict = {"set": name, "n_prompts": table.n_prompts, "models": table.models, "learner": LEARNER}
    for label, warm in (("cold", 0.0), ("warm10", 0.1)):
        if label not in starts:
            continue
        out[label] = {}
        for cname, params in CONFIGS.items():
            if cname not in configs:
                continue
            t0 = time.time()
            res = simulate(
                table,
                learner=LEARNER,
                warm_start=warm,
                seeds=seeds,
                encoder=enc,
                cv=cv,
                learner_params=params,
                refit=REFIT,
                refit_table=REFIT_TABLE,
                explore_decay=EXPLORE_DECAY if label == "warm10" else 0.0,
            )
            res["seconds"] = time.time() - t0
            out[label][cname] = res
            out["tradeoff"] = res["tradeoff"]
            print(f"{name} {label} {cname}: {json.dumps(res['summary'])}", flush=True)
    if new_model:
        out["new_model"] = [new_model_run(table, enc, out["tradeoff"], s) for s in seeds]
        print(f"{name} new model: {out['new_model']}", flush=True)
    return out


def _f(x: float | None, d: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def _mr(a: dict, d: int = 4) -> str:
    return f"{_f(a['mean'], d)} ({_f(a['min'], d)} to {_f(a['max'], d)})" if a["n"] else "n/a"


def drift_run(names: list[str], seeds: list[int], n0: float) -> dict:
    """`explore_decay` under drift (`--drift N0`): warm start 10% as in `run_set` (the same refit),
    and at the stream's midpoint the cheapest model silently becomes as good as the best model
    on every prompt (only exploration or the refit can find that out); each seed runs without
    decay and with `explore_decay` = n0. Per run: last-20% reward, mean reward after the change,
    the improved model's share of the last 200-request window."""
    from llmroute.embed import load_encoder
    from llmroute.eval.runner import EvalEncoder, load_dataset
    from llmroute.online import OnlineLearner
    from llmroute.online.refit import Refitter
    from llmroute.online.simulate import complete_table, mid_tradeoff, run_stream
    from llmroute.router import Router

    out: dict = {"n0": n0, "sets": {}}
    for name in names:
        table = complete_table(load_dataset(DATA / name))
        enc = EvalEncoder(load_encoder("static-minilm"))
        enc.prime(table.prompts)
        q_cv, c_cv = _cv(name, table, enc)
        Q, C = table.quality_matrix(), table.cost_matrix()
        lam = mid_tradeoff(Q, C, q_cv, c_cv)
        E = np.asarray(enc.encode(table.prompts), dtype=np.float64)
        models, ids, n = table.models, table.prompt_ids, table.n_prompts
        cheap = int(np.argmin(C.mean(axis=0)))
        runs: dict[str, list[dict]] = {"0": [], f"{n0:g}": []}
        for seed in seeds:
            perm = np.random.default_rng(seed).permutation(n)
            n_warm = round(0.1 * n)
            stream = perm[n_warm:]
            r = Router.fit(
                table.subset([ids[i] for i in perm[:n_warm]]), estimator="default", encoder=enc, seed=seed
            )
            qw, cw = r.estimate([table.prompts[i] for i in stream])
            cols = [r.models.index(mm) for mm in models]
            Qs, half = Q[stream].copy(), len(stream) // 2
            Qs[half:, cheap] = Qs[half:].max(axis=1)
            for key, decay in (("0", 0.0), (f"{n0:g}", n0)):
                L = OnlineLearner(
                    models, E.shape[1], tradeoff=lam, seed=seed, profiled=True, explore_decay=decay
                )
                rf = Refitter(len(models), **{"seed": seed, "estimator": "default", "tradeoff": lam, **REFIT})
                res = run_stream(
                    L, E[stream], Qs, C[stream], qw[:, cols], cw[:, cols], tradeoff=lam, refitter=rf
                )
                last = len(stream) - len(stream) // 5
                runs[key].append(
                    {
                        "seed": seed,
                        "last20": float(res["reward"][last:].mean()),
                        "after_change": float(res["reward"][half:].mean()),
                        "improved_share_last_200": float((res["picks"][-200:] == cheap).mean()),
                    }
                )
                print(f"drift {name} seed {seed} decay {key}: {json.dumps(runs[key][-1])}", flush=True)
        out["sets"][name] = {"tradeoff": lam, "improved_model": models[cheap], "runs": runs}
    return out


def drift_markdown(d: dict) -> str:
    """The drift paragraph of the Online section (why `explore_decay` is not the default)."""
    n0 = f"{d['n0']:g}"
    parts = []
    for name, r in d["sets"].items():

        def mean(key: str, field: str, r: dict = r) -> float:
            return float(np.mean([x[field] for x in r["runs"][key]]))

        parts.append(
            f"{name} ({r['improved_model']} improves): last 20% {mean('0', 'last20'):.4f} without decay, "
            f"{mean(n0, 'last20'):.4f} with; after the change {mean('0', 'after_change'):.4f} / "
            f"{mean(n0, 'after_change'):.4f}; its share of the last 200 requests {mean('0', 'improved_share_last_200'):.2f} / "
            f"{mean(n0, 'improved_share_last_200'):.2f}"
        )
    return (
        f"Drift (`benchmarks/online.py --drift {n0}`, warm start 10%, the same refit, "
        f"{len(next(iter(d['sets'].values()))['runs']['0'])} seeds, means): at the stream's midpoint the cheapest "
        "model silently becomes as good as the best on every prompt; learner without exploration decay vs "
        f"`explore_decay` {n0}: " + "; ".join(parts) + ". Decayed exploration finds the improvement later "
        "(or not within the pass), which is why `explore_decay` stays opt-in."
    )


def write_markdown(results: list[dict]) -> None:
    from _md import md_table, update_section

    rows = []
    for res in results:
        for label, cname in ((lb, cn) for lb in ("cold", "warm10") for cn in CONFIGS):
            s = res[label][cname]["summary"]
            rows.append(
                [
                    res["set"],
                    ("cold start" if label == "cold" else "warm start 10%") + f", {cname}",
                    f"{res['tradeoff']:.3g}",
                    _mr(s["last20_learner"]),
                    _mr(s["last20_cv"]),
                    _mr(s["last20_minus_cv"]),
                    _mr(s["last20_warm"]) if label == "warm10" else "",
                    _mr(s["worst_window_vs_warm"]) if label == "warm10" else "",
                    _mr(s["regret_exponent_cv"], 2),
                    _mr(s["regret_exponent_oracle"], 2),
                    _mr(s["explored_share"], 3),
                ]
            )
    runs = [r for res in results for k in ("cold", "warm10") for c in CONFIGS for r in res[k][c]["runs"]]
    upd = [r["update_us_p50"] for r in runs]
    upd99 = [r["update_us_p99"] for r in runs]
    nm = [r for res in results for r in res.get("new_model", [])]
    seeds = len(results[0]["cold"]["default"]["runs"]) if results else 0
    md = (
        f"`benchmarks/online.py`: learner `{LEARNER}` (`llmroute.online.OnlineLearner`; default settings: "
        "max_explore 0.2, confidence 1 sd, conservative exploration explore_loss 0.002 (with a warm "
        "start: at most 0.002 expected reward per request given up on models rated below the greedy "
        "choice), 32 projected embedding columns + bias; explore0.05: "
        "max_explore 0.05), with the refit of the default estimator on the logged outcomes in every run "
        "(`llmroute.online.refit.Refitter` defaults: after 100 outcomes, then each time they grew 1.5-fold; "
        "embedding only; unobserved cells imputed from the warm-start router, or missing in a cold start; "
        "a refit replaces the warm-start router only when an IPS estimate of its decisions' gain on 20% "
        "held-out logged rows exceeds 2 standard errors, later refits replace the previous one; the learner "
        "then restarts its residual posterior on the refit's estimates), "
        f"{seeds} seeds (stream orders), one pass over the prompts that have every model's outcome, "
        "reward = quality - lambda * cost with lambda at the middle of the single-model cost range. "
        "cv = the offline 5-fold cross-validated default router (full information) on the same prompts. "
        "Mean (min to max) over seeds. Regret exponent: slope of log cumulative regret on log t over "
        "the second half (< 1 sub-linear; n/a where the regret there is not positive, i.e. the learner is "
        "ahead). Worst window: the lowest (learner - warm-start router) mean reward over windows of 500 "
        "requests (a tenth of the stream where that is shorter: 283 on routerbench_subset) (bar >= -0.01).\n\n"
        + md_table(
            [
                "set",
                "start",
                "lambda",
                "last 20% learner",
                "last 20% cv",
                "learner - cv",
                "last 20% warm-start router",
                "worst window vs warm",
                "regret exp. vs cv",
                "regret exp. vs oracle",
                "explored share",
            ],
            rows,
        )
        + f"\n\nUpdate cost per outcome (`OnlineLearner.update`, rank-1): p50 {np.median(upd):.1f} us, "
        f"p99 (median over runs) {np.median(upd99):.1f} us (bar <= 50 us)."
    )
    verdict = []
    for res in results:
        for cname in CONFIGS:
            cold, warm = res["cold"][cname]["runs"], res["warm10"][cname]["runs"]

            def ok(runs: list, passes) -> str:  # type: ignore[no-untyped-def]
                k = sum(bool(passes(r)) for r in runs)
                return f"{'met' if k == len(runs) else 'NOT met'} ({k} of {len(runs)} seeds)"

            verdict.append(
                f"{res['set']} {cname}: cold last 20% >= cv "
                + ok(cold, lambda r: r["last20"]["learner"] >= r["last20"]["cv"])
                + ", warm last 20% >= cv "
                + ok(warm, lambda r: r["last20"]["learner"] >= r["last20"]["cv"])
                + ", warm windows >= -0.01 "
                + ok(warm, lambda r: r["worst_window_vs_warm"] >= -0.01)
            )
    md += (
        "\n\nAcceptance (every seed): "
        + "; ".join(verdict)
        + ". With a warm start the refit's check kept the warm-start router (embedding-only refits on "
        "bandit rows, mostly the router's own picks, were not shown better than it), so the learner's "
        "greedy choice still rarely leaves the warm-start router's within one pass (it needs to be ahead "
        "by 1 sd): its last 20% stays near the warm-start router's and below the full-information cv "
        "router; the exploration budget keeps the loss per window small, but a 283- or 500-request window "
        "with a few dozen explored requests still swings by about 0.01 from the explored outcomes' noise "
        "alone. A cold start gains most from the refit (the learner's base becomes the default estimator "
        "fitted on its outcomes instead of a 33-column linear residual per model, and conservative "
        "exploration applies on top of it) but stays below the cv router, which saw every model's outcome "
        "on 80% of the prompts: about as far below it as the best single model always chosen (-0.0165 on "
        "routerbench_subset, -0.0096 on routellm, mean over the 5 seeds' last 20%)."
    )
    if nm:
        reached = [r["reached_50pct_by"] for r in nm]
        md += (
            f"\n\nNew model (routerbench_subset, warm start 10%): a 12th model better and cheaper than all "
            f"others (per prompt the best quality of the 11, half the cheapest cost) added with no profile "
            f"after {ADD_AT} requests reaches >= 50% of the picks of a {NEW_WINDOW}-request window after "
            + ", ".join("never (in 500)" if r is None else f"{r}" for r in reached)
            + " requests (per seed; bar <= 500); share of its first 500 requests: "
            + ", ".join(f"{r['share_first_500']:.2f}" for r in nm)
            + "."
        )
    if WHATIF.exists():
        md += "\n\n" + whatif_markdown(json.loads(WHATIF.read_text()))
    if REPLICAS.exists():
        md += "\n\n" + replicas_markdown(json.loads(REPLICAS.read_text()))
    if DRIFT.exists():
        md += "\n\n" + drift_markdown(json.loads(DRIFT.read_text()))
    update_section("online", md, title="Online learning (bandit feedback)")


def replicas_markdown(r: dict) -> str:
    """The replicas paragraph of the Online section (issue 13: three gateway processes on one Redis
    learn as fast as one process: final reward within the seeds' spread)."""
    parts, verdicts = [], []
    for label, title in (("cold", "cold start"), ("warm10", "warm start 10%")):
        runs = r.get(label) or []
        if not runs:
            continue
        one = np.array([x["last20_1"] for x in runs])
        three = np.array([x["last20_3"] for x in runs])
        alone = np.array([x["last20_3_unshared"] for x in runs])
        diff = three - one
        spread = float(one.std(ddof=1)) if len(one) > 1 else float("nan")
        ok = abs(float(diff.mean())) <= spread
        verdicts.append(f"{title} {'met' if ok else 'NOT met'}")
        parts.append(
            f"{title}: 1 replica {one.mean():.4f} ({one.min():.4f} to {one.max():.4f}), 3 replicas "
            f"{three.mean():.4f} ({three.min():.4f} to {three.max():.4f}); 3 - 1 per seed mean "
            f"{diff.mean():+.4f} ({diff.min():+.4f} to {diff.max():+.4f}) against the seeds' sd {spread:.4f} "
            f"(control, 3 replicas not sharing: {alone.mean():.4f}, {(alone - one).mean():+.4f})"
        )
    return (
        f"Replicas on one Redis (`benchmarks/online.py --replicas`, {r['set']}, {len(r.get('cold', []))} seeds, "
        f"lambda {r['tradeoff']:.3g}, learner `{LEARNER}` default settings): the stream spread round-robin "
        f"over 3 learner replicas whose state is `RedisLearnerState` on one redis-server (each records its "
        f"outcomes and pulls every replica's in batches of {r['batch']} of its own requests, so it sees the "
        f"others' outcomes up to {3 * r['batch']} requests late), against the same loop with 1 replica; "
        f"the replicas run in one Python process, one connection each (three `llmroute serve` processes on "
        f"one Redis are tested in tests/test_learner_state.py). Last-20% mean reward, mean (min to max) over "
        f"seeds: "
        + "; ".join(parts)
        + ". Acceptance (|mean 3 - 1| <= the seeds' sd): "
        + ", ".join(verdicts)
        + f". {r['seconds']:.0f} s in all."
    )


def whatif_markdown(w: dict) -> str:
    """The what-if line of the Online section."""
    cov = w["coverage"]
    return (
        f"What-if (`llmroute.online.whatif`, {w['set']}, `benchmarks/online.py --whatif`): the learner "
        f"(warm start 10%, default settings, lambda {w['logging_tradeoff']:.3g}) logs one pass of "
        f"{w['n_logged']} requests with exact propensities; from each log the warm-start router at lambda "
        f"{w['target_tradeoff']:.3g} (a different pick on {w['target_differs_from_logging_greedy']:.1%} "
        f"of the requests) is estimated and compared with its true values from the full table "
        f"(reward {w['true']['reward']:.4f}, quality {w['true']['quality']:.4f}, cost "
        f"${w['true']['cost']:.5f}). True value inside the 95% interval in {w['trials']} trials (seeds): "
        + "; ".join(f"{e} " + ", ".join(f"{k} {h}" for k, h in d.items()) for e, d in cov.items())
        + ". Bar (true reward inside the interval in >= 90%): "
        + ", ".join(f"{e} {'met' if d['reward'] >= 0.9 * w['trials'] else 'NOT met'}" for e, d in cov.items())
        + f" (dr is `llmroute whatif`'s default). Median dr reward interval width "
        f"{w['dr_reward_ci_width_median']:.4f}, effective sample size {w['ess_median']:.0f}, share of "
        f"requests where the target's pick had logging probability 0: {w['zero_support_share_median']:.3f}."
    )


def _compact(x):
    """Floats to 5 decimals, regret series thinned to <= 50 points (a small JSON), and data paths
    relative to the project root (no machine-specific paths in committed results)."""
    if isinstance(x, str) and x.startswith(str(ROOT.parent) + "/"):
        return os.path.relpath(x, ROOT)
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, list):
        return [_compact(v) for v in x]
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if k in ("regret_t", "regret_cv", "regret_oracle") and isinstance(v, list) and len(v) > 50:
                v = v[:: -(-len(v) // 50)]
            out[k] = _compact(v)
        return out
    return x


def main() -> None:
    global REFIT_TABLE, EXPLORE_DECAY
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sets", default="routerbench_subset,routellm")
    ap.add_argument("--no-write", action="store_true", help="print only; leave JSON and BENCHMARKS.md")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite BENCHMARKS.md from the JSON")
    ap.add_argument(
        "--whatif",
        type=int,
        metavar="TRIALS",
        help="only the off-policy check (TRIALS logs, routerbench_subset, lambda from online.json): "
        "writes results/online_whatif.json and the Online section",
    )
    ap.add_argument("--whatif-scale", type=float, default=0.5, help="target lambda = this * logging lambda")
    ap.add_argument(
        "--replicas",
        action="store_true",
        help="only the replicas check (3 learner replicas on one Redis vs 1, routerbench_subset, --seeds): "
        "writes results/online_replicas.json and the Online section",
    )
    ap.add_argument(
        "--drift",
        type=float,
        metavar="N0",
        help="only the drift check of explore_decay N0 (both sets, --seeds): writes results/online_drift.json "
        "and the Online section",
    )
    ap.add_argument("--starts", default="cold,warm10", help="which starts to run (cold, warm10)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="which learner configs to run")
    ap.add_argument("--no-new-model", action="store_true", help="skip the new-model check")
    ap.add_argument(
        "--refit-table",
        choices=("on", "off"),
        help="whether warm-start refits also train on the warm-start router's table (default: "
        + ("on" if REFIT_TABLE else "off")
        + ")",
    )
    ap.add_argument(
        "--explore-decay",
        type=float,
        help="warm starts: exploration times min(1, sqrt(N0 / outcomes learned)) (default: "
        f"{EXPLORE_DECAY:g}, 0 = off)",
    )
    args = ap.parse_args()
    if args.explore_decay is not None:
        EXPLORE_DECAY = args.explore_decay
    if args.refit_table is not None:
        REFIT_TABLE = args.refit_table == "on"
    partial = args.starts != "cold,warm10" or args.configs != ",".join(CONFIGS) or args.no_new_model
    if partial and not args.no_write:
        sys.exit("--starts / --configs / --no-new-model run a part of the benchmark: add --no-write")
    if args.drift is not None:
        d = drift_run(args.sets.split(","), list(range(args.seeds)), args.drift)
        print(drift_markdown(d), flush=True)
        if not args.no_write:
            DRIFT.write_text(json.dumps(_compact(d)) + "\n")
            if RESULTS.exists():
                write_markdown(json.loads(RESULTS.read_text()))
        return
    if args.replicas:
        rep = replicas_run("routerbench_subset", list(range(args.seeds)))
        print(json.dumps(replicas_markdown(rep)), flush=True)
        if not args.no_write:
            REPLICAS.write_text(json.dumps(_compact(rep)) + "\n")
            if RESULTS.exists():
                write_markdown(json.loads(RESULTS.read_text()))
        return
    if args.whatif:
        prev = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        lam = next((r["tradeoff"] for r in prev if r["set"] == "routerbench_subset"), None)
        w = whatif_run("routerbench_subset", args.whatif, args.whatif_scale, lam)
        print(json.dumps(w), flush=True)
        if not args.no_write:
            WHATIF.write_text(json.dumps(_compact(w)) + "\n")
            if prev:
                write_markdown(prev)
        return
    if args.markdown_only:
        write_markdown(json.loads(RESULTS.read_text()))
        return
    results = []
    for name in args.sets.split(","):
        if not (DATA / name).is_dir():
            sys.exit(f"{DATA / name} not found: the benchmark needs the shared routing data")
        results.append(
            run_set(
                name,
                list(range(args.seeds)),
                new_model=name == "routerbench_subset" and not args.no_new_model,
                starts=tuple(args.starts.split(",")),
                configs=tuple(args.configs.split(",")),
            )
        )
    if not args.no_write:
        for res in results:  # keep the JSON small: drop per-step series beyond the summaries
            for k in ("cold", "warm10"):
                for c in CONFIGS:
                    for r in res[k][c]["runs"]:
                        r.pop("window_pick_shares", None)
        RESULTS.write_text(json.dumps(_compact(results)) + "\n")
        write_markdown(results)


if __name__ == "__main__":
    main()
