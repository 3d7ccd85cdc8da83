"""Off-policy evaluation (`llmroute whatif`): what another trade-off, or another router, would
have had on logged decisions.

A *log* is a table with one row per routed request (JSONL or Parquet):

=============  ========================================================================
``prompt``     the prompt text (what the router estimates from)
``model``      the model the logging policy chose
``propensity`` the probability with which the logging policy chose it (in (0, 1])
``quality``    the observed outcome of that answer, in [0, 1]
``cost``       the cost of that request in USD
``tradeoff``   optional: the logging policy's trade-off (reported, not used)
``request_id`` optional: an identifier, passed through
=============  ========================================================================

A gateway trace holds these as ``prompt`` / ``model`` / ``propensity`` / ``outcome`` /
``cost_usd`` on an alias that learns online (`llmroute.gateway.learning`); `read_traces` reads a
trace store into this shape (`llmroute whatif --traces DB`), and `read_log` accepts those names.

The target policy is deterministic: argmax of the router's estimates q - tradeoff * c. For each
of mean quality, mean cost and mean reward (quality - tradeoff * cost) it estimates

- ``ips``: the mean of w_i * y_i, w_i = [target picks a_i] / propensity_i;
- ``snips``: sum w_i y_i / sum w_i (self-normalised: lower variance, slightly biased);
- ``dr``: doubly robust, the router's own estimates as the reward model y_hat:
  mean of y_hat(x_i, target_i) + w_i * (y_i - y_hat(x_i, a_i)).

Intervals are the normal approximation on the per-row terms (mean +- 1.96 standard errors;
for snips the delta-method terms w_i (y_i - V) / mean(w)). The effective sample size is Kish's
(sum w)^2 / sum w^2. Support: the propensity of a model the log never chose is unknown and may be
0; when the target picks such a model on some rows, the estimates cannot see those rows'
outcomes (ips and snips are biased, dr leans on the reward model there) and a warning says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ESTIMATORS",
    "Interval",
    "WhatIfResult",
    "epsilon_greedy_log",
    "offpolicy_estimate",
    "read_log",
    "read_traces",
    "result_json",
    "whatif",
    "write_log",
]

ESTIMATORS = ("ips", "snips", "dr")
_Z95 = 1.959963984540054
_ALIASES = {"outcome": "quality", "cost_usd": "cost", "chosen_model": "model"}


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with its standard error and 95% interval."""

    value: float
    se: float
    lo: float
    hi: float

    @classmethod
    def normal(cls, value: float, se: float) -> Interval:
        return cls(float(value), float(se), float(value - _Z95 * se), float(value + _Z95 * se))

    def covers(self, x: float) -> bool:
        return self.lo <= x <= self.hi


@dataclasses.dataclass
class WhatIfResult:
    """Estimates of the target policy's mean quality, cost and reward on the logged rows."""

    n: int
    tradeoff: float
    models: list[str]
    #: estimator -> {"quality" | "cost" | "reward": Interval}
    estimates: dict[str, dict[str, Interval]]
    ess: float
    #: rows where the target picks the logged model (its weight is non-zero)
    matched: int
    target_shares: dict[str, float]
    logged_shares: dict[str, float]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "tradeoff": self.tradeoff,
            "models": self.models,
            "interval": "normal approximation on the per-row terms, 95%",
            "estimates": {
                e: {k: dataclasses.asdict(v) for k, v in d.items()} for e, d in self.estimates.items()
            },
            "ess": self.ess,
            "matched": self.matched,
            "target_shares": self.target_shares,
            "logged_shares": self.logged_shares,
            "warnings": self.warnings,
        }


def _mean_interval(terms: np.ndarray) -> Interval:
    n = len(terms)
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Interval.normal(float(terms.mean()), se)


def _snips_interval(w: np.ndarray, y: np.ndarray) -> Interval:
    sw = w.sum()
    if sw <= 0:
        return Interval(math.nan, math.inf, -math.inf, math.inf)
    v = float((w * y).sum() / sw)
    psi = w * (y - v) / w.mean()
    n = len(w)
    se = float(psi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Interval.normal(v, se)


def offpolicy_estimate(
    chosen: np.ndarray,
    propensity: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    target: np.ndarray,
    q_hat: np.ndarray | None,
    c_hat: np.ndarray | None,
    *,
    tradeoff: float,
    models: Sequence[str] | None = None,
    logging_probs: np.ndarray | None = None,
) -> WhatIfResult:
    """IPS, SNIPS and DR estimates of a deterministic target policy from logged bandit rows.

    `chosen`, `target`: model column per row (logged choice, target's choice; -1 = a model the
    target cannot pick); `propensity`: the logging probability of `chosen`; `quality`, `cost`:
    the observed outcome; `q_hat`, `c_hat` (n, m): the reward model for DR (None: no DR);
    `logging_probs` (n, m), optional: the logging policy's full distribution per row (the
    learner's `Choice.propensities`), to count rows where the target's pick had probability 0.
    """
    chosen = np.asarray(chosen, dtype=np.intp)
    target = np.asarray(target, dtype=np.intp)
    p = np.asarray(propensity, dtype=float)
    q = np.asarray(quality, dtype=float)
    c = np.asarray(cost, dtype=float)
    n = len(chosen)
    if n < 2:
        raise ValueError("the log needs at least 2 rows for an interval")
    if not (len(p) == len(q) == len(c) == len(target) == n):
        raise ValueError("chosen, propensity, quality, cost and target must have one value per row")
    if not (np.isfinite(p).all() and (p > 0).all() and (p <= 1 + 1e-9).all()):
        bad = int(np.sum(~(np.isfinite(p) & (p > 0) & (p <= 1 + 1e-9))))
        raise ValueError(
            f"{bad} row(s) have a propensity outside (0, 1]: a logged choice has a positive probability; "
            "log the exact probability of each choice (the learner's Choice.propensity)"
        )
    if not (np.isfinite(q).all() and np.isfinite(c).all()):
        raise ValueError("every row needs a finite quality and cost: drop rows without an outcome first")
    m = int(max(chosen.max(), target.max(), -1) + 1)
    if q_hat is not None:
        m = max(m, q_hat.shape[1])
    names = list(models) if models is not None else [f"model-{i}" for i in range(m)]
    lam = float(tradeoff)
    r = q - lam * c
    w = (target == chosen).astype(float) / p
    est: dict[str, dict[str, Interval]] = {"ips": {}, "snips": {}}
    for key, y in (("quality", q), ("cost", c), ("reward", r)):
        est["ips"][key] = _mean_interval(w * y)
        est["snips"][key] = _snips_interval(w, y)
    warnings: list[str] = []
    if q_hat is not None and c_hat is not None:
        rows = np.arange(n)
        tq = np.where(target >= 0, target, 0)
        qh, ch = np.asarray(q_hat, dtype=float), np.asarray(c_hat, dtype=float)
        est["dr"] = {}
        cq = np.clip(chosen, 0, qh.shape[1] - 1)
        for key, y, yh in (("quality", q, qh), ("cost", c, ch), ("reward", r, qh - lam * ch)):
            dm = yh[rows, tq]
            corr = np.where(w > 0, w * (y - np.where(w > 0, yh[rows, cq], 0.0)), 0.0)
            terms = dm + corr
            if not np.isfinite(terms).all():
                warnings.append(f"dr: the reward model has no {key} estimate on some rows; dr skipped")
                est.pop("dr")
                break
            est["dr"][key] = _mean_interval(terms)
    sw, sw2 = float(w.sum()), float((w**2).sum())
    ess = sw * sw / sw2 if sw2 > 0 else 0.0
    matched = int((w > 0).sum())
    logged = set(chosen.tolist())
    for k in sorted(set(target.tolist()) - logged):
        rows_k = int((target == k).sum())
        who = names[k] if 0 <= k < len(names) else f"column {k}"
        warnings.append(
            f"missing support: the target picks {who} on {rows_k} of {n} rows, but the log never chose it "
            f"(propensity 0): ips/snips cannot see those rows and dr relies on the router's estimates there; "
            f"log with exploration that can pick {who}"
        )
    if logging_probs is not None:
        lp = np.asarray(logging_probs, dtype=float)
        tp = np.where(target >= 0, lp[np.arange(n), np.clip(target, 0, lp.shape[1] - 1)], 1.0)
        zero = int((tp <= 0).sum())
        if zero:
            warnings.append(
                f"missing support: on {zero} of {n} rows the target's pick had logging probability 0: "
                "ips/snips cannot see those rows and dr relies on the router's estimates there"
            )
    if matched == 0:
        warnings.append("no logged choice agrees with the target policy: the estimates carry no information")
    elif ess < 30:
        warnings.append(f"effective sample size {ess:.1f} < 30: the normal intervals are unreliable")

    def shares(idx: np.ndarray) -> dict[str, float]:
        return {names[k]: float((idx == k).mean()) for k in range(len(names)) if (idx == k).any()}

    return WhatIfResult(
        n=n,
        tradeoff=lam,
        models=names,
        estimates=est,
        ess=ess,
        matched=matched,
        target_shares=shares(target),
        logged_shares=shares(chosen),
        warnings=warnings,
    )


def read_log(path: str | Path) -> Any:
    """A log table (JSONL or Parquet, columns in the module docstring) as a pandas DataFrame."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such log file")
    df = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_json(p, lines=True)
    df = df.rename(columns={k: v for k, v in _ALIASES.items() if k in df.columns and v not in df.columns})
    missing = [c for c in ("prompt", "model", "propensity", "quality", "cost") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{p}: missing column(s) {', '.join(missing)}; a log needs prompt, model, propensity, quality, cost"
        )
    n0 = len(df)
    df = df.dropna(subset=["quality", "propensity"]).reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{p}: none of the {n0} rows has both an outcome (quality) and a propensity")
    return df


def read_traces(url: str, *, columns: dict[str, str] | None = None, limit: int | None = None) -> Any:
    """The gateway's decision traces (`llmroute.gateway.store` URL or SQLite path) as a log:
    the rows of an alias that learns online (`propensity` logged) whose served model is the one
    the learner chose (a fallback's outcome says nothing about the logged choice), with an
    explicit outcome (`outcome.quality`) and the prompt (the gateway needs
    `trace.store_prompts: true`). Columns: prompt, model, propensity, quality, cost, tradeoff,
    request_id, alias. `columns`: gateway model name -> router column (the config's
    `router_model`), so the target router's estimates line up with the logged models."""
    import pandas as pd

    from llmroute.gateway.store import open_store

    if not url.startswith(("postgres://", "postgresql://", "memory://")):
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such trace store")
    with open_store(url, journal=False) as st:
        rows = st.query(limit=limit)
    keep = []
    prompts = 0
    for r in rows:
        out, feat = r.get("outcome"), r.get("learner")
        if r.get("propensity") is None or not isinstance(feat, dict) or r.get("model") != feat.get("chosen"):
            continue
        prompts += r.get("prompt") is not None
        q = out.get("quality") if isinstance(out, dict) else None
        if q is None or r.get("prompt") is None:
            continue
        keep.append(
            {
                "prompt": r["prompt"],
                "model": (columns or {}).get(r["model"], r["model"]),
                "propensity": float(r["propensity"]),
                "quality": float(q),
                "cost": float(r.get("cost_usd") or 0.0),
                "tradeoff": feat.get("lambda"),
                "request_id": r["request_id"],
                "alias": r.get("alias"),
            }
        )
    if not keep:
        why = (
            "none of them stores its prompt: set trace.store_prompts: true in the gateway config"
            if prompts == 0
            else "none of them has an explicit outcome (POST /v1/feedback quality)"
        )
        raise ValueError(f"{url}: no usable logged decision (learning aliases' traces); {why}")
    return pd.DataFrame(keep)


def write_log(df: Any, path: str | Path) -> Path:
    """Write a log DataFrame as Parquet (``.parquet``) or JSONL (anything else)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix in (".parquet", ".pq"):
        df.to_parquet(p, index=False)
    else:
        df.to_json(p, orient="records", lines=True)
    return p


def _router_choices(router: Any, prompts: list[str], tradeoff: float) -> tuple[np.ndarray, ...]:
    from llmroute.policy import choose

    q_hat, c_hat = router.estimate(prompts)
    return np.asarray(choose(q_hat, c_hat, tradeoff=tradeoff)), np.asarray(q_hat), np.asarray(c_hat)


def whatif(log: Any, router: Any, tradeoff: float) -> WhatIfResult:
    """Estimate what `router` at `tradeoff` would have had on the rows of `log` (a DataFrame
    from `read_log`); logged models the router does not know count as never picked by it."""
    models = list(router.models)
    extra = sorted(set(log["model"]) - set(models))
    names = models + extra
    col = {m: i for i, m in enumerate(names)}
    chosen = np.array([col[m] for m in log["model"]], dtype=np.intp)
    target, q_hat, c_hat = _router_choices(router, [str(x) for x in log["prompt"]], tradeoff)
    if extra:
        pad = np.full((len(log), len(extra)), np.nan)
        q_hat, c_hat = np.hstack([q_hat, pad]), np.hstack([c_hat, pad])
    res = offpolicy_estimate(
        chosen,
        log["propensity"].to_numpy(float),
        log["quality"].to_numpy(float),
        log["cost"].to_numpy(float),
        target,
        q_hat,
        c_hat,
        tradeoff=tradeoff,
        models=names,
    )
    if extra:
        res.warnings.append(f"the router does not know logged model(s) {', '.join(extra)}: weight 0 there")
    return res


def epsilon_greedy_log(
    table: Any, router: Any, *, tradeoff: float, epsilon: float = 0.2, seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """Replay `table`'s prompts under an epsilon-greedy logging policy (the router's choice at
    `tradeoff`, else with probability `epsilon` a uniformly random model) and reveal only the
    chosen model's outcome. Returns the log DataFrame and, for checking estimators, the full
    information the log hides: ``{"Q", "C", "models"}`` (prompt rows in log order)."""
    import pandas as pd

    from llmroute.online.simulate import complete_table

    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"--epsilon must be in (0, 1], got {epsilon}: the log needs exploration")
    table = complete_table(table)
    models = list(table.models)
    missing = [m for m in models if m not in router.models]
    if missing:
        raise ValueError(f"the router does not know the table's model(s) {', '.join(missing)}")
    Q, C = table.quality_matrix(), table.cost_matrix()
    prompts = list(table.prompts)
    greedy, _, _ = _router_choices(router, prompts, tradeoff)
    greedy = np.array([models.index(router.models[k]) if router.models[k] in models else -1 for k in greedy])
    rng = np.random.default_rng(seed)
    n, m = Q.shape
    explore = rng.random(n) < epsilon
    pick = np.where(explore | (greedy < 0), rng.integers(0, m, n), greedy)
    prop = np.where(greedy < 0, 1.0 / m, np.where(pick == greedy, 1 - epsilon, 0.0) + epsilon / m)
    rows = np.arange(n)
    df = pd.DataFrame(
        {
            "request_id": [str(i) for i in table.prompt_ids],
            "prompt": prompts,
            "model": [models[k] for k in pick],
            "propensity": prop,
            "quality": Q[rows, pick],
            "cost": C[rows, pick],
            "tradeoff": float(tradeoff),
        }
    )
    return df, {"Q": Q, "C": C, "models": models}


def result_json(res: WhatIfResult, extra: dict[str, Any] | None = None) -> str:
    """The result as indented JSON (non-finite numbers as null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean({**res.to_dict(), **(extra or {})}), indent=1)
