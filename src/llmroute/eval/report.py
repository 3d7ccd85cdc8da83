"""Write evaluation outputs: results.json, curves.png and a self-contained report.html.

`write_report(results, out_dir)` takes one `evaluate()` result (or a list of them, one per
dataset) and writes the three files. The HTML embeds the plot as a base64 PNG, so it can be
mailed or opened offline.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "render_html", "write_report"]


def _as_list(results: dict | Sequence[dict]) -> list[dict]:
    return [results] if isinstance(results, dict) else list(results)


def plot_curves(results: dict | Sequence[dict], path: str | Path | None = None) -> bytes:
    """Cost (log axis) vs quality: every router's curve, single models, oracle and random.

    One panel per dataset. Returns the PNG bytes (and writes them to `path` when given).
    """

    from matplotlib.figure import Figure

    sets = _as_list(results)
    cols = min(len(sets), 2)
    rows = math.ceil(len(sets) / cols)
    fig = Figure(figsize=(7.0 * cols, 5.0 * rows), dpi=100)
    for i, res in enumerate(sets):
        ax = fig.add_subplot(rows, cols, i + 1)
        base = res["baselines"]
        for name, r in res["routers"].items():
            pts = sorted(r["curve"])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", ms=3, lw=1.4, label=name)
        orc = sorted(base.get("oracle", {}).get("curve", []))
        if orc:
            ax.plot([p[0] for p in orc], [p[1] for p in orc], "k--", lw=1.0, label="oracle")
        rnd = sorted(base.get("random", {}).get("curve", []))
        if rnd:
            ax.plot([p[0] for p in rnd], [p[1] for p in rnd], ":", color="grey", lw=1.0, label="random")
        singles = [s for s in base.get("singles", []) if s["cost"] is not None and s["quality"] is not None]
        if singles:
            ax.scatter(
                [s["cost"] for s in singles],
                [s["quality"] for s in singles],
                c="black",
                marker="s",
                s=18,
                zorder=5,
                label="single models",
            )
            for s in singles:
                ax.annotate(
                    s["model"].split("/")[-1][:22],
                    (s["cost"], s["quality"]),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        xs = [p[0] for r in res["routers"].values() for p in r["curve"]] + [s["cost"] for s in singles]
        if xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel("mean cost per prompt" + (" (USD)" if res.get("cost_source") == "cost_usd" else ""))
        ax.set_ylabel("mean quality")
        ax.set_title(
            f"{res['dataset']} ({res['n_prompts']} prompts, {len(res['models'])} models)", fontsize=10
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if x != 0 and abs(x) < 10 ** (-digits):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


def _view(res: dict) -> dict:
    base = res["baselines"]
    best_gap = max(
        (r["gap_closed"] for r in res["routers"].values() if r["gap_closed"] is not None), default=None
    )
    rows = []
    for name, r in res["routers"].items():
        rows.append(
            {
                "name": name,
                "best": best_gap is not None and r["gap_closed"] == best_gap,
                "aiq": _fmt(r["aiq"], 4),
                "gap_closed": _fmt(r["gap_closed"]),
                "cost_ratio": _fmt(r["cost_ratio_at_best_quality"]),
                "max_quality": _fmt(r["max_quality"], 4),
                "apgr": _fmt(r["apgr"]),
                "cpt50": _fmt(r["cpt50"], 2),
                "cpt80": _fmt(r["cpt80"], 2),
                "p50": _fmt(r["decision_ms_p50"]),
                "p99": _fmt(r["decision_ms_p99"]),
            }
        )
    rnd = base.get("random")
    if rnd:
        rows.append(
            {
                "name": "random (baseline)",
                "best": False,
                "aiq": _fmt(rnd["aiq"], 4),
                "gap_closed": _fmt(rnd["gap_closed"]),
                "cost_ratio": _fmt(rnd["cost_ratio_at_best_quality"]),
                "max_quality": _fmt(rnd["max_quality"], 4),
                "apgr": _fmt(rnd["apgr"]),
                "cpt50": _fmt(rnd["cpt50"], 2),
                "cpt80": _fmt(rnd["cpt80"], 2),
                "p50": "–",
                "p99": "–",
            }
        )
    best_model = base["best_single"]["model"]
    singles = [
        {
            "model": s["model"],
            "quality": _fmt(s["quality"], 4),
            "cost": _fmt(s["cost"], 6),
            "best": s["model"] == best_model,
        }
        for s in base.get("singles", [])
    ]
    orc = base.get("oracle", {})
    return {
        "dataset": res["dataset"],
        "n_prompts": res["n_prompts"],
        "models": res["models"],
        "folds": res["folds"],
        "seed": res.get("seed", "–"),
        "encoder": res.get("encoder", "–"),
        "cost_source": res.get("cost_source", "cost_usd"),
        "elapsed_s": res.get("elapsed_s"),
        "two": len(res["models"]) == 2,
        "rows": rows,
        "singles": singles,
        "single_hull_aiq": _fmt(base["single_hull_aiq"], 4),
        "oracle": {
            "quality": _fmt(orc.get("quality"), 4),
            "cost": _fmt(orc.get("cost"), 6),
            "aiq": _fmt(base["oracle_aiq"], 4),
        },
    }


def render_html(results: dict | Sequence[dict], png: bytes) -> str:
    """The self-contained HTML report (tables per dataset + the embedded plot)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from llmroute import __version__

    env = Environment(
        loader=PackageLoader("llmroute.eval", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    tmpl = env.get_template("report.html.j2")
    return tmpl.render(
        datasets=[_view(r) for r in _as_list(results)],
        plot_b64=base64.b64encode(png).decode("ascii"),
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        version=__version__,
    )


def write_report(results: dict | Sequence[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, curves.png and report.html into `out_dir` (created if needed).

    A single result is written as is; several are written as `{"datasets": [...]}`.
    Returns the paths written, keyed "json", "png", "html".
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = _as_list(results)
    payload: Any = sets[0] if len(sets) == 1 else {"datasets": sets}
    paths = {"json": out / "results.json", "png": out / "curves.png", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    png = plot_curves(sets, paths["png"])
    paths["html"].write_text(render_html(sets, png), encoding="utf-8")
    return paths
