"""Replay a routing table as a bandit stream (`llmroute simulate`).

The table's prompts arrive in a random order (one order per seed); for each one the learner
picks a model and sees only that model's outcome (quality and cost), then learns from it.
Baselines on the same stream, from the full table (full information):

- *cv*: the cross-validated offline router (`folds`-fold, each prompt estimated by a router
  that never saw it), deciding by argmax q - lambda * c;
- *oracle*: the true best q - lambda * c per prompt;
- *warm*: with `warm_start` = f > 0, the router trained on the first f of the (shuffled) prompts
  with every model's outcome; the learner corrects it on the remaining stream.

With `refit` (`llmroute simulate` by default) a `llmroute.online.refit.Refitter` refits the
baseline estimator on the logged outcomes during the stream, and its fits become the learner's
base estimates (a warm-start router is replaced only by a fit shown better). With
`refit_table` and a warm start, the refitter also gets the warm-start router's training rows
(`Refitter.set_table`: the first f of the prompts with every model's outcome), so that each
refit is that router's estimator retrained on its table plus the logged outcomes.

Reward = quality - lambda * cost. Without `tradeoff` lambda is the middle of the single-model
cost range: the trade-off at which the cv router's mean cost is nearest to the midpoint between
the cheapest and dearest model's mean cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmroute.online.learner import OnlineLearner
from llmroute.online.refit import Refitter

__all__ = ["complete_table", "mid_tradeoff", "regret_exponent", "run_stream", "simulate", "write_outputs"]


def complete_table(table: Any) -> Any:
    """The table restricted to prompts with a quality and a cost for every model."""
    from llmroute.data.table import RoutingTable

    Q, C = table.quality_matrix(), table.cost_matrix()
    ok = np.isfinite(Q).all(axis=1) & np.isfinite(C).all(axis=1)
    if ok.all():
        return table
    ids = [p for p, keep in zip(table.prompt_ids, ok, strict=True) if keep]
    if not ids:
        raise ValueError(f"{table.source}: no prompt has a quality and a cost for every model")
    sub = table.subset(ids)
    return RoutingTable(sub.df, source=table.source, prices=table.prices)


def _choose(q: np.ndarray, c: np.ndarray, lam: float) -> np.ndarray:
    from llmroute.policy import choose

    return np.asarray(choose(q, c, tradeoff=lam))


def mid_tradeoff(Q: np.ndarray, C: np.ndarray, q_hat: np.ndarray, c_hat: np.ndarray) -> float:
    """Lambda whose decisions (argmax q_hat - lambda c_hat) have a mean true cost nearest the
    middle of the single-model mean cost range."""
    from llmroute.policy import tradeoff_grid

    means = C.mean(axis=0)
    target = 0.5 * (means.min() + means.max())
    lams = tradeoff_grid(float(np.median(C)), n=200)[1:-1]
    rows = np.arange(len(Q))
    costs = np.array([C[rows, _choose(q_hat, c_hat, lam)].mean() for lam in lams])
    return float(lams[int(np.argmin(np.abs(costs - target)))])


def cv_estimates(
    table: Any, encoder: Any, estimator: str = "default", folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (q, c) of routers fitted by `Router.fit` (full information)."""
    from llmroute.eval.cv import kfold_indices
    from llmroute.router import Router

    ids, prompts = table.prompt_ids, table.prompts
    q = np.full((table.n_prompts, table.n_models), np.nan)
    c = np.full_like(q, np.nan)
    for test in kfold_indices(table.n_prompts, folds, seed):
        train = np.setdiff1d(np.arange(table.n_prompts), test)
        r = Router.fit(table.subset([ids[i] for i in train]), estimator=estimator, encoder=encoder, seed=seed)
        qt, ct = r.estimate([prompts[i] for i in test])
        cols = [r.models.index(m) for m in table.models]
        q[test], c[test] = qt[:, cols], ct[:, cols]
    return q, c


def run_stream(
    learner: OnlineLearner,
    E: np.ndarray,
    Q: np.ndarray,
    C: np.ndarray,
    q_base: np.ndarray | None,
    c_base: np.ndarray | None,
    *,
    tradeoff: float,
    add_at: int | None = None,
    on_step: Callable[[int], None] | None = None,
    refitter: Refitter | None = None,
    explore_decay: float = 0.0,
) -> dict[str, np.ndarray]:
    """Feed the rows of (E, Q, C) to `learner` in order, revealing only the chosen model's outcome.

    Columns of Q, C, q_base, c_base follow `learner.models` plus, when `add_at` is given, one last
    column: a model the learner does not know until step `add_at` (then added with no profile).
    `refitter`: every outcome is also logged there and, when it is due, refitted inline between
    two requests; from then on its predictions are the base qualities given to the learner (whose
    residuals restart: `OnlineLearner.rebase`). Returns per step: reward, chosen column,
    propensity, explored (bool), update seconds (the refits are not part of them: `refit_s` is
    their total).

    `explore_decay` = n0 > 0: the learner's `explore_decay` for this stream (exploration decays as
    evidence accumulates, `OnlineLearner`'s option; its own setting is restored after the stream;
    0: the learner's own setting).
    """
    if explore_decay < 0:
        raise ValueError(f"explore_decay must be >= 0, got {explore_decay}")
    decay0 = learner.explore_decay
    if explore_decay > 0:
        learner.explore_decay = float(explore_decay)
    n = len(E)
    m_all = Q.shape[1]
    new_name = f"model-{m_all - 1}" if add_at is not None else None
    picks = np.empty(n, dtype=np.intp)
    reward = np.empty(n)
    prop = np.empty(n)
    explored = np.zeros(n, dtype=bool)
    upd = np.empty(n)
    refit_s = 0.0
    ref_q, ref_at = np.zeros((0, 0)), 0  # the current refit's predictions for rows ref_at...
    for t in range(n):
        if add_at is not None and t == add_at:
            learner.add_model(new_name or "new", profiled=False)
            if refitter is not None:
                refitter.add_model()
        m = len(learner.models)
        qb = None if q_base is None else q_base[t, :m].copy()
        cb = None if c_base is None else c_base[t, :m].copy()
        if add_at is not None and t >= add_at and qb is not None and cb is not None:
            qb[-1], cb[-1] = np.nan, np.nan  # no profile: the learner's optimistic fill
        outside = qb  # the offline router's estimates (None: a cold start)
        if refitter is not None and refitter.current is not None:
            if t - ref_at >= len(ref_q):  # the fit is fixed until the next: predict rows in blocks
                ref_q, ref_at = refitter.current.predict(E[t : t + 256]), t
            qb = ref_q[t - ref_at].copy()
        ch = learner.choose(E[t], qb, cb, tradeoff=tradeoff)
        k = ch.index
        t0 = time.perf_counter()
        learner.update(ch, k, float(Q[t, k]), float(C[t, k]))
        upd[t] = time.perf_counter() - t0
        if refitter is not None:
            refitter.log(
                E[t],
                k,
                float(Q[t, k]),
                cost=float(C[t, k]),
                propensity=ch.propensity,
                base=outside,
                cost_estimates=ch.c,
            )
            if refitter.due():
                t1 = time.perf_counter()
                if refitter.refit() is not None:  # a better fit: the learner's new base
                    learner.rebase(profiled=True)
                    ref_q = np.zeros((0, 0))
                refit_s += time.perf_counter() - t1
        picks[t], prop[t], explored[t] = k, ch.propensity, ch.explored
        reward[t] = Q[t, k] - tradeoff * C[t, k]
        if on_step is not None:
            on_step(t)
    learner.explore_decay = decay0
    return {
        "reward": reward,
        "picks": picks,
        "propensity": prop,
        "explored": explored,
        "update_s": upd,
        "refit_s": np.array(refit_s),
    }


def regret_exponent(cum_regret: np.ndarray) -> float | None:
    """Slope of log(cumulative regret) against log(t) over the second half of the stream
    (< 1: sub-linear); None when the regret there is not positive throughout."""
    n = len(cum_regret)
    t = np.arange(1, n + 1)
    sl = slice(n // 2, n)
    r = cum_regret[sl]
    if n < 20 or (r <= 0).any():
        return None
    return float(np.polyfit(np.log(t[sl]), np.log(r), 1)[0])


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    k = len(x) // w
    return x[: k * w].reshape(k, w).mean(axis=1) if k else np.array([x.mean()])


def simulate(
    table: Any,
    *,
    learner: str = "thompson",
    tradeoff: float | None = None,
    warm_start: float = 0.0,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    encoder: Any = "static-minilm",
    baseline: str = "default",
    folds: int = 5,
    window: int | None = None,
    learner_params: dict[str, Any] | None = None,
    cv: tuple[np.ndarray, np.ndarray] | None = None,
    log: Callable[[str], None] | None = None,
    refit: dict[str, Any] | None = None,
    refit_table: bool = False,
    explore_decay: float = 0.0,
) -> dict[str, Any]:
    """Run the replay for each seed; returns a JSON-friendly result (see the module docstring).

    `refit`: settings of a `llmroute.online.refit.Refitter` (`{}`: its defaults) that refits the
    baseline estimator on the logged outcomes during the stream (None: no refit).
    `refit_table`: with a warm start, the refits also train on the warm-start router's table.
    `explore_decay`: see `run_stream` (0: off).

    `cv`: precomputed out-of-fold (q, c) of the baseline router for `table`'s prompts (saves
    the cross-validation when several learners replay the same table).
    """
    from llmroute.eval.runner import EvalEncoder, _resolve_encoder
    from llmroute.router import Router

    if not 0.0 <= warm_start < 1.0:
        raise ValueError(f"--warm-start must be in [0, 1), got {warm_start}")
    say = log or (lambda s: None)
    table = complete_table(table)
    models, prompts, ids = table.models, table.prompts, table.prompt_ids
    Q, C = table.quality_matrix(), table.cost_matrix()
    n = table.n_prompts
    enc = _resolve_encoder(encoder)
    if not isinstance(enc, EvalEncoder):
        enc = EvalEncoder(enc)
    enc.prime(prompts)
    E = np.asarray(enc.encode(prompts), dtype=np.float64)
    if cv is None:
        say(f"cross-validating the {baseline} router ({folds} folds, {n} prompts)")
        cv = cv_estimates(table, enc, baseline, folds)
    q_cv, c_cv = cv
    lam = mid_tradeoff(Q, C, q_cv, c_cv) if tradeoff is None else float(tradeoff)
    rows = np.arange(n)
    r_cv_all = Q[rows, _choose(q_cv, c_cv, lam)] - lam * C[rows, _choose(q_cv, c_cv, lam)]
    r_or_all = (Q - lam * C).max(axis=1)
    runs = []
    for seed in seeds:
        t0 = time.time()
        perm = np.random.default_rng(seed).permutation(n)
        n_warm = round(warm_start * n)
        stream = perm[n_warm:]
        qb = cb = None
        r_warm = None
        if n_warm > 0:
            r = Router.fit(
                table.subset([ids[i] for i in perm[:n_warm]]), estimator=baseline, encoder=enc, seed=seed
            )
            qw, cw = r.estimate([prompts[i] for i in stream])
            cols = [r.models.index(mm) for mm in models]
            qb, cb = qw[:, cols], cw[:, cols]
            pw = _choose(qb, cb, lam)
            r_warm = Q[stream, pw] - lam * C[stream, pw]
        params = dict(learner_params or {})
        if learner == "greedy":
            params["method"] = "greedy"
        else:
            params["method"] = learner
        L = OnlineLearner(models, E.shape[1], tradeoff=lam, seed=seed, profiled=n_warm > 0, **params)
        rf = (
            None
            if refit is None
            else Refitter(len(models), **{"seed": seed, "estimator": baseline, "tradeoff": lam, **refit})
        )
        if rf is not None and refit_table and n_warm > 0:
            rf.set_table(E[perm[:n_warm]], Q[perm[:n_warm]])
        out = run_stream(
            L, E[stream], Q[stream], C[stream], qb, cb, tradeoff=lam, refitter=rf, explore_decay=explore_decay
        )
        runs.append(
            _summarise_run(
                seed, out, r_cv_all[stream], r_or_all[stream], r_warm, len(models), window, time.time() - t0
            )
        )
        say(
            f"seed {seed}: last-20% reward {runs[-1]['last20']['learner']:.4f} "
            f"(cv {runs[-1]['last20']['cv']:.4f}), {time.time() - t0:.1f} s"
        )
    return {
        "source": table.source,
        "models": models,
        "n_prompts": n,
        "learner": learner,
        "learner_params": learner_params or {},
        "refit": refit,
        "refit_table": bool(refit_table),
        "explore_decay": float(explore_decay),
        "tradeoff": lam,
        "tradeoff_rule": "given" if tradeoff is not None else "middle of the single-model cost range",
        "warm_start": warm_start,
        "baseline": baseline,
        "folds": folds,
        "seeds": list(seeds),
        "runs": runs,
        "summary": summarise(runs),
    }


def _summarise_run(
    seed: int,
    out: dict[str, np.ndarray],
    r_cv: np.ndarray,
    r_or: np.ndarray,
    r_warm: np.ndarray | None,
    n_models: int,
    window: int | None,
    seconds: float,
) -> dict[str, Any]:
    r = out["reward"]
    n = len(r)
    w = window or max(1, min(500, n // 10))
    tail = slice(n - max(1, n // 5), n)
    cum_cv, cum_or = np.cumsum(r_cv - r), np.cumsum(r_or - r)
    stride = max(1, n // 200)
    res: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "window": w,
        "seconds": seconds,
        "last20": {
            "learner": float(r[tail].mean()),
            "cv": float(r_cv[tail].mean()),
            "oracle": float(r_or[tail].mean()),
            "warm": None if r_warm is None else float(r_warm[tail].mean()),
        },
        "mean_reward": float(r.mean()),
        "windows": {
            "learner": _windows(r, w).tolist(),
            "cv": _windows(r_cv, w).tolist(),
            "oracle": _windows(r_or, w).tolist(),
            "warm": None if r_warm is None else _windows(r_warm, w).tolist(),
        },
        "worst_window_vs_warm": None
        if r_warm is None
        else float((_windows(r, w) - _windows(r_warm, w)).min()),
        "regret_t": np.arange(stride, n + 1, stride).tolist(),
        "regret_cv": cum_cv[stride - 1 :: stride].tolist(),
        "regret_oracle": cum_or[stride - 1 :: stride].tolist(),
        "regret_exponent_cv": regret_exponent(cum_cv),
        "regret_exponent_oracle": regret_exponent(cum_or),
        "pick_shares": (np.bincount(out["picks"], minlength=n_models) / n).tolist(),
        "window_pick_shares": [
            (np.bincount(out["picks"][a : a + w], minlength=n_models) / len(out["picks"][a : a + w])).tolist()
            for a in range(0, n - w + 1, w)
        ],
        "explored_share": float(out["explored"].mean()),
        "update_us_p50": float(np.median(out["update_s"]) * 1e6),
        "update_us_p99": float(np.quantile(out["update_s"], 0.99) * 1e6),
        "refit_seconds": float(out["refit_s"]),
    }
    return res


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means (and ranges) over seeds of the headline numbers."""

    def agg(vals: list[float | None]) -> dict[str, float | None]:
        v = [x for x in vals if x is not None and math.isfinite(x)]
        if not v:
            return {"mean": None, "min": None, "max": None, "n": 0}
        return {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v)), "n": len(v)}

    return {
        "last20_learner": agg([r["last20"]["learner"] for r in runs]),
        "last20_cv": agg([r["last20"]["cv"] for r in runs]),
        "last20_oracle": agg([r["last20"]["oracle"] for r in runs]),
        "last20_warm": agg([r["last20"]["warm"] for r in runs]),
        "last20_minus_cv": agg([r["last20"]["learner"] - r["last20"]["cv"] for r in runs]),
        "worst_window_vs_warm": agg([r["worst_window_vs_warm"] for r in runs]),
        "regret_exponent_cv": agg([r["regret_exponent_cv"] for r in runs]),
        "regret_exponent_oracle": agg([r["regret_exponent_oracle"] for r in runs]),
        "explored_share": agg([r["explored_share"] for r in runs]),
        "update_us_p50": agg([r["update_us_p50"] for r in runs]),
        "update_us_p99": agg([r["update_us_p99"] for r in runs]),
    }


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `simulate.json` and `simulate.png` (reward per window, cumulative regret, pick
    shares per window; first seed's curves, others faint) into `out_dir`."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = out / "simulate.json", out / "simulate.png"
    jpath.write_text(json.dumps(result, indent=1))
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, run in enumerate(result["runs"]):
        a = 1.0 if i == 0 else 0.3
        w = run["window"]
        x = (np.arange(len(run["windows"]["learner"])) + 1) * w
        ax[0].plot(x, run["windows"]["learner"], color="C0", alpha=a, label="learner" if i == 0 else None)
        ax[0].plot(x, run["windows"]["cv"], color="C1", alpha=a, label="cv router" if i == 0 else None)
        if run["windows"]["warm"] is not None:
            ax[0].plot(
                x, run["windows"]["warm"], color="C2", alpha=a, label="warm-start router" if i == 0 else None
            )
        ax[1].plot(
            run["regret_t"], run["regret_cv"], color="C1", alpha=a, label="vs cv router" if i == 0 else None
        )
        ax[1].plot(
            run["regret_t"], run["regret_oracle"], color="C3", alpha=a, label="vs oracle" if i == 0 else None
        )
    first = result["runs"][0]
    shares = np.array(first["window_pick_shares"])
    if len(shares):
        xs = (np.arange(len(shares)) + 1) * first["window"]
        ax[2].stackplot(xs, shares.T, labels=result["models"])
        ax[2].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax[0].set(title=f"reward per window (lambda={result['tradeoff']:.3g})", xlabel="requests")
    ax[1].set(title="cumulative regret", xlabel="requests")
    ax[2].set(
        title=f"pick shares ({result['learner']}, seed {first['seed']})", xlabel="requests", ylim=(0, 1)
    )
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ppath, dpi=90)
    plt.close(fig)
    return jpath, ppath
