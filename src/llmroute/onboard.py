"""Add, replace and remove a router's models from their profiles, without retraining.

A profile is a long-format routing table (the training format; `llmroute profile` writes one)
with a few graded prompts for the new model. `add_model(router, name, profile)` fits the new
model's quality as a combination of the known models' estimates plus a prompt-dependent
residual (`llmroute.estimators.profiled`), its cost from the profile's token counts and costs
(or a given price), and, when the router has a regime head, its everyday ability. Every known
model's estimates stay exactly as they were; `remove_model` undoes an add.

    from llmroute import Router
    r = Router.load("my-router.safetensors")
    r.add_model("my-new-model", "profile.parquet", price=ModelPrice(0.5, 1.5))
    r.remove_model("gpt-3.5-turbo-1106")
    r.save("my-router-v2.safetensors")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmroute.data.table import ModelPrice, RoutingTable
from llmroute.estimators.profiled import ProfiledEstimator, calibrate_z, fit_profile

if TYPE_CHECKING:
    from llmroute.router import Router

__all__ = [
    "ADD_METHODS",
    "ProfileData",
    "add_model",
    "auto_method",
    "calibrate_margin",
    "known_grades",
    "list_models",
    "margin_z",
    "profile_data",
    "profile_table",
    "remove_model",
]

#: how `add_model` fits the new model's quality column: "auto" (the default) picks "paired" or
#: "ridge" from what the profile holds (`auto_method`); "factor" is
#: `llmroute.estimators.profiled_factor`, the rest `llmroute.estimators.profiled.METHODS`
ADD_METHODS = ("auto", "ridge", "paired", "margin", "factor", "task", "region")
#: "auto" pairs a profile when at least this many of its prompts (and at least half) have the
#: known models' grades: the pairing's cross-fitted control variate needs that many rows
MIN_PAIRED_ROWS = 10


class ProfileData:
    """One model's graded profile rows: prompts, qualities, token counts and costs (NaN = unknown)."""

    def __init__(
        self,
        prompts: list[str],
        quality: np.ndarray,
        input_tokens: np.ndarray,
        output_tokens: np.ndarray,
        cost: np.ndarray,
        price: ModelPrice | None,
        tasks: list[str] | None = None,
    ) -> None:
        self.prompts = prompts
        #: each prompt's task label ('' = none), from the profile table's `task` column
        self.tasks = tasks if tasks is not None else [""] * len(prompts)
        self.quality = quality
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cost = cost
        self.price = price


def profile_table(profile: RoutingTable | str | Path) -> RoutingTable:
    """A profile given as a `RoutingTable` or a path (`llmroute.data.load_table`), as a table."""
    if isinstance(profile, RoutingTable):
        return profile
    from llmroute.data import load_table

    return load_table(profile)


def profile_data(profile: RoutingTable | str | Path, model: str) -> ProfileData:
    """The graded rows of `model` in a profile table (a path or a `RoutingTable`).

    A table that holds exactly one model is that model's profile whatever its name. Raises
    ValueError when the model is absent or none of its rows has a quality.
    """
    table = profile_table(profile)
    source = model
    if model not in table.models:
        if len(table.models) != 1:
            raise ValueError(
                f"profile {table.source} has no rows for model {model!r}; it has {table.models}. "
                "Name the profile's model (--profile-model / profile_model=)"
            )
        source = table.models[0]
    j = table.models.index(source)
    q = table.quality_matrix()[:, j]
    graded = np.flatnonzero(np.isfinite(q))
    if len(graded) == 0:
        raise ValueError(
            f"profile {table.source} has no graded rows for {source!r} (every quality is empty): "
            "grade the answers first (llmroute profile grades them)"
        )
    prompts, tasks = table.prompts, table.tasks
    price = (table.prices or {}).get(source)
    return ProfileData(
        prompts=[prompts[i] for i in graded],
        tasks=[tasks[i] for i in graded],
        quality=q[graded].astype(np.float64),
        input_tokens=table.matrix("input_tokens")[graded, j],
        output_tokens=table.matrix("output_tokens")[graded, j],
        cost=table.cost_matrix()[graded, j],
        price=price,
    )


def _profiled(router: Router) -> ProfiledEstimator:
    """The router's estimator as a ProfiledEstimator (wrapping it the first time)."""
    est = router.estimator
    if not isinstance(est, ProfiledEstimator):
        est = ProfiledEstimator(est, len(router.models))
        router.estimator = est
    return est


def add_model(
    router: Router,
    name: str,
    profile: RoutingTable | str | Path,
    price: ModelPrice | None = None,
    *,
    profile_model: str | None = None,
    z: float | None = None,
    reference: RoutingTable | str | Path | None = None,
    method: str = "auto",
) -> dict[str, Any]:
    """Add model `name` to `router` (in place) from its profile; returns a summary dict.

    profile: a routing table (path or `RoutingTable`) with graded rows for the model (named
    `profile_model`, default `name`; a one-model table needs no name); price: USD per 1M tokens
    (default: the profile table's price, else the profile's observed costs); z: standard errors
    by which an uncertain model is estimated below its fitted quality at each prompt (None:
    the router's calibrated z for the profile's size, `calibrate_margin`, with method "margin";
    else 1);
    method: how the quality column is fitted (`ADD_METHODS`). The default "auto" is "paired"
    when the known models' grades are found for most of the profile's prompts (in the profile
    table or `reference`), else "ridge" (`auto_method`; the summary's "method" says which ran:
    on the leave-one-model-out benchmark paired recovers more at every profile size with fewer
    and smaller hurts, while the Bayesian weights without pairing hurt more than ridge,
    docs/onboarding-notes.md). With "paired" the known models' own rows in the profile table (`llmroute profile
    --models new,known...` writes them) or in `reference` (a table with their grades on the
    profile prompts, e.g. the router's training table) are paired with the new model's grades
    on the same prompts, which removes much of a small profile's noise; "task" is "paired" plus
    a per-task offset (`llmroute.estimators.profiled_task`: the task labels of the profile and
    of `reference`, the training table, train a task classifier kept in the router); "region" is
    "task" with each region's offset (tasks, else clusters of the embedding) shrunk by a prior
    measured on the known models re-onboarded from the same prompts, their regional offsets on
    `reference`'s rows (`llmroute.estimators.profiled_region`). With "factor"
    (`llmroute.estimators.profiled_factor`) the new model is a vector in a low-rank model of
    the known models' grades, fitted once on the router's training table: the first factor
    add needs it as `reference`; the router keeps the factor model for later adds.
    Existing models' estimates are unchanged. Raises ValueError for a name already routed or a
    profile without graded rows.
    """
    if method not in ADD_METHODS:
        raise ValueError(f"unknown add method {method!r}; use one of {', '.join(ADD_METHODS)}")
    if name in router.models:
        raise ValueError(
            f"model {name!r} is already in this router; remove it first (llmroute models remove) "
            "to replace it, or pick another name"
        )
    data = profile_data(profile, profile_model or name)
    X = router.featurize(data.prompts)
    est = _profiled(router)
    # profile prompts from the router's own training table: leave-self-out estimates (as a new
    # prompt would get at routing time); prompts the router never saw: unchanged
    base_q = est.base_estimates(X, exclude_self=True)
    known = None
    requested = method
    if method in ("auto", "paired", "margin", "task", "region"):
        tables = [profile_table(profile), *([reference] if reference is not None else [])]
        known = known_grades(router, data.prompts, tables)
        if method == "auto":
            method = auto_method(known)
            known = known if method == "paired" else None
    if z is None:
        z = margin_z(router, len(data.quality)) if method == "margin" else 1.0
    if method == "factor":
        fit: Any
        fit, known = _factor_fit(router, est, data, X, base_q, profile, reference, 1.0 if z is None else z)
    elif method in ("task", "region"):
        if method == "task":
            task_model = _task_model(router, est, profile, reference)
        else:
            task_model = _region_model(router, est, data, X, profile, reference)
        member = None if task_model is None else task_model.membership(X.emb, data.tasks)
        fit = fit_profile(
            base_q,
            X.emb,
            data.quality,
            z=z,
            known=known,
            method=method,
            task_model=task_model,
            task_member=member,
            region_prior=est.region_stats_ if method == "region" else None,
        )
    else:
        fit = fit_profile(base_q, X.emb, data.quality, z=z, known=known, method=method)
    tin = np.where(np.isfinite(data.input_tokens), data.input_tokens, router.cost.count_tokens(data.prompts))
    known_q = router._quality(X)  # before the add: the estimates `route` makes for known models
    known_out = router.cost.tokens(data.prompts, X)[1][:, : router.cost.n_known].mean(axis=1)
    est.add(fit)
    router.cost.add_model(name, tin, data.output_tokens, data.cost, price or data.price, known_out)
    head = router.regime_head
    if head is not None:
        # everyday ability: the known models' abilities, shifted by how the new model did on the
        # profile against their estimates there (mean over known models)
        offsets = head.ability_ - known_q.mean(axis=0)
        ability = float(np.clip(data.quality.mean() + offsets.mean(), 0.0, 1.0))
        head.ability_ = np.append(head.ability_, ability)
        # "observed" only in sets that observed every known model (the others keep their
        # reference mean, so known models' mixtures stay the same)
        head.supports_ = np.column_stack([head.supports_, head.supports_.all(axis=1)])
    router.models.append(name)
    router._index = {m: j for j, m in enumerate(router.models)}
    router._cache.clear()
    closest = router.models[est.columns_.index(fit.closest)] if fit.closest in est.columns_ else None
    summary = {
        "model": name,
        "profile_rows": fit.n_rows,
        "profile_mean_quality": float(data.quality.mean()),
        "closest_known_model": closest,
        "loo_rmse": None if not np.isfinite(fit.loo_rmse) else round(float(fit.loo_rmse), 4),
        "shift": round(fit.margin, 4),
        "method": method,
        "requested_method": requested,
        "z": z,
        "paired_rows": 0 if known is None else int(np.isfinite(known).any(axis=1).sum()),
        "residual": fit.beta > 0,
        "cost_mode": router.cost.modes[name],
    }
    router.info.setdefault("mean_quality", {})[name] = float(data.quality.mean())
    router.info.setdefault("profiled_models", {})[name] = summary
    return summary


def calibrate_margin(
    router: Router,
    table: RoutingTable | str | Path,
    ks: tuple[int, ...] = (25, 50, 100, 200),
    *,
    max_prompts: int = 3000,
    seed: int = 0,
) -> dict[str, float]:
    """Calibrate the "margin" method's z on the router's training table (in place; returns it).

    For each profile size k: the smallest z under which re-onboarding each known model from k
    of its training prompts (its grades paired with the others') hurts no simulated router on
    the rest of the prompts by more than 0.005 of gap closed (`calibrate_z`). Stored in
    `router.info["margin_z"]` ({k: z}); `add_model(method="margin")` uses the z of the nearest
    k (on a log scale). table: the router's training table (at most `max_prompts` of its
    prompts are used, drawn with `seed`); it must grade every routed model.
    """
    from llmroute.eval.runner import with_cost_fallback

    est = _profiled(router)
    base_models: list[str] = [""] * est.n_base
    for j, ref in enumerate(est.columns_):
        if ref >= 0:
            base_models[ref] = router.models[j]
    t, _ = with_cost_fallback(profile_table(table))
    missing = [m for m in base_models if m and m not in t.models]
    if missing or "" in base_models:
        raise ValueError(
            f"the calibration table must grade every trained model the router routes; missing "
            f"{missing or 'a removed model'}: pass the router's training table"
        )
    ids = t.prompt_ids
    if len(ids) > max_prompts:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), max_prompts, replace=False))
        t = t.subset([ids[i] for i in keep])
    cols = [t.models.index(m) for m in base_models]
    Q, C = t.quality_matrix()[:, cols], t.cost_matrix()[:, cols]
    X = router.featurize(t.prompts)
    # the training prompts' leave-self-out estimates, for the simulated adds and the simulated
    # routers alike: in-sample estimates are sharper than routing meets (a safer-looking z)
    P = est.base_estimates(X, exclude_self=True)
    q_all, c_all = router.estimate(t.prompts)
    at = [est.columns_.index(b) for b in range(est.n_base)]
    q_hat, c_hat = (P if router.regime_head is None else q_all[:, at]), c_all[:, at]
    out = {str(k): calibrate_z(P, Q, q_hat, c_hat, C, X.emb, k, seed=seed + i)[0] for i, k in enumerate(ks)}
    router.info["margin_z"] = out
    return out


def margin_z(router: Router, k: int) -> float:
    """The calibrated z (`calibrate_margin`) for a profile of k rows: that of the nearest
    calibrated size on a log scale; 1.0 when the router was not calibrated."""
    zs: Mapping[str, float] = router.info.get("margin_z") or {}
    if not zs:
        return 1.0
    near = min(zs, key=lambda s: abs(np.log(int(s)) - np.log(max(k, 1))))
    return float(zs[near])


def _factor_fit(
    router: Router,
    est: ProfiledEstimator,
    data: ProfileData,
    X: Any,
    base_q: np.ndarray,
    profile: RoutingTable | str | Path,
    reference: RoutingTable | str | Path | None,
    z: float,
) -> tuple[Any, np.ndarray | None]:
    """Method "factor": the router's factor model (fitted on `reference`, the training table,
    the first time) and the new model's vector from its profile, paired with the known models'
    grades on the same prompts where the profile or the reference holds them: (fit, those grades)."""
    from llmroute.estimators.profiled_factor import fit_factor_model, fit_factor_profile

    ref = profile_table(reference) if reference is not None else None
    if est.factor_ is None:
        if ref is None:
            raise ValueError(
                "method 'factor' fits a factor model of the known models on the router's training "
                "table once: pass it as reference (--reference TRAIN_TABLE); later adds reuse it"
            )
        grades = known_grades(router, ref.prompts, [ref])
        if grades is None:
            raise ValueError(
                f"reference {ref.source} grades none of the router's models {router.models}: "
                "pass the router's training table"
            )
        keep = np.isfinite(grades).any(axis=1)
        Xr = router.featurize([p for p, k in zip(ref.prompts, keep, strict=True) if k])
        est.factor_ = fit_factor_model(grades[keep], est.base_estimates(Xr, exclude_self=True), Xr.emb)
    known = known_grades(router, data.prompts, [profile_table(profile), *([ref] if ref is not None else [])])
    return fit_factor_profile(est.factor_, base_q, X.emb, data.quality, known=known, z=z), known


def _task_model(
    router: Router,
    est: ProfiledEstimator,
    profile: RoutingTable | str | Path,
    reference: RoutingTable | str | Path | None,
) -> Any:
    """Method "task": the router's task classifier p(t | x) (`TaskModel`), fitted the first time
    on the labelled prompts of `reference` (the router's training table) and of the profile
    (at most `MAX_TASK_ROWS`, drawn with seed 0), then kept in the router; None when they hold
    fewer than two tasks (the method is then "paired" exactly)."""
    from llmroute.estimators.profiled_task import MAX_TASK_ROWS, fit_task_model

    if est.tasks_ is not None:
        return est.tasks_
    label: dict[str, str] = {}
    for t in [*([reference] if reference is not None else []), profile]:
        table = profile_table(t)
        for p, task in zip(table.prompts, table.tasks, strict=True):
            if task:
                label.setdefault(p, task)
    if len(set(label.values())) < 2:
        return None
    texts = list(label)
    if len(texts) > MAX_TASK_ROWS:
        keep = np.sort(np.random.default_rng(0).choice(len(texts), MAX_TASK_ROWS, replace=False))
        texts = [texts[i] for i in keep]
    est.tasks_ = fit_task_model(router.featurize(texts).emb, [label[p] for p in texts])
    return est.tasks_


def _region_model(
    router: Router,
    est: ProfiledEstimator,
    data: ProfileData,
    X: Any,
    profile: RoutingTable | str | Path,
    reference: RoutingTable | str | Path | None,
) -> Any:
    """Method "region": the router's regions p(t | x) (a `TaskModel`) and, from `reference` (the
    training table: at most `MAX_ROWS` of its prompts, drawn with seed 0), the statistics of the
    known models' grades and leave-self-out estimates per region (`region_stats`), both fitted
    the first time and kept in the router. Regions are the task labels of `reference` and the
    profile when they hold two tasks, else k-means clusters of the reference's (or, without one,
    the profile's) embeddings. None when no regions can be formed (the method is then "paired")."""
    from llmroute.estimators.profiled_region import MAX_ROWS, cluster_labels, region_stats
    from llmroute.estimators.profiled_task import fit_task_model

    if est.regions_ is not None:
        return est.regions_
    ref = profile_table(reference) if reference is not None else None
    label: dict[str, str] = {}
    for t in [*([ref] if ref is not None else []), profile_table(profile)]:
        for p, task in zip(t.prompts, t.tasks, strict=True):
            if task:
                label.setdefault(p, task)
    texts = list(dict.fromkeys(ref.prompts)) if ref is not None else list(dict.fromkeys(data.prompts))
    if len(texts) > MAX_ROWS:
        keep = np.sort(np.random.default_rng(0).choice(len(texts), MAX_ROWS, replace=False))
        texts = [texts[i] for i in keep]
    Xr = X if ref is None and texts == data.prompts else router.featurize(texts)
    if len(set(label.values())) >= 2:
        labels = [label.get(p, "") for p in texts]
        # the classifier: the labelled truth prompts and the profile's (its own labels)
        emb = Xr.emb if ref is None else np.vstack([Xr.emb, X.emb])
        model = fit_task_model(emb, labels if ref is None else [*labels, *data.tasks])
    else:
        labels = cluster_labels(Xr.emb)
        model = fit_task_model(Xr.emb, labels)
    if model is None:
        return None
    est.regions_ = model
    if ref is not None:
        grades = known_grades(router, texts, [ref])
        if grades is not None:
            P = est.base_estimates(Xr, exclude_self=True)
            est.region_stats_ = region_stats(grades, P, model.membership(Xr.emb, labels))
    return model


def auto_method(known: np.ndarray | None) -> str:
    """The fit "auto" picks from the known models' grades on the profile prompts
    (`known_grades`): "paired" when at least `MIN_PAIRED_ROWS` and at least half of the
    profile's prompts have one, else "ridge"."""
    if known is None:
        return "ridge"
    paired = int(np.isfinite(known).any(axis=1).sum())
    return "paired" if paired >= MIN_PAIRED_ROWS and 2 * paired >= len(known) else "ridge"


def known_grades(
    router: Router, prompts: list[str], tables: list[RoutingTable | str | Path]
) -> np.ndarray | None:
    """(k, n_base) the router's base models' grades on `prompts` (matched by prompt text) from
    the first of `tables` that has one, NaN where none has; None when no table grades any of
    them. A base model the router no longer routes (removed) stays NaN."""
    est = _profiled(router)
    names: list[str | None] = [None] * est.n_base
    for j, ref in enumerate(est.columns_):
        if ref >= 0:
            names[ref] = router.models[j]
    out = np.full((len(prompts), est.n_base), np.nan)
    row = {p: i for i, p in enumerate(prompts)}
    for t in tables:
        table = profile_table(t)
        Q = table.quality_matrix()
        at = [(row[p], i) for i, p in enumerate(table.prompts) if p in row]
        if not at:
            continue
        dst, src = np.array(at).T
        for c, name in enumerate(names):
            if name is not None and name in table.models:
                col = out[dst, c]
                fill = np.isnan(col)
                col[fill] = Q[src[fill], table.models.index(name)]
                out[dst, c] = col
    return out if np.isfinite(out).any() else None


def remove_model(router: Router, name: str) -> None:
    """Remove model `name` from `router` (in place). Models added from a profile that combine
    its estimates keep working (the column is still computed, just not routed to)."""
    if name not in router.models:
        raise ValueError(f"model {name!r} is not in this router; its models are {router.models}")
    if len(router.models) == 1:
        raise ValueError(f"cannot remove {name!r}: it is the router's only model")
    j = router.models.index(name)
    head = router.regime_head
    if head is not None:
        sup = np.delete(head.supports_, j, axis=1)
        if not sup.any(axis=1).all():
            raise ValueError(
                f"cannot remove {name!r}: it is the only model observed on one of the router's "
                "training sets (retrain without it instead)"
            )
    est = _profiled(router)
    est.remove(j)
    router.cost.remove_model(name)
    if head is not None:
        head.ability_ = np.delete(head.ability_, j)
        head.supports_ = sup
    router.models.pop(j)
    router._index = {m: k for k, m in enumerate(router.models)}
    router._cache.clear()
    pol = router.policy
    if name in (pol.get("strong"), pol.get("weak")) or name in (pol.get("score_pair") or ()):
        # the strong/weak pair (and a threshold calibrated on it) no longer exists
        for key in ("strong", "weak", "threshold", "strong_share", "score_quantiles", "score_pair"):
            pol[key] = None
    for key in ("mean_quality", "profiled_models"):
        router.info.get(key, {}).pop(name, None)


def list_models(router: Router) -> list[dict[str, Any]]:
    """One dict per routed model: name, how it is known (trained / profile), its mean quality
    in the training table or profile, and how its cost is estimated."""
    prof: Mapping[str, Any] = router.info.get("profiled_models", {})
    means: Mapping[str, Any] = router.info.get("mean_quality", {})
    modes = router.cost.modes
    return [
        {
            "model": m,
            "source": "profile" if m in prof else "trained",
            "mean_quality": means.get(m),
            "profile_rows": prof.get(m, {}).get("profile_rows"),
            "cost_mode": modes.get(m),
        }
        for m in router.models
    ]
