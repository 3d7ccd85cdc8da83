""" "Is this model worth adding?": an HTML report on profiled models against a router.

`write_report(router, profile, out)` reads a profile table (one or more models, graded), adds
every profiled model the router lacks (`llmroute.onboard.add_model`; the router is left as it
was afterwards) and, on the profile's prompts as a sample of traffic, shows:

- each profiled model's measured quality by task and its mean cost per call (the profile's own
  numbers);
- the router's expected cost-quality curve (a trade-off sweep over its estimates) with and
  without the new models, and the share of prompts each new model would get at each point;
- the expected saving: the least expected cost at which the router with the new models reaches
  the quality of the router without them (at its default trade-off), against that router's cost.

The HTML embeds its chart as a PNG (written beside it too) and links nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmroute.data.table import RoutingTable

if TYPE_CHECKING:
    from llmroute.router import Router

__all__ = ["profile_report", "write_report"]


def _curve(q: np.ndarray, c: np.ndarray, lambdas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points (L, 2) of mean expected cost and quality, picks (L, n)) over the trade-offs."""
    from llmroute.policy import choose

    picks = np.stack([choose(q, c, tradeoff=float(lam)) for lam in lambdas])
    rows = np.arange(q.shape[0])
    pts = np.array([[c[rows, p].mean(), q[rows, p].mean()] for p in picks])
    return pts, picks


def profile_report(router: Router, profile: RoutingTable | str | Path) -> dict[str, Any]:
    """The report's numbers as a dict (see the module docstring); `router` is unchanged after."""
    from llmroute.onboard import add_model, profile_table
    from llmroute.policy import tradeoff_grid

    table = profile_table(profile)
    Q = table.quality_matrix()
    C = table.cost_matrix()
    tasks = np.array([t.split("/")[0] if t else "(no task)" for t in table.tasks])
    per_model: list[dict[str, Any]] = []
    for j, m in enumerate(table.models):
        ok = np.isfinite(Q[:, j])
        by_task = {
            t: {"quality": float(Q[ok & (tasks == t), j].mean()), "n": int((ok & (tasks == t)).sum())}
            for t in sorted(set(tasks[ok]))
        }
        cost = C[:, j][np.isfinite(C[:, j])]
        per_model.append(
            {
                "model": m,
                "graded_rows": int(ok.sum()),
                "mean_quality": float(Q[ok, j].mean()) if ok.any() else None,
                "by_task": by_task,
                "mean_cost_usd": float(cost.mean()) if len(cost) else None,
                "in_router": m in router.models,
            }
        )
    prompts = table.prompts
    q0, c0 = router.estimate(prompts)
    known = list(router.models)
    added: list[str] = []
    try:
        for row in per_model:
            if not row["in_router"] and row["graded_rows"] > 0:
                row["fit"] = add_model(router, row["model"], table)
                added.append(row["model"])
        q1, c1 = router.estimate(prompts) if added else (q0, c0)
    finally:
        for m in reversed(added):
            router.remove_model(m)
    scale = float(np.median(c1[c1 > 0])) if (c1 > 0).any() else 1.0
    lambdas = tradeoff_grid(scale)
    pts0, _ = _curve(q0, c0, lambdas)
    pts1, picks1 = _curve(q1, c1, lambdas)
    models1 = known + added
    shares = {m: [float((p == models1.index(m)).mean()) for p in picks1] for m in added}
    lam0 = float(router.policy.get("tradeoff") or 0.0)
    ref0, _ = _curve(q0, c0, np.array([lam0]))
    q_ref, c_ref = float(ref0[0, 1]), float(ref0[0, 0])
    reach = pts1[pts1[:, 1] >= q_ref - 1e-12]
    c_with = float(reach[:, 0].min()) if len(reach) else None
    saving = None if c_with is None or c_ref <= 0 else 1.0 - c_with / c_ref
    return {
        "profile": str(table.source),
        "n_prompts": table.n_prompts,
        "models": per_model,
        "known_models": known,
        "added_models": added,
        "lambdas": lambdas.tolist(),
        "curve_without": pts0.tolist(),
        "curve_with": pts1.tolist(),
        "pick_share_with": shares,
        "singles_with": {m: [float(c1[:, k].mean()), float(q1[:, k].mean())] for k, m in enumerate(models1)},
        "reference": {"tradeoff": lam0, "quality": q_ref, "cost_usd": c_ref},
        "cost_with_at_reference_quality": c_with,
        "expected_saving": saving,
    }


def _png(rep: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    w, wo = np.array(rep["curve_with"]), np.array(rep["curve_without"])
    ax.plot(wo[:, 0], wo[:, 1], "-", color="0.5", label="router without the new models")
    ax.plot(w[:, 0], w[:, 1], "-", color="C0", label="router with them")
    for m, (c, q) in rep["singles_with"].items():
        new = m in rep["added_models"]
        ax.plot([c], [q], "*" if new else "o", color="C3" if new else "0.3", ms=11 if new else 5)
        ax.annotate(m, (c, q), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for m, share in rep["pick_share_with"].items():
        s = np.array(share)
        on = s > 0
        ax.scatter(w[on, 0], w[on, 1], s=10 + 120 * s[on], alpha=0.35, label=f"{m} picked (size = share)")
    ax.set_xscale("log")
    ax.set_xlabel("expected cost per prompt (USD, log)")
    ax.set_ylabel("expected quality")
    ax.set_title("Where the new models would be picked")
    ax.legend(fontsize=7, loc="lower right")
    tasks = sorted({t for r in rep["models"] for t in r["by_task"]})
    width = 0.8 / max(len(rep["models"]), 1)
    for k, r in enumerate(rep["models"]):
        vals = [r["by_task"].get(t, {}).get("quality", np.nan) for t in tasks]
        ax2.bar(np.arange(len(tasks)) + k * width, vals, width, label=r["model"])
    ax2.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right", fontsize=7)
    ax2.set_ylabel("measured quality (profile)")
    ax2.set_ylim(0, 1.05)
    ax2.set_title("Quality by task")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else html.escape(str(x))


def _html(rep: dict[str, Any], png: bytes) -> str:
    e = html.escape
    rows = []
    for r in rep["models"]:
        tasks = ", ".join(f"{e(t)} {v['quality']:.2f} (n={v['n']})" for t, v in r["by_task"].items())
        status = "in the router" if r["in_router"] else "added from the profile"
        fit = r.get("fit") or {}
        rows.append(
            f"<tr><td>{e(r['model'])}</td><td>{status}</td><td>{r['graded_rows']}</td>"
            f"<td>{_fmt(r['mean_quality'])}</td><td>{_fmt(r['mean_cost_usd'])}</td><td>{tasks}</td>"
            f"<td>{e(str(fit.get('closest_known_model') or '-'))}</td></tr>"
        )
    share_rows = []
    lam = rep["lambdas"]
    for m, share in rep["pick_share_with"].items():
        s = np.array(share)
        top = int(np.argmax(s))
        share_rows.append(
            f"<tr><td>{e(m)}</td><td>{s[0]:.0%}</td><td>{s.max():.0%} (trade-off {lam[top]:.3g})</td>"
            f"<td>{s[-1]:.0%}</td></tr>"
        )
    ref = rep["reference"]
    saving = rep["expected_saving"]
    verdict = (
        "no new model to assess (every profiled model is already in the router)"
        if not rep["added_models"]
        else (
            f"reaches the same expected quality ({ref['quality']:.3f}) for "
            f"{_fmt(rep['cost_with_at_reference_quality'])} USD per prompt instead of "
            f"{_fmt(ref['cost_usd'])}: an expected saving of {saving:.1%}"
            if saving is not None
            else "never reaches the quality of the router without them on these prompts"
        )
    )
    img = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llmroute: is this model worth adding?</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
th{{background:#f3f3f3}}</style></head><body>
<h1>Is this model worth adding?</h1>
<p>Profile <code>{e(rep["profile"])}</code>: {rep["n_prompts"]} prompts. Router models:
{e(", ".join(rep["known_models"]))}. New models: {e(", ".join(rep["added_models"]) or "none")}.</p>
<h2>Verdict</h2><p>With the new models, the router (default trade-off {ref["tradeoff"]:.3g}) {verdict}.
Expected numbers are the router's own estimates on the profile's prompts (a sample of your
traffic); measured numbers are the profile's grades and costs.</p>
<h2>Models</h2><table><tr><th>model</th><th>status</th><th>graded rows</th><th>measured quality</th>
<th>mean cost per call (USD)</th><th>quality by task</th><th>closest known model</th></tr>
{"".join(rows)}</table>
<h2>Where the router would pick each new model</h2>
<table><tr><th>model</th><th>share at trade-off 0 (best quality)</th><th>largest share</th>
<th>share at the cheapest end</th></tr>{"".join(share_rows)}</table>
<img alt="cost-quality curves and quality by task" src="data:image/png;base64,{img}" style="max-width:100%">
<h2>Definitions</h2><p>Curve: for each trade-off &lambda;, every prompt goes to the model with the
highest expected quality minus &lambda; times expected cost; a point is the mean expected cost and
quality of those picks. Expected saving: 1 - (least expected cost of the router with the new models
at the quality the router without them reaches at its default trade-off) / (that router's cost).
</p></body></html>
"""


def write_report(router: Router, profile: RoutingTable | str | Path, out: str | Path) -> dict[str, Path]:
    """Write the report to `out` (HTML) and its chart beside it (`<out stem>.png`); returns both
    paths. The router is unchanged afterwards."""
    rep = profile_report(router, profile)
    png = _png(rep)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_path = out.with_suffix(".png")
    png_path.write_bytes(png)
    out.write_text(_html(rep, png), encoding="utf-8")
    return {"html": out, "png": png_path}
