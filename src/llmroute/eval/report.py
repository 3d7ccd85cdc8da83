"""Write evaluation outputs: results.json, curves.png and a self-contained report.html.

`write_report(results, out_dir)` takes one `evaluate()` / `evaluate_router()` result (or a list
of them, one per dataset) and writes the three files. The HTML embeds the plot as a base64 PNG
and links nothing outside itself, so it can be mailed or opened offline. Besides the headline
table it shows the spread over CV folds, a per-task breakdown, the trade-off and pick share per
model behind every curve point, and defines every metric.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from markupsafe import Markup

__all__ = ["curves_figure", "plot_curves", "reliability_svg", "render_html", "write_report"]


def _as_list(results: dict | Sequence[dict]) -> list[dict]:
    return [results] if isinstance(results, dict) else list(results)


#: Label offsets (points) tried around a single-model marker, in order of preference.
_LABEL_OFFSETS: tuple[tuple[float, float, str, str], ...] = (
    (7, 3, "left", "bottom"),
    (7, -3, "left", "top"),
    (-7, 3, "right", "bottom"),
    (-7, -3, "right", "top"),
    (0, 8, "center", "bottom"),
    (0, -8, "center", "top"),
    (7, 14, "left", "bottom"),
    (7, -14, "left", "top"),
    (-7, 14, "right", "bottom"),
    (-7, -14, "right", "top"),
    (0, 22, "center", "bottom"),
    (0, -22, "center", "top"),
)


def _overlap(a: Any, b: Any) -> float:
    """Area shared by two matplotlib Bboxes (display units)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def _place_labels(
    ax: Any,
    renderer: Any,
    points: list[tuple[float, float, str]],
    avoid: list[Any],
    lines: Sequence[Sequence[tuple[float, float]]] = (),
) -> None:
    """Annotate each (x, y, text) next to its point, inside the axes, without overlaps.

    Tries the offsets of `_LABEL_OFFSETS` in turn and keeps the first whose text box lies inside
    the axes and touches no earlier label, marker, plotted line (`lines`: polylines in data
    units, sampled every few pixels) or box in `avoid` (the legend); when none does, the one
    with the least overlap. Labels are placed from the top of the plot down.
    """
    from matplotlib.transforms import Bbox

    inside = ax.get_window_extent(renderer)
    taken = list(avoid)
    markers = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        markers.append(Bbox.from_bounds(px - 4, py - 4, 8, 8))
    for line in lines:
        if not line:
            continue
        disp = ax.transData.transform(np.asarray(line, dtype=float))
        for (x0, y0), (x1, y1) in itertools.pairwise(disp):
            steps = max(int(math.hypot(x1 - x0, y1 - y0) // 5), 1)
            for t in np.linspace(0.0, 1.0, steps + 1):
                px, py = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                taken.append(Bbox.from_bounds(px - 1.5, py - 1.5, 3, 3))
        if len(disp) == 1:
            taken.append(Bbox.from_bounds(disp[0][0] - 1.5, disp[0][1] - 1.5, 3, 3))
    for k in sorted(range(len(points)), key=lambda i: -points[i][1]):
        x, y, text = points[k]
        best: tuple[float, Any] | None = None
        for dx, dy, ha, va in _LABEL_OFFSETS:
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=9.5,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
                zorder=6,
            )
            box = ann.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, inside)
            hit = sum(_overlap(box, t) for t in taken)
            hit += sum(_overlap(box, m) for j, m in enumerate(markers) if j != k)
            cost = hit + 4 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann)
            else:
                ann.remove()
            if cost == 0:
                break
        if best is not None:
            taken.append(best[1].get_window_extent(renderer))


def plot_curves(results: dict | Sequence[dict], path: str | Path | None = None) -> bytes:
    """Cost (log axis) vs quality: every router's curve, single models, oracle and random.

    The figure of `curves_figure` as PNG bytes (also written to `path` when given).
    """
    fig = curves_figure(results)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def curves_figure(results: dict | Sequence[dict]) -> Any:
    """The matplotlib Figure behind `plot_curves` (Agg canvas attached).

    One panel per dataset (10 x 7 inches at 110 dpi each, two per row), 11-14 pt fonts, the
    legend inside the axes where it covers the fewest points, and each single model's label
    placed inside the axes without overlapping another label, a marker, a curve or the legend
    where any such place exists (`_place_labels`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = _as_list(results)
    cols = min(len(sets), 2)
    rows = math.ceil(len(sets) / cols)
    fig = Figure(figsize=(10.0 * cols, 7.0 * rows), dpi=110)
    canvas = FigureCanvasAgg(fig)
    panels = []
    for i, res in enumerate(sets):
        ax = fig.add_subplot(rows, cols, i + 1)
        base = res["baselines"]
        ys: list[float] = []
        lines: list[list[tuple[float, float]]] = []
        for name, r in res["routers"].items():
            pts = sorted(r["curve"])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", ms=5, lw=2.0, label=name)
                ys += [p[1] for p in pts]
                lines.append([(p[0], p[1]) for p in pts])
        for name, cr in (res.get("cascades") or {}).items():
            pts = sorted(cr["curve"])  # the hull of the cascade's swept points, every call paid
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "-.",
                    marker="^",
                    ms=5,
                    lw=2.0,
                    label=f"{name} (cascade)",
                )
                ys += [p[1] for p in pts]
                lines.append([(p[0], p[1]) for p in pts])
        orc = sorted(base.get("oracle", {}).get("curve", []))
        if orc:
            ax.plot([p[0] for p in orc], [p[1] for p in orc], "k--", lw=1.3, label="oracle")
            ys += [p[1] for p in orc]
            lines.append([(p[0], p[1]) for p in orc])
        rnd = sorted(base.get("random", {}).get("curve", []))
        if rnd:
            ax.plot([p[0] for p in rnd], [p[1] for p in rnd], ":", color="grey", lw=1.5, label="random")
            lines.append([(p[0], p[1]) for p in rnd])
        singles = [s for s in base.get("singles", []) if s["cost"] is not None and s["quality"] is not None]
        if singles:
            ax.scatter(
                [s["cost"] for s in singles],
                [s["quality"] for s in singles],
                c="black",
                marker="s",
                s=30,
                zorder=5,
                label="single models",
            )
            ys += [s["quality"] for s in singles]
        xs = [p[0] for r in res["routers"].values() for p in r["curve"]] + [s["cost"] for s in singles]
        if xs and min(xs) > 0:
            ax.set_xscale("log")
        if ys:  # head-room for labels above the top point and below the lowest one
            lo, hi = min(ys), max(ys)
            pad = max(hi - lo, 0.02)
            ax.set_ylim(lo - 0.10 * pad, hi + 0.10 * pad)
        ax.margins(x=0.08)
        cost_unit = " (USD)" if res.get("cost_source", "cost_usd") == "cost_usd" else ""
        ax.set_xlabel("mean cost per prompt" + cost_unit, fontsize=13)
        ax.set_ylabel("mean quality", fontsize=13)
        ax.tick_params(labelsize=11)
        how = f"{res['folds']}-fold CV" if res.get("folds") else "trained router, no CV"
        ax.set_title(
            f"{res['dataset']} ({res['n_prompts']} prompts, {len(res['models'])} models, {how})", fontsize=14
        )
        ax.grid(True, which="both", alpha=0.3)
        legend = ax.legend(fontsize=11, loc="best", framealpha=0.9)
        panels.append((ax, legend, singles, lines))
    fig.tight_layout()
    renderer = canvas.get_renderer()
    for ax, legend, singles, lines in panels:
        labels = [(s["cost"], s["quality"], s["model"].split("/")[-1][:28]) for s in singles]
        _place_labels(ax, renderer, labels, [legend.get_window_extent(renderer)], lines)
    return fig


def _fmt(x: Any, digits: int = 3, small: bool = True) -> str:
    """A number for the report ('–' when missing); `small`: tiny values (costs) in 3 significant
    digits instead of rounding to zero."""
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if small and x != 0 and abs(x) < 10 ** (-digits):
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
                "gap_closed": _fmt(r["gap_closed"], small=False),
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
                "gap_closed": _fmt(rnd["gap_closed"], small=False),
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
    two = len(res["models"]) == 2
    cascades = [
        {
            "name": name,
            "signals": ", ".join(c["signals"]) or "none (priors only)",
            "max_steps": c["max_steps"],
            "max_cost": _fmt(c.get("max_cost_usd"), 6),
            "aiq": _fmt(c["aiq"], 4),
            "gap_closed": _fmt(c["gap_closed"], small=False),
            "cost_ratio": _fmt(c["cost_ratio_at_best_quality"]),
            "max_quality": _fmt(c["max_quality"], 4),
            "one_shot_aiq": _fmt((c.get("one_shot") or {}).get("aiq"), 4),
            "calibration": [
                {
                    "label": _CALIBRATION_LABELS.get(k, k),
                    "ece": _fmt(rel.get("ece"), 3, small=False),
                    "auroc": _fmt(rel.get("auroc"), 3, small=False),
                    "n": rel.get("n", "–"),
                    "svg": reliability_svg(rel, _CALIBRATION_LABELS.get(k, k)),
                }
                for k, rel in (c.get("calibration") or {}).items()
            ],
        }
        for name, c in (res.get("cascades") or {}).items()
    ]
    return {
        "dataset": res["dataset"],
        "n_prompts": res["n_prompts"],
        "models": res["models"],
        "folds": res["folds"],
        "router_file": res.get("router_file"),
        "router_models": res.get("router_models"),
        "seed": res.get("seed", "–"),
        "encoder": res.get("encoder", "–"),
        "cost_source": res.get("cost_source", "cost_usd"),
        "elapsed_s": res.get("elapsed_s"),
        "two": two,
        "rows": rows,
        "singles": singles,
        "single_hull_aiq": _fmt(base["single_hull_aiq"], 4),
        "oracle": {
            "quality": _fmt(orc.get("quality"), 4),
            "cost": _fmt(orc.get("cost"), 6),
            "aiq": _fmt(base["oracle_aiq"], 4),
        },
        "cascades": cascades,
        "fold_rows": _fold_rows(res, two),
        "tasks": _task_view(res, two),
        "points": _points_view(res),
    }


_CALIBRATION_LABELS = {
    "verifier": "learned text verifier: P(right) of each answer",
    "first_answer": "re-estimated P(right) of a lone first answer (prior + its evidence)",
}


def reliability_svg(rel: dict, title: str, size: int = 260) -> Markup:
    """An inline SVG reliability diagram of `rel` (`LearnedVerifier.reliability`'s dict: bins of
    mean predicted P(right) against the share right, dot area ~ predictions in the bin), with the
    diagonal of perfect calibration and the ECE in the caption."""
    from html import escape

    from markupsafe import Markup

    pad, w = 34, size - 44
    bins = [b for b in rel.get("bins") or [] if b.get("n")]
    total = max(sum(b["n"] for b in bins), 1)

    def xy(p: float, a: float) -> tuple[float, float]:
        return pad + p * w, 10 + (1 - a) * w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}" role="img" class="reliability"><title>{escape(title)}</title>',
        f'<rect x="{pad}" y="10" width="{w}" height="{w}" fill="none" stroke="#999"/>',
        '<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#999" stroke-dasharray="4 3"/>'.format(
            *xy(0, 0), *xy(1, 1)
        ),
    ]
    pts = [xy(b["mean_p"], b["right_share"]) for b in bins]
    if len(pts) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    for (x, y), b in zip(pts, bins, strict=True):
        r = 2.5 + 9 * math.sqrt(b["n"] / total)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#1f77b4" fill-opacity="0.6">'
            f"<title>mean p {b['mean_p']:.3f}, right {b['right_share']:.3f}, n {b['n']}</title></circle>"
        )
    for t in (0, 0.5, 1):
        x, y = xy(t, t)
        parts.append(f'<text x="{x:.1f}" y="{size - 20}" font-size="9" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{pad - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{t:g}</text>')
    ece = rel.get("ece")
    caption = "predicted P(right) vs share right" + (f", ECE {ece:.3f}" if ece is not None else "")
    parts.append(
        f'<text x="{pad + w / 2:.1f}" y="{size - 6}" font-size="10" text-anchor="middle">{caption}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def _spread_cell(sp: dict | None, digits: int = 3) -> str:
    """'mean ± std [min, max]' of a `fold_spread` entry."""
    if not sp or sp.get("mean") is None:
        return "–"
    return (
        f"{_fmt(sp['mean'], digits, False)} ± {_fmt(sp['std'], digits, False)} "
        f"[{_fmt(sp['min'], digits, False)}, {_fmt(sp['max'], digits, False)}]"
    )


def _fold_rows(res: dict, two: bool) -> list[dict]:
    """Per router: the spread over CV folds of gap closed, AIQ (and APGR), plus each fold's value."""
    out = []
    for name, r in res["routers"].items():
        spread = r.get("fold_spread")
        if not spread:
            continue
        out.append(
            {
                "name": name,
                "gap_closed": _spread_cell(spread.get("gap_closed")),
                "aiq": _spread_cell(spread.get("aiq"), 4),
                "apgr": _spread_cell(spread.get("apgr")) if two else None,
                "each": " · ".join(_fmt(f.get("gap_closed"), small=False) for f in r.get("per_fold", [])),
            }
        )
    return out


def _task_view(res: dict, two: bool) -> dict | None:
    """The per-task table: one row per task family, one gap-closed (and APGR) cell per router."""
    tasks = res.get("tasks") or []
    if not tasks:
        return None
    names = list(res["routers"])
    rows = []
    for t in tasks:
        best = t.get("best_single") or {}
        cells = []
        for name in names:
            m = res["routers"][name].get("by_task", {}).get(t["task"], {})
            cells.append(
                {
                    "gap_closed": _fmt(m.get("gap_closed"), small=False),
                    "apgr": _fmt(m.get("apgr"), small=False),
                }
            )
        rows.append(
            {
                "task": t["task"],
                "n_prompts": t["n_prompts"],
                "best_model": best.get("model", "–"),
                "best_quality": _fmt(best.get("quality"), 4),
                "oracle_quality": _fmt(t.get("oracle_quality"), 4),
                "cells": cells,
            }
        )
    return {"routers": names, "two": two, "rows": rows}


def _fmt_tradeoff(lam: float | None) -> str:
    if lam is None:
        return "∞"
    if lam == 0:
        return "0"
    return f"{lam:.3g}"


def _points_view(res: dict) -> list[dict]:
    """Per router: its distinct curve points with the trade-off range behind each and pick shares.

    Consecutive trade-offs that give the same picks' (cost, quality) are merged into one row
    whose trade-off column shows the range.
    """
    models = res["models"]
    out = []
    for name, r in res["routers"].items():
        pts = r.get("curve_points") or []
        merged: list[dict] = []
        for p in pts:
            key = (round(p["cost"], 15), round(p["quality"], 12))
            if merged and merged[-1]["key"] == key:
                merged[-1]["hi"] = p["tradeoff"]
                continue
            merged.append({"key": key, "lo": p["tradeoff"], "hi": p["tradeoff"], "p": p})
        rows = []
        for m in merged:
            lo, hi = _fmt_tradeoff(m["lo"]), _fmt_tradeoff(m["hi"])
            share = m["p"]["pick_share"]
            rows.append(
                {
                    "tradeoff": lo if lo == hi else f"{lo} – {hi}",
                    "cost": _fmt(m["p"]["cost"], 6),
                    "quality": _fmt(m["p"]["quality"], 4),
                    "shares": [_pct(share[j]) for j in range(len(models))],
                }
            )
        if rows:
            out.append({"name": name, "rows": rows})
    return out


def _pct(x: float) -> str:
    """A pick share as a whole percent; '·' for none, '<1%' for a few prompts."""
    if x <= 0:
        return "·"
    if x < 0.01:
        return "<1%"
    return f"{100 * x:.0f}%"


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
