"""Offline evaluation of cascades on a routing table with responses (cascade routing).

A cascade answers a prompt in steps: call a first model (the one-shot router's pick at the
trade-off lambda, or the cheapest), score its answer, and escalate to another model while that
pays. After every answer the evidence re-estimates the models (cascade routing, Dekoninck et
al. 2025). The fitted re-estimator (`llmroute.cascade.reestimate.Reestimator`; that module, shared
with the gateway, also has the rule and an estimator that needs no training data) has:

- `Reestimator.called`: P(a called model's answer is right | its router prior, the answer's
  verifier scores, how many other called answers agree or disagree with it) - a logistic
  regression on these features and their pairwise products, fitted on the training prompts;
- `Reestimator.gains`: the expected quality gain of calling model j next (served answer after
  the call minus served answer now; the served answer is always the called one with the highest
  P(right)) given j's prior and the evidence so far (best P(right), its shift from the prior,
  agreement among the called answers) - a ridge regression on the same kind of features.

The policy (`run_policy`) escalates to argmax_j gain_j - lambda * c_hat_j while that is > 0 (`choose_next`) and
the best P(right) is below the threshold tau, within `max_steps` answers and `max_cost_usd`
(spent + the next model's estimated cost). tau = 0 never escalates: the one-shot router. Cost
counts every call made (true cost of each called model); quality is the served answer's.

`evaluate_cascade(table)` runs it with K-fold CV over prompt ids (same folds as
`llmroute.eval.runner.evaluate`): per outer fold, a router (default: `Router.fit`, estimator
`default`) fitted on the training prompts gives the test prompts' prior, an inner K-fold gives the
training prompts' out-of-fold prior, and the re-estimator is fitted on the training prompts only.
Sweeping (first model, lambda, tau) gives cost-quality points; AIQ, gap closed and the cost ratio at
the best single model's quality come from `llmroute.eval.metrics` exactly as for one-shot routers,
with the one-shot router on the same priors scored beside it.

Signals (`signals=`): `checks` (the built-in verifier checks of `llmroute.cascade.verifiers`),
`learned` (a logistic answer-quality model on `llmroute.cascade.learned.answer_features`, fitted
per fold), `agreement` (extracted answers - option letter or final number - agreeing across the
called models, weighted by their priors). With no signal the re-estimator sees only priors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmroute.cascade.learned import FEATURES as TEXT_FEATURES
from llmroute.cascade.learned import answer_features
from llmroute.cascade.reestimate import (
    SIGNALS,
    DifficultyReestimator,
    Evidence,
    Reestimator,
    choose_next,
    extract_answer,
    fit_max_score,
    fit_text_verifier,
    text_verifier_p,
)
from llmroute.cascade.verifiers import DEFAULT_CHECKS, verify
from llmroute.data.table import RoutingTable, TableError
from llmroute.eval.cv import kfold_indices
from llmroute.eval.metrics import aiq, cost_ratio_at_best_quality, gap_closed, upper_hull

__all__ = [
    "SIGNALS",
    "Evidence",
    "PolicyTrace",
    "Reestimator",
    "evaluate_cascade",
    "extract_answer",
    "oof_priors",
    "response_matrix",
    "run_policy",
    "table_evidence",
]


DEFAULT_TAUS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.01)
"""Thresholds swept: stop when the best answer's P(right) >= tau (0: one-shot, > 1: gain only)."""


def response_matrix(table: RoutingTable) -> np.ndarray:
    """(n_prompts, n_models) object array of responses (None where a cell has none)."""
    if "response" not in table.df.columns:
        raise TableError(
            f"{table.source}: no 'response' column; a cascade is evaluated on the models' stored "
            "answers (profile the models with `llmroute profile` to get them)"
        )
    piv = table.df.pivot(index="prompt_id", columns="model", values="response")
    piv = piv.reindex(index=table.prompt_ids, columns=table.models)
    out = piv.to_numpy(dtype=object)
    out[~np.vectorize(lambda v: isinstance(v, str), otypes=[bool])(out)] = None
    return out


def table_evidence(table: RoutingTable, checks: Sequence[str] = DEFAULT_CHECKS) -> Evidence:
    """Extracted answers, built-in check scores and learned-verifier features of every cell."""
    resp = response_matrix(table)
    prompts = table.prompts
    n, m = resp.shape
    codes = np.full((n, m), -1, dtype=np.int64)
    chk = np.full((n, m), np.nan)
    text = np.zeros((n, m, len(TEXT_FEATURES)))
    for i in range(n):
        p = prompts[i]
        body = {"messages": [{"role": "user", "content": p}]}
        seen: dict[str, int] = {}
        for j in range(m):
            r = resp[i, j]
            if r is None:
                continue
            a = extract_answer(p, r)
            if a is not None:
                codes[i, j] = seen.setdefault(a, len(seen))
            out = {"choices": [{"message": {"role": "assistant", "content": r}, "finish_reason": "stop"}]}
            chk[i, j] = verify(body, out, checks).score
            text[i, j] = answer_features(p, r)
    return Evidence(codes, chk, text, resp != None)  # noqa: E711 (elementwise on objects)


# ---- the policy ----------------------------------------------------------------------------------
@dataclass
class PolicyTrace:
    """One cascade run at trade-off lambda without a threshold, step by step (stopping earlier
    for a threshold tau is a prefix of it): per step k, `served[k]` the served model, `pbest[k]`
    its P(right), `spent[k]` the true cost of all calls so far, `calls[k]` their number; arrays
    (steps, n). `at(tau)` gives the (served, spent, calls) when stopping at P(right) >= tau."""

    served: np.ndarray
    pbest: np.ndarray
    spent: np.ndarray
    calls: np.ndarray

    def at(self, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(served model, total true cost, calls) per prompt when stopping at P(right) >= tau."""
        k_max = self.served.shape[0] - 1
        hit = self.pbest >= tau
        stop = np.where(hit.any(axis=0), np.argmax(hit, axis=0), k_max)
        cols = np.arange(self.served.shape[1])
        return self.served[stop, cols], self.spent[stop, cols], self.calls[stop, cols]


def run_policy(
    re_est: Reestimator | DifficultyReestimator,
    q: np.ndarray,
    c: np.ndarray,
    C: np.ndarray,
    ev: Evidence,
    tradeoff: float,
    *,
    first: str = "router",
    max_steps: int = 3,
    max_cost_usd: float | None = None,
) -> PolicyTrace:
    """Run the cascade on prompts with prior `q`, estimated cost `c` and true cost `C`.

    Step 1 calls the one-shot pick at `tradeoff` (first='router'), the cheapest estimated model
    (first='cheapest') or the K cheapest at once (first='cheapest:K', K <= max_steps: their
    answers' agreement is evidence from the start). Then, while fewer than `max_steps` answers: call argmax_j gain_j -
    tradeoff * c_j among models not called whose estimated cost fits `max_cost_usd` (true spend
    so far + c_j), if that is > 0; else stop. Returns the full trace (see `PolicyTrace`).
    """
    from llmroute.policy import choose

    n, m = q.shape
    rows = np.arange(n)
    lam = float(tradeoff)
    S = np.zeros((n, m), dtype=bool)
    if first == "router":
        S[rows, choose(q, c, tradeoff=lam)] = True
    elif first == "cheapest" or first.startswith("cheapest:"):
        k = int(first.split(":", 1)[1]) if ":" in first else 1
        if not 1 <= k <= max_steps:
            raise ValueError(f"first {first!r}: k must be in 1..max_steps ({max_steps})")
        order = np.argsort(np.where(np.isfinite(c), c, np.inf), axis=1, kind="stable")[:, : min(k, m)]
        S[rows[:, None], order] = True
    else:
        raise ValueError(f"first must be 'router', 'cheapest' or 'cheapest:K', got {first!r}")
    spent = np.where(S, np.nan_to_num(C), 0.0).sum(axis=1)
    active = np.ones(n, dtype=bool)
    served_l, pbest_l, spent_l, calls_l = [], [], [], []
    for _ in range(max_steps):
        P = re_est.called(S, q, ev)
        best = np.argmax(np.where(S, P, -np.inf), axis=1)
        served_l.append(best)
        pbest_l.append(np.where(active, P[rows, best], np.inf))  # a stopped prompt "passes"
        spent_l.append(spent.copy())
        calls_l.append(S.sum(axis=1))
        active &= S.sum(axis=1) < max_steps
        if not active.any():
            break
        G = re_est.gains(S, P, q, ev)
        blocked = None if max_cost_usd is None else spent[:, None] + c > max_cost_usd
        j, go, _ = choose_next(G, c, S, lam, blocked)
        go &= active
        S[go, j[go]] = True
        spent = spent + np.where(go, np.nan_to_num(C[rows, j]), 0.0)
        active = go
    # after the last step every prompt stops: pbest stays as is; pad to max_steps rows
    while len(served_l) < max_steps:
        served_l.append(served_l[-1])
        pbest_l.append(np.full(n, np.inf))
        spent_l.append(spent_l[-1])
        calls_l.append(calls_l[-1])
    return PolicyTrace(np.stack(served_l), np.stack(pbest_l), np.stack(spent_l), np.stack(calls_l))


# ---- priors ----------------------------------------------------------------------------------------
PriorFactory = Callable[[RoutingTable, Any, int], Any]
"""(train_table, encoder, seed) -> a fitted router with `models` and `estimate(prompts)`."""


def _default_factory(table: RoutingTable, encoder: Any, seed: int) -> Any:
    from llmroute.eval.runner import fit_router

    return fit_router("default", table, encoder, seed)


def _estimate(
    router: Any, table: RoutingTable, train: RoutingTable, prompts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    from llmroute.eval.metrics import single_model_points
    from llmroute.eval.runner import _align

    q, c = router.estimate(prompts)
    q, c = _align(router, list(table.models), q, c)
    if not np.isfinite(c).all():
        mc = single_model_points(train.quality_matrix(), train.cost_matrix())[:, 0]
        c = np.where(np.isfinite(c), c, mc[None, :])
    return np.clip(q, 0.0, 1.0), c


def oof_priors(
    table: RoutingTable,
    factory: PriorFactory | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    inner_folds: int = 3,
    encoder: Any = None,
) -> dict[str, Any]:
    """Out-of-fold router estimates for a cascade's CV.

    Returns `fold_idx` (test indices per outer fold), `q`, `c` ((n, m) estimates of each prompt by
    the router fitted without its fold: the one-shot router's estimates) and `inner` (per outer
    fold, (q, c) of its training prompts from `inner_folds` folds inside them, so the
    re-estimator learns from priors as uncertain as those it meets at test time).
    """
    from llmroute.eval.runner import EvalEncoder, _resolve_encoder

    factory = factory or _default_factory
    if encoder is None or isinstance(encoder, str | dict):
        enc: Any = EvalEncoder(_resolve_encoder(encoder or "static-minilm"))
        enc.prime(table.prompts)
    else:
        enc = encoder
    n, m = table.n_prompts, table.n_models
    pids, prompts = table.prompt_ids, table.prompts
    fold_idx = kfold_indices(n, folds, seed)
    q = np.full((n, m), np.nan)
    c = np.full((n, m), np.nan)
    inner = []
    for test in fold_idx:
        train = np.setdiff1d(np.arange(n), test, assume_unique=True)
        tr_table = table.subset([pids[i] for i in train])
        router = factory(tr_table, enc, seed)
        q[test], c[test] = _estimate(router, table, tr_table, [prompts[i] for i in test])
        iq = np.full((len(train), m), np.nan)
        ic = np.full((len(train), m), np.nan)
        for itest in kfold_indices(len(train), inner_folds, seed):
            itrain = np.setdiff1d(np.arange(len(train)), itest, assume_unique=True)
            it_table = table.subset([pids[train[i]] for i in itrain])
            r = factory(it_table, enc, seed)
            iq[itest], ic[itest] = _estimate(r, table, it_table, [prompts[train[i]] for i in itest])
        inner.append((iq, ic))
    return {"fold_idx": fold_idx, "q": q, "c": c, "inner": inner, "folds": folds, "seed": seed}


# ---- evaluation --------------------------------------------------------------------------------------
def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _difficulty_evidence(
    signals: Sequence[str], ev_train: Evidence, Q_train: np.ndarray, ev: Evidence
) -> tuple[Evidence, np.ndarray | None]:
    """The evidence `DifficultyReestimator` sees for the prompts `ev` (see `evaluate_cascade`),
    and the learned text verifier's P(right) of each answer (None: `learned` off or not fitted)."""
    score = ev.checks if "checks" in signals else np.full(ev.checks.shape, np.nan)
    v = None
    if "learned" in signals:
        lv = fit_text_verifier(ev_train, Q_train)
        if lv is not None:
            v = text_verifier_p(lv, ev)
            vs = np.where(ev.has, v, np.nan)
            score = np.where(np.isfinite(score), np.fmin(score, vs), vs)
    codes = ev.codes if "agreement" in signals else np.full(ev.codes.shape, -1)
    return Evidence(codes, score, ev.text, ev.has), v


def _difficulty_train_evidence(
    signals: Sequence[str], ev: Evidence, Q: np.ndarray, inner_folds: int, seed: int
) -> Evidence:
    """`_difficulty_evidence` of training prompts as the test prompts meet it: with `learned`,
    each inner fold's scores come from a text verifier fitted on the other inner folds (an
    in-sample verifier would look surer than it is at test time)."""
    out, _ = _difficulty_evidence([s for s in signals if s != "learned"], ev, Q, ev)
    if "learned" not in signals:
        return out
    checks = out.checks.copy()
    n = Q.shape[0]
    for itest in kfold_indices(n, inner_folds, seed):
        itrain = np.setdiff1d(np.arange(n), itest, assume_unique=True)
        part, _ = _difficulty_evidence(signals, ev.take(itrain), Q[itrain], ev.take(itest))
        checks[itest] = part.checks
    return Evidence(out.codes, checks, out.text, out.has)


def _calibration(
    cal: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
    re_est: Any,
    q: np.ndarray,
    ev: Evidence,
    Q: np.ndarray,
    v: np.ndarray | None = None,
) -> None:
    """Add one fold's held-out predictions to `cal`: `verifier` the learned text verifier's
    P(right) of every answer (when on: `re_est`'s, else `v`), `first_answer` the re-estimator's
    P(right) of each model's answer when it is the only one called (prior + that answer's
    evidence: what the cascade's first step decides on)."""
    ok = ev.has & np.isfinite(Q)
    if isinstance(re_est, Reestimator):
        v = re_est.verifier(ev)
    if v is not None:
        cal["verifier"][0].append(v[ok])
        cal["verifier"][1].append(Q[ok])
    for j in range(q.shape[1]):
        S = np.zeros(q.shape, dtype=bool)
        S[:, j] = True
        cal["first_answer"][0].append(re_est.called(S, q, ev)[ok[:, j], j])
        cal["first_answer"][1].append(Q[ok[:, j], j])


def _reliability(p: np.ndarray, quality: np.ndarray) -> dict[str, Any]:
    """`LearnedVerifier.reliability` (ECE, AUROC, the diagram's bins) of held-out predictions,
    JSON-safe (AUROC None when only one outcome occurs), with the number of predictions."""
    from llmroute.cascade.learned import LearnedVerifier

    rel = LearnedVerifier.reliability(p, quality)
    return {**rel, "ece": _num(rel["ece"]), "auroc": _num(rel["auroc"]), "n": len(p)}


def evaluate_cascade(
    table: RoutingTable,
    *,
    priors: dict[str, Any] | None = None,
    factory: PriorFactory | None = None,
    signals: Sequence[str] = SIGNALS,
    max_steps: int = 3,
    max_cost_usd: float | None = None,
    firsts: Sequence[str] = ("router", "cheapest"),
    taus: Sequence[float] = DEFAULT_TAUS,
    lambdas: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
    inner_folds: int = 3,
    evidence: Evidence | None = None,
    models: Sequence[str] | None = None,
    name: str = "cascade",
    estimator: str | DifficultyReestimator = "fitted",
) -> dict[str, Any]:
    """Cross-validated cascade evaluation on a table with responses; a JSON-able dict.

    priors: `oof_priors(table, ...)` (computed here with `factory`, default the `default` router,
        when None; pass one to share it between several evaluations).
    models: evaluate on these models only (columns of the priors; e.g. a two-model subset).
    estimator: "fitted" (`Reestimator`, fitted per fold on the signals) or "difficulty" (the
        gateway's `DifficultyReestimator`, its `max_score` chosen per fold by `fit_max_score` on
        the training prompts (their inner out-of-fold priors; with `learned`, scores from
        inner-fold verifiers), or pass one to use as is: an answer's score is its built-in
        checks' score, and with `learned` the lower of that and a per-fold learned text
        verifier's P(right); `agreement` adds the extracted answers). `max_score` in the result:
        the value used in each fold (None for "fitted").
    Keys: `aiq`, `gap_closed`, `cost_ratio_at_best_quality`, `max_quality` of all swept points
    (first model x lambda x tau), `one_shot` (the same metrics for tau = 0 only: the one-shot
    router on the same priors), `by_first` (metrics per first-model rule), `points` (every point:
    first, tradeoff, tau, cost, quality, mean calls), `curve` (the hull), `baselines`,
    `calibration` (held-out reliability of the learned verifier, `verifier`, when on, and of the
    re-estimator's P(right) of a lone first answer, `first_answer`: ECE, AUROC, diagram bins).
    """
    from llmroute.eval.runner import _context

    difficulty = estimator if isinstance(estimator, DifficultyReestimator) else None
    fit_cap = estimator == "difficulty"
    if difficulty is None and not fit_cap and estimator != "fitted":
        raise ValueError(
            f"estimator must be 'fitted', 'difficulty' or a DifficultyReestimator, got {estimator!r}"
        )
    bad = [s for s in signals if s not in SIGNALS]
    if bad:
        raise ValueError(f"unknown cascade signals {bad}; choose from {list(SIGNALS)}")
    t0 = time.perf_counter()
    priors = priors or oof_priors(table, factory, folds=folds, seed=seed, inner_folds=inner_folds)
    ev = evidence or table_evidence(table)
    Q, C = table.quality_matrix(), table.cost_matrix()
    cols = np.arange(table.n_models)
    if models is not None:
        names = list(table.models)
        missing = [mm for mm in models if mm not in names]
        if missing:
            raise ValueError(f"models {missing} are not in the table (its models: {names})")
        cols = np.array([names.index(mm) for mm in models])
    Q, C = Q[:, cols], C[:, cols]
    ev = Evidence(ev.codes[:, cols], ev.checks[:, cols], ev.text[:, cols], ev.has[:, cols])
    q_all, c_all = priors["q"][:, cols], priors["c"][:, cols]
    ctx = _context(Q, C)
    lams = ctx["lambdas"] if lambdas is None else np.asarray(lambdas, dtype=float)
    n = Q.shape[0]
    steps = min(max_steps, len(cols))
    firsts = [f for f in firsts if ":" not in f or int(f.split(":", 1)[1]) <= steps]
    # per (first, lambda): pooled out-of-fold traces
    served = {(f, k): np.zeros((steps, n), dtype=np.intp) for f in firsts for k in range(len(lams))}
    pbest = {key: np.zeros((steps, n)) for key in served}
    spent = {key: np.zeros((steps, n)) for key in served}
    calls = {key: np.zeros((steps, n)) for key in served}
    cal: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        "verifier": ([], []),
        "first_answer": ([], []),
    }
    caps: list[float | None] = []
    for fold, test in enumerate(priors["fold_idx"]):
        train = np.setdiff1d(np.arange(n), test, assume_unique=True)
        iq = priors["inner"][fold][0][:, cols]
        ev_t = ev.take(test)
        v_t = None
        if fit_cap:
            ev_tr = _difficulty_train_evidence(signals, ev.take(train), Q[train], inner_folds, seed)
            re_est: Any = DifficultyReestimator(max_score=fit_max_score(iq, ev_tr, Q[train]))
            ev_t, v_t = _difficulty_evidence(signals, ev.take(train), Q[train], ev_t)
        elif difficulty is not None:
            re_est = difficulty
            ev_t, v_t = _difficulty_evidence(signals, ev.take(train), Q[train], ev_t)
        else:
            re_est = Reestimator(signals, max_steps=steps, seed=seed).fit(iq, ev.take(train), Q[train])
        caps.append(getattr(re_est, "max_score", None))
        _calibration(cal, re_est, q_all[test], ev_t, Q[test], v_t)
        for f in firsts:
            for k, lam in enumerate(lams):
                tr = run_policy(
                    re_est,
                    q_all[test],
                    c_all[test],
                    C[test],
                    ev_t,
                    float(lam),
                    first=f,
                    max_steps=steps,
                    max_cost_usd=max_cost_usd,
                )
                served[(f, k)][:, test] = tr.served
                pbest[(f, k)][:, test] = tr.pbest
                spent[(f, k)][:, test] = tr.spent
                calls[(f, k)][:, test] = tr.calls
    rows = np.arange(n)
    points: list[dict[str, Any]] = []
    for (f, k), sv in served.items():
        trace = PolicyTrace(sv, pbest[(f, k)], spent[(f, k)], calls[(f, k)])
        for tau in taus:
            s, sp, nc = trace.at(float(tau))
            qv = Q[rows, s]
            points.append(
                {
                    "first": f,
                    "tradeoff": _num(lams[k]),
                    "tau": float(tau),
                    "cost": float(np.nanmean(sp)),
                    "quality": float(np.nanmean(qv)),
                    "calls": float(nc.mean()),
                }
            )

    def metrics(pts: list[dict[str, Any]]) -> dict[str, Any]:
        xy = np.array([[p["cost"], p["quality"]] for p in pts], dtype=float).reshape(-1, 2)
        a = aiq(xy, ctx["c_min"], ctx["c_max"])
        hull = upper_hull(xy)
        return {
            "aiq": _num(a),
            "gap_closed": _num(gap_closed(a, ctx["single_hull_aiq"], ctx["oracle_aiq"])),
            "cost_ratio_at_best_quality": _num(cost_ratio_at_best_quality(xy, ctx["singles"])),
            "max_quality": _num(hull[:, 1].max()) if len(hull) else None,
            "curve": [[float(x), float(y)] for x, y in hull],
        }

    one = [p for p in points if p["tau"] == 0.0 and p["first"] == "router"]
    out: dict[str, Any] = {
        "name": name,
        "signals": list(signals),
        "estimator": "fitted" if difficulty is None and not fit_cap else "difficulty",
        "max_score": caps,
        "max_steps": steps,
        "max_cost_usd": max_cost_usd,
        "firsts": list(firsts),
        "taus": [float(t) for t in taus],
        "folds": priors["folds"],
        "seed": priors["seed"],
        "models": [list(table.models)[i] for i in cols],
        **metrics(points),
        "one_shot": metrics(one) if one else None,
        "by_first": {f: metrics([p for p in points if p["first"] == f]) for f in firsts},
        "baselines": {
            "single_hull_aiq": _num(ctx["single_hull_aiq"]),
            "oracle_aiq": _num(ctx["oracle_aiq"]),
            "c_min": ctx["c_min"],
            "c_max": ctx["c_max"],
        },
        "points": points,
        "calibration": {
            k: _reliability(np.concatenate(p), np.concatenate(y)) for k, (p, y) in cal.items() if p
        },
        "eval_s": round(time.perf_counter() - t0, 3),
    }
    hull = {(round(x, 15), round(y, 15)) for x, y in out["curve"]}
    out["hull_points"] = [p for p in points if (round(p["cost"], 15), round(p["quality"], 15)) in hull]
    return out
