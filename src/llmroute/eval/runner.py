"""Cross-validated evaluation of routers on a routing table (metrics: `llmroute.eval.metrics`).

`evaluate(table)` embeds every prompt once, then for each router and each of K folds over
prompt ids fits `llmroute.router.Router` on the training prompts (the same public API the
gateway uses) and asks it for out-of-fold quality *and* cost estimates of the test prompts.
The pooled out-of-fold estimates give each router's trade-off curve, AIQ, gap closed,
cost ratio at the best single model's quality and, on two-model tables, APGR / CPT(50%) /
CPT(80%). Decision latency is measured with `router.route(prompt)`, one prompt at a time,
warm, including embedding (the embedding cache is bypassed for that measurement).

Each router also gets the trade-off and pick share per model behind every curve point, a
per-task breakdown and the spread over folds. `evaluate_router(router, table)` scores one
trained router on a table as it is (no CV). The returned dict is what `results.json` holds;
`llmroute.eval.report` writes it with `curves.png` and `report.html`.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llmroute.data.table import RoutingTable, TableError
from llmroute.embed.cache import CachedEncoder, EmbeddingCache
from llmroute.eval.baselines import (
    best_single,
    oracle_summary,
    random_baseline,
    single_summaries,
    strong_weak,
)
from llmroute.eval.cv import kfold_indices
from llmroute.eval.metrics import (
    aiq,
    apgr,
    cost_ratio_at_best_quality,
    cpt,
    curve_from_picks,
    gap_closed,
    pick_shares,
    router_picks,
    single_model_points,
    upper_hull,
)
from llmroute.policy import tradeoff_grid

__all__ = [
    "DEFAULT_ROUTERS",
    "EstimatingRouter",
    "EvalEncoder",
    "RouterFactory",
    "check_routable",
    "dataset_name",
    "evaluate",
    "evaluate_router",
    "fit_router",
    "load_dataset",
    "measure_latency",
    "with_cost_fallback",
]

DEFAULT_ROUTERS: tuple[str, ...] = ("default", "knn", "linear", "mlp", "mf")
LATENCY_PROMPTS = 500
LATENCY_WARMUP = 20
#: The per-task breakdown lists at most this many task families (the largest); the rest are
#: pooled as "(other tasks)".
MAX_TASK_GROUPS = 20


class EstimatingRouter(Protocol):
    """What the runner needs from a fitted router (`llmroute.router.Router` satisfies it)."""

    models: Sequence[str]

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(q, c): (n, m) expected quality and expected cost, columns in `models` order."""
        ...

    def route(self, prompt: str) -> Any:
        """One routing decision."""
        ...


#: A custom router for `evaluate`: (train_table, encoder, seed) -> fitted EstimatingRouter.
RouterFactory = Callable[[RoutingTable, Any, int], EstimatingRouter]


# ---- data ------------------------------------------------------------------------------------
def load_dataset(
    path: str | Path, tasks: str | None = None, prices: str | Path | None = None
) -> RoutingTable:
    """Load a routing table with `llmroute.data.load_table`, optionally keeping one task family.

    `path` is a file or a folder (e.g. ../shared/data/routellm, whose prices.json is used).
    `tasks` keeps prompts whose task starts with that prefix (e.g. 'mmlu'). Raises
    `TableError` with a message naming the path.
    """
    from llmroute.data import load_table

    table = load_table(path, prices=prices)
    if tasks:
        table = table.filter_tasks(tasks)
    return table


def dataset_name(path: str | Path, tasks: str | None = None) -> str:
    """A short dataset label: the folder name (or file stem), plus '/<tasks>' when filtered."""
    p = Path(path)
    base = p.name if p.is_dir() or p.suffix == "" else (p.parent.name if p.name == "data.parquet" else p.stem)
    return f"{base}/{tasks}" if tasks else base


def with_cost_fallback(table: RoutingTable) -> tuple[RoutingTable, str]:
    """A table with a cost for every model, and a note saying where the cost comes from.

    Tables with a known cost are returned as is ("cost_usd"). Tables without any cost
    (e.g. routerdc_7model, all local 7-8B models) get `cost_usd = params_b` (billions of
    parameters, a crude proxy of serving cost) when that column exists, else a unit cost per
    call for every model; the note says so and is stored in results.json as `cost_source`.
    """
    if table.has_cost():
        return table, "cost_usd"
    df = table.df.copy()
    if "params_b" in df.columns and df["params_b"].notna().any():
        df["cost_usd"] = df["params_b"].astype(float)
        note = "params_b (fallback: the table has no cost; cost = model size in billions of parameters)"
    else:
        df["cost_usd"] = 1.0
        note = "unit (fallback: the table has no cost and no params_b; every call costs 1)"
    return RoutingTable(df, source=table.source, prices=None), note


# ---- shared embedding cache ------------------------------------------------------------------
class EvalEncoder(CachedEncoder):
    """The evaluation's shared encoder: `llmroute.embed.CachedEncoder` plus priming and a bypass.

    `prime(texts)` embeds every text once, in batches (for the progress bar); later `encode`
    calls for those texts are cache hits, so every router and fold reuses the same embeddings.
    Set `bypass = True` to time real encoding (decision latency). `spec()` is the wrapped
    encoder's, so a router fitted with it saves and loads like one fitted with the plain encoder.
    """

    def __init__(self, encoder: Any) -> None:
        super().__init__(encoder, EmbeddingCache(maxsize=10_000_000))
        self.bypass = False

    def prime(
        self, texts: Iterable[str], batch: int = 2048, on_batch: Callable[[int], None] | None = None
    ) -> None:
        """Embed every distinct text (batches of `batch`; `on_batch(k)` after each)."""
        uniq = list(dict.fromkeys(texts))
        for s in range(0, len(uniq), batch):
            part = uniq[s : s + batch]
            super().encode(part)
            if on_batch is not None:
                on_batch(len(part))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32: cached rows, or real encoding when `bypass` is set."""
        if self.bypass:
            return np.asarray(self.encoder.encode(list(texts)), dtype=np.float32)
        return super().encode(texts)


def _resolve_encoder(encoder: Any) -> Any:
    if isinstance(encoder, str | dict):
        from llmroute.embed import load_encoder

        return load_encoder(encoder)
    return encoder


def _needs_fit(encoder: Any) -> bool:
    """Encoders fitted on training prompts (TF-IDF) cannot be shared across folds."""
    return getattr(encoder, "fitted", True) is False and callable(getattr(encoder, "fit", None))


# ---- routers ---------------------------------------------------------------------------------
def fit_router(name: str, table: RoutingTable, encoder: Any, seed: int = 0) -> EstimatingRouter:
    """Fit router `name` on `table` through `llmroute.router.Router.fit` (the public API)."""
    from llmroute.router import Router

    return Router.fit(table, estimator=name, encoder=encoder, seed=seed)


def measure_latency(
    router: EstimatingRouter, prompts: Sequence[str], warm: Sequence[str] = ()
) -> tuple[float, float]:
    """(p50, p99) in ms of `router.route(prompt)`, one distinct prompt at a time, after warm-up."""
    for p in warm:
        router.route(p)
    times = np.empty(len(prompts))
    for i, p in enumerate(prompts):
        t0 = time.perf_counter_ns()
        router.route(p)
        times[i] = time.perf_counter_ns() - t0
    if len(times) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(times, 50) / 1e6), float(np.percentile(times, 99) / 1e6)


def _align(
    router: EstimatingRouter, models: Sequence[str], q: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    got = list(getattr(router, "models", models))
    if got == list(models):
        return np.asarray(q, dtype=float), np.asarray(c, dtype=float)
    idx = [got.index(m) for m in models]
    return np.asarray(q, dtype=float)[:, idx], np.asarray(c, dtype=float)[:, idx]


# ---- metrics ---------------------------------------------------------------------------------
def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _curve_list(curve: np.ndarray) -> list[list[float]]:
    return [[float(c), float(q)] for c, q in curve if math.isfinite(c) and math.isfinite(q)]


def _context(
    Q: np.ndarray,
    C: np.ndarray,
    lambdas: np.ndarray | None = None,
    pair: tuple[int | None, int | None] | None = None,
) -> dict:
    """Baselines every router is scored against on (Q, C): singles, oracle, cost range, pair.

    `lambdas` defaults to the trade-off grid of the table's cost scale; `pair` (strong, weak)
    defaults to the two models of a two-model table. A subset (one task, one fold) passes the
    full table's grid and pair so that its numbers compare with the whole table's.
    """
    singles = single_model_points(Q, C)
    finite_cost = singles[np.isfinite(singles[:, 0]), 0]
    if len(finite_cost) == 0:
        raise ValueError("no model has a known cost on these prompts")
    c_min, c_max = float(finite_cost.min()), float(finite_cost.max())
    if lambdas is None:
        lambdas = tradeoff_grid(float(np.nanmedian(np.abs(C))))
    single_hull_aiq = aiq(singles, c_min, c_max)
    oracle = oracle_summary(Q, C, c_min, c_max, lambdas)
    two = Q.shape[1] == 2
    if pair is None:
        pair = strong_weak(Q) if two else (None, None)
    return {
        "lambdas": lambdas,
        "c_min": c_min,
        "c_max": c_max,
        "singles": singles,
        "single_hull_aiq": single_hull_aiq,
        "oracle": oracle,
        "oracle_aiq": oracle["aiq"],
        "two_models": two,
        "strong": pair[0],
        "weak": pair[1],
    }


def _score_curve(curve: np.ndarray, Q: np.ndarray, score: np.ndarray | None, ctx: dict) -> dict:
    """Metrics of one curve (and, on two-model tables, of the strong-vs-weak `score`)."""
    a = aiq(curve, ctx["c_min"], ctx["c_max"])
    hull = upper_hull(curve)
    out: dict[str, Any] = {
        "aiq": _num(a),
        "gap_closed": _num(gap_closed(a, ctx["single_hull_aiq"], ctx["oracle_aiq"])),
        "cost_ratio_at_best_quality": _num(cost_ratio_at_best_quality(curve, ctx["singles"])),
        "max_quality": _num(hull[:, 1].max()) if len(hull) else None,
        "apgr": None,
        "cpt50": None,
        "cpt80": None,
    }
    if ctx["two_models"] and score is not None:
        s, w = ctx["strong"], ctx["weak"]
        out["apgr"] = _num(apgr(score, Q[:, s], Q[:, w]))
        out["cpt50"] = _num(cpt(score, Q[:, s], Q[:, w], 0.5))
        out["cpt80"] = _num(cpt(score, Q[:, s], Q[:, w], 0.8))
    out["curve"] = _curve_list(curve)
    return out


def _curve_points(curve: np.ndarray, picks: np.ndarray, lambdas: np.ndarray, models: list[str]) -> list[dict]:
    """One dict per finite curve point (the same points as `curve`, in order): the trade-off
    lambda behind it (None = infinite: always the cheapest), its cost, quality and the share of
    prompts picked per model (a list in `models` order)."""
    shares = pick_shares(picks, len(models))
    out = []
    for lam, (c, q), share in zip(lambdas, curve, shares, strict=True):
        if not (math.isfinite(c) and math.isfinite(q)):
            continue
        out.append(
            {
                "tradeoff": _num(lam),
                "cost": float(c),
                "quality": float(q),
                "pick_share": [round(float(v), 4) for v in share],
            }
        )
    return out


def _task_groups(tasks: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(task family, prompt indices), largest first; families beyond MAX_TASK_GROUPS are pooled.

    A family is the part of the task label before the first '/' ('mmlu/anatomy' -> 'mmlu').
    Returns [] when the table has fewer than two families (the breakdown would repeat the
    totals).
    """
    fam: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        fam.setdefault((t or "").split("/")[0] or "(no task)", []).append(i)
    if len(fam) < 2:
        return []
    ordered = sorted(fam.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(ordered) > MAX_TASK_GROUPS:
        head, rest = ordered[: MAX_TASK_GROUPS - 1], ordered[MAX_TASK_GROUPS - 1 :]
        ordered = [*head, ("(other tasks)", sorted(i for _, ix in rest for i in ix))]
    return [(name, np.asarray(ix, dtype=np.intp)) for name, ix in ordered]


def _group_context(Q: np.ndarray, C: np.ndarray, idx: np.ndarray, ctx: dict) -> dict | None:
    """`_context` of the prompts `idx` (None when no model has a known cost there)."""
    try:
        return _context(Q[idx], C[idx], ctx["lambdas"], (ctx["strong"], ctx["weak"]))
    except ValueError:
        return None


def _group_metrics(
    Q: np.ndarray,
    picks: np.ndarray,
    score: np.ndarray | None,
    idx: np.ndarray,
    gctx: dict | None,
    C: np.ndarray,
) -> dict:
    """AIQ, gap closed, max quality and (two models) APGR of a router on the prompts `idx`."""
    out: dict[str, Any] = {
        "n_prompts": len(idx),
        "aiq": None,
        "gap_closed": None,
        "max_quality": None,
        "apgr": None,
    }
    if gctx is None or len(idx) == 0:
        return out
    curve = curve_from_picks(Q[idx], C[idx], picks[:, idx])
    m = _score_curve(curve, Q[idx], None if score is None else score[idx], gctx)
    out.update({k: m[k] for k in ("aiq", "gap_closed", "max_quality", "apgr")})
    return out


def _spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """mean, std (population), min and max of the finite values (None when there are none)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def _score_router(
    Q: np.ndarray,
    C: np.ndarray,
    q_hat: np.ndarray,
    c_hat: np.ndarray,
    ctx: dict,
    models: list[str],
    groups: dict[str, list[tuple[str, np.ndarray, dict | None]]],
    lambdas: np.ndarray | None = None,
) -> dict:
    """Metrics of a router from its (out-of-fold) estimates (score = q_hat[strong] - q_hat[weak]).

    Besides the headline metrics: `curve_points` (trade-off, cost, quality and pick share per
    model behind every curve point), `by_task` (per task family) and, for cross-validation,
    `per_fold` and `fold_spread`. `lambdas` overrides the context's trade-off grid for the
    sweep (a saved router estimates cost on its own scale).
    """
    lams = ctx["lambdas"] if lambdas is None else lambdas
    picks = router_picks(q_hat, c_hat, lams)
    curve = curve_from_picks(Q, C, picks)
    score = q_hat[:, ctx["strong"]] - q_hat[:, ctx["weak"]] if ctx["two_models"] else None
    res = _score_curve(curve, Q, score, ctx)
    res["curve_points"] = _curve_points(curve, picks, lams, models)
    res["by_task"] = {
        name: _group_metrics(Q, picks, score, idx, gctx, C) for name, idx, gctx in groups.get("tasks", [])
    }
    folds = groups.get("folds", [])
    if folds:
        per_fold = []
        for k, (_, idx, gctx) in enumerate(folds):
            per_fold.append({"fold": k, **_group_metrics(Q, picks, score, idx, gctx, C)})
        res["per_fold"] = per_fold
        keys = ["aiq", "gap_closed", *(["apgr"] if ctx["two_models"] else [])]
        res["fold_spread"] = {key: _spread([f[key] for f in per_fold]) for key in keys}
    return res


def _task_summaries(
    Q: np.ndarray, C: np.ndarray, models: list[str], groups: list[tuple[str, np.ndarray, dict | None]]
) -> list[dict]:
    """Per task family: prompts, best single model, oracle quality, single-hull and oracle AIQ."""
    out = []
    for name, idx, gctx in groups:
        row: dict[str, Any] = {"task": name, "n_prompts": len(idx)}
        if gctx is not None:
            row["best_single"] = best_single(Q[idx], C[idx], models)
            row["oracle_quality"] = _num(gctx["oracle"]["quality"])
            row["single_hull_aiq"] = _num(gctx["single_hull_aiq"])
            row["oracle_aiq"] = _num(gctx["oracle_aiq"])
        out.append(row)
    return out


def check_routable(table: RoutingTable) -> None:
    """Raise TableError unless `table` has at least two models (one model leaves nothing to route).

    `llmroute eval` and `llmroute train` both call it, so they refuse such a table alike.
    """
    models = list(table.models)
    if len(models) < 2:
        got = f"only {models[0]!r}" if models else "none"
        raise TableError(
            f"{table.source}: need at least two models to route between, found {got}; "
            "add the outcomes of at least one more model (one row per prompt and model)"
        )


def _baselines_json(ctx: dict, Q: np.ndarray, C: np.ndarray, models: list[str], random_res: dict) -> dict:
    two = ctx["two_models"]
    oracle = ctx["oracle"]
    return {
        "single_hull_aiq": _num(ctx["single_hull_aiq"]),
        "oracle_aiq": _num(oracle["aiq"]),
        "best_single": best_single(Q, C, models),
        "c_min": ctx["c_min"],
        "c_max": ctx["c_max"],
        "singles": single_summaries(Q, C, models),
        "random": random_res,
        "oracle": {
            "quality": oracle["quality"],
            "cost": oracle["cost"],
            "aiq": oracle["aiq"],
            "curve": _curve_list(oracle["curve"]),
        },
        "strong": models[ctx["strong"]] if two else None,
        "weak": models[ctx["weak"]] if two else None,
    }


# ---- the runner --------------------------------------------------------------------------------
def evaluate(
    table: RoutingTable,
    routers: Sequence[str | tuple[str, RouterFactory]] = DEFAULT_ROUTERS,
    folds: int = 5,
    seed: int = 0,
    encoder: Any = "static-minilm",
    progress: bool = True,
    dataset: str | None = None,
    latency_prompts: int = LATENCY_PROMPTS,
) -> dict:
    """Cross-validated evaluation of `routers` on `table`; returns the results.json dict.

    routers: names for `Router.fit(..., estimator=name)` or `(name, factory)` pairs where
        `factory(train_table, encoder, seed)` returns a fitted router (`estimate`, `route`,
        `models`).
    encoder: an encoder spec for `llmroute.embed.load_encoder` or an `Encoder` object; every
        prompt is embedded once and the cached embeddings are shared by all routers and folds.
    latency_prompts: how many held-out prompts (of fold 0) time `router.route`; 0 disables.

    Quality NaN cells are excluded from every mean. Tables without cost get the fallback of
    `with_cost_fallback` (recorded as `cost_source`). Besides the headline metrics each router
    gets `curve_points`, `by_task`, `per_fold` and `fold_spread` (see `_score_router`).
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if not routers:
        raise ValueError("no router to evaluate")
    t_start = time.perf_counter()
    table, cost_source = with_cost_fallback(table)
    check_routable(table)
    models = list(table.models)
    Q = table.quality_matrix()
    C = table.cost_matrix()
    n = table.n_prompts
    prompts = table.prompts
    pids = table.prompt_ids
    specs = [(r, None) if isinstance(r, str) else (r[0], r[1]) for r in routers]
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate router names: {names}")

    # ---- baselines ----
    ctx = _context(Q, C)

    fold_idx = kfold_indices(n, folds, seed)
    all_idx = np.arange(n)
    fold_train = [np.setdiff1d(all_idx, t, assume_unique=True) for t in fold_idx]
    groups = {
        "tasks": [(name, idx, _group_context(Q, C, idx, ctx)) for name, idx in _task_groups(table.tasks)],
        "folds": [(str(k), idx, _group_context(Q, C, idx, ctx)) for k, idx in enumerate(fold_idx)],
    }

    bar = _Progress(progress, total_steps=len(specs) * folds)
    with bar:
        # ---- embed every prompt once (per fold for encoders fitted on training prompts) ----
        base_enc = _resolve_encoder(encoder)
        per_fold = _needs_fit(base_enc)
        enc = EvalEncoder(base_enc)
        t0 = time.perf_counter()
        if not per_fold:
            bar.start_embedding(len(set(prompts)), enc.name)
            enc.prime(prompts, on_batch=bar.advance_embedding)
        embed_s = time.perf_counter() - t0

        train_tables = [table.subset([pids[i] for i in tr]) for tr in fold_train]

        rand_curve, rand_score = random_baseline(Q, C, seed=seed)
        random_res = _score_curve(rand_curve, Q, rand_score, ctx)

        results: dict[str, dict] = {}
        for name, factory in specs:
            q_hat = np.full(Q.shape, np.nan)
            c_hat = np.full(C.shape, np.nan)
            lat = (float("nan"), float("nan"))
            t_router = time.perf_counter()
            for k, test in enumerate(fold_idx):
                bar.describe(f"{name}: fold {k + 1}/{folds}")
                tr_table = train_tables[k]
                if per_fold:  # a fresh, unfitted encoder per fold: no test prompt leaks into it
                    from llmroute.embed import load_encoder

                    enc = EvalEncoder(load_encoder(base_enc.spec()))
                if factory is None:
                    router = fit_router(name, tr_table, enc, seed)
                else:
                    router = factory(tr_table, enc, seed)
                test_prompts = [prompts[i] for i in test]
                if k == 0 and latency_prompts > 0:
                    lat_set = list(dict.fromkeys(test_prompts))[:latency_prompts]
                    warm = [prompts[i] for i in fold_train[k][:LATENCY_WARMUP]]
                    enc.bypass = True
                    try:
                        lat = measure_latency(router, lat_set, warm)
                    finally:
                        enc.bypass = False
                q, c = router.estimate(test_prompts)
                q, c = _align(router, models, q, c)
                # a router that cannot estimate cost for a model: its mean training cost
                if not np.isfinite(c).all():
                    mc = single_model_points(Q[fold_train[k]], C[fold_train[k]])[:, 0]
                    c = np.where(np.isfinite(c), c, mc[None, :])
                q_hat[test], c_hat[test] = q, c
                bar.advance()
            res = _score_router(Q, C, q_hat, c_hat, ctx, models, groups)
            res["decision_ms_p50"] = _num(lat[0])
            res["decision_ms_p99"] = _num(lat[1])
            res["eval_s"] = round(time.perf_counter() - t_router, 3)
            # keep the schema's key order: metrics, latency, details, curve last
            res["curve"] = res.pop("curve")
            results[name] = res

    out: dict[str, Any] = {
        "dataset": dataset or dataset_name(table.source),
        "mode": "cv",
        "n_prompts": int(n),
        "models": models,
        "folds": int(folds),
        "seed": int(seed),
        "encoder": enc.name,
        "cost_source": cost_source,
        "baselines": _baselines_json(ctx, Q, C, models, random_res),
        "tasks": _task_summaries(Q, C, models, groups["tasks"]),
        "routers": results,
        "embed_s": round(embed_s, 3),
        "elapsed_s": round(time.perf_counter() - t_start, 3),
    }
    return out


def _check_models(router: EstimatingRouter, table: RoutingTable, router_label: str) -> None:
    """TableError naming the table's models the router does not know (with close matches)."""
    have = list(getattr(router, "models", []))
    missing = [m for m in table.models if m not in have]
    if not missing:
        return
    parts = []
    for m in missing[:5]:
        close = difflib.get_close_matches(m, have, n=2, cutoff=0.5)
        parts.append(f"{m!r}" + (f" (close: {', '.join(repr(c) for c in close)})" if close else ""))
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise TableError(
        f"{table.source}: the table's models are not the router's: {', '.join(parts)}{more} "
        f"not in {router_label} (its models: {', '.join(repr(m) for m in have)}). Models are matched "
        "by name: rename them in the table's model column, or train a router on this table with "
        "`llmroute train`"
    )


def evaluate_router(
    router: EstimatingRouter,
    table: RoutingTable,
    *,
    name: str = "router",
    router_label: str | None = None,
    seed: int = 0,
    dataset: str | None = None,
    latency_prompts: int = LATENCY_PROMPTS,
) -> dict:
    """Score one already fitted (e.g. saved) router on `table`: no CV, same results.json schema.

    The router estimates every prompt of `table` once; its curve, AIQ, gap closed, cost ratio,
    APGR/CPT (two models), per-task breakdown and decision latency are computed on the table as
    for `evaluate`, with `"mode": "router"` and `"folds": None`. Models are matched by name:
    every model of the table must be one of the router's (TableError otherwise); a router with
    more models chooses among the table's only. `router_label` (e.g. the file) names the router
    in messages.
    """
    t_start = time.perf_counter()
    table, cost_source = with_cost_fallback(table)
    check_routable(table)
    label = router_label or name
    _check_models(router, table, label)
    models = list(table.models)
    Q = table.quality_matrix()
    C = table.cost_matrix()
    prompts = table.prompts
    ctx = _context(Q, C)
    groups = {"tasks": [(t, idx, _group_context(Q, C, idx, ctx)) for t, idx in _task_groups(table.tasks)]}

    lat = (float("nan"), float("nan"))
    if latency_prompts > 0:
        uniq = list(dict.fromkeys(prompts))
        timed = uniq[:latency_prompts]
        warm = uniq[latency_prompts : latency_prompts + LATENCY_WARMUP] or timed[:LATENCY_WARMUP]
        lat = measure_latency(router, timed, warm)
    q, c = router.estimate(prompts)
    q_hat, c_hat = _align(router, models, q, c)
    if not np.isfinite(c_hat).all():
        mc = single_model_points(Q, C)[:, 0]
        c_hat = np.where(np.isfinite(c_hat), c_hat, mc[None, :])
    # the sweep runs on the router's own cost estimates: grid on their scale
    finite = np.abs(c_hat[np.isfinite(c_hat)])
    lambdas = tradeoff_grid(float(np.median(finite))) if len(finite) else ctx["lambdas"]
    res = _score_router(Q, C, q_hat, c_hat, ctx, models, groups, lambdas=lambdas)
    res["decision_ms_p50"] = _num(lat[0])
    res["decision_ms_p99"] = _num(lat[1])
    res["eval_s"] = round(time.perf_counter() - t_start, 3)
    res["curve"] = res.pop("curve")
    rand_curve, rand_score = random_baseline(Q, C, seed=seed)
    encoder = getattr(router, "encoder", None)
    return {
        "dataset": dataset or dataset_name(table.source),
        "mode": "router",
        "router_file": label,
        "n_prompts": int(table.n_prompts),
        "models": models,
        "router_models": list(getattr(router, "models", models)),
        "folds": None,
        "seed": int(seed),
        "encoder": getattr(encoder, "name", "–") if encoder is not None else "–",
        "cost_source": cost_source,
        "baselines": _baselines_json(ctx, Q, C, models, _score_curve(rand_curve, Q, rand_score, ctx)),
        "tasks": _task_summaries(Q, C, models, groups["tasks"]),
        "routers": {name: res},
        "elapsed_s": round(time.perf_counter() - t_start, 3),
    }


class _Progress:
    """A rich progress bar on stderr (no-op when disabled)."""

    def __init__(self, enabled: bool, total_steps: int) -> None:
        self.enabled = enabled
        self.total = total_steps
        self._p: Any = None
        self._emb: Any = None
        self._fit: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def start_embedding(self, n: int, name: str) -> None:
        if self._p is not None:
            self._emb = self._p.add_task(f"embedding ({name})", total=n)

    def advance_embedding(self, k: int) -> None:
        if self._p is not None and self._emb is not None:
            self._p.advance(self._emb, k)

    def describe(self, text: str) -> None:
        if self._p is None:
            return
        if self._fit is None:
            self._fit = self._p.add_task(text, total=self.total)
        else:
            self._p.update(self._fit, description=text)

    def advance(self) -> None:
        if self._p is not None and self._fit is not None:
            self._p.advance(self._fit)
