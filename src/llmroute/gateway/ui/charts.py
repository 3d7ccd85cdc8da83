"""Small server-side SVG charts for the dashboard: line charts and scatter plots.

Each function returns the SVG markup (escaped text, safe to embed in a page as is). Every point
carries a `<title>` tooltip; the colours are a fixed palette, in the order of the series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ["PALETTE", "line_chart", "scatter_chart"]

PALETTE = (
    "#2563eb",
    "#16a34a",
    "#dc2626",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
)
_W, _H = 720, 240
_L, _R, _T, _B = 64, 12, 12, 36  # margins


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    out = []
    v = start
    while v <= hi + 1e-12:
        if v >= lo - 1e-12:
            out.append(round(v, 12))
        v += step
    return out


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 1 or a == 0:
        return f"{v:.3g}"
    return f"{v:.2g}"


def line_chart(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    y_format: Callable[[float], str] = _fmt,
    title: str = "",
) -> str:
    """Lines over shared x `labels` (one per point), one per series, with a legend."""
    n = len(labels)
    if n == 0 or not series:
        return '<p class="empty">No data yet.</p>'
    vals = [v for s in series.values() for v in s]
    lo, hi = min(0.0, min(vals)), max(vals)
    if hi <= lo:
        hi = lo + 1.0
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(i: int) -> float:
        return _L + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return _T + ph * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H + 18 * ((len(series) + 3) // 4)}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for t in _ticks(lo, hi):
        yy = y(t)
        parts.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{_L - 6}" y="{yy + 4:.1f}" text-anchor="end">{escape(y_format(t))}</text>'
        )
    step = max(1, n // 6)
    for i in range(0, n, step):
        parts.append(
            f'<text class="tick" x="{x(i):.1f}" y="{_H - _B + 16}" text-anchor="middle">{escape(labels[i])}</text>'
        )
    for j, (name, s) in enumerate(series.items()):
        color = PALETTE[j % len(PALETTE)]
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        if n <= 100:
            for i, v in enumerate(s):
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}">'
                    f"<title>{escape(name)} {escape(labels[i])}: {escape(y_format(v))}</title></circle>"
                )
        lx, ly = _L + (j % 4) * 165, _H + 4 + 18 * (j // 4)
        parts.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text class="legend" x="{lx + 14}" y="{ly + 9}">{escape(name[:24])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def scatter_chart(
    points: Sequence[tuple[float, float, str]],
    *,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    line: Sequence[tuple[float, float]] = (),
    diagonal: bool = False,
    x_format: Callable[[float], str] = _fmt,
    title: str = "",
) -> str:
    """Labelled points (x, y, label); `line`: a polyline drawn through those (x, y) points (e.g. a
    frontier); `diagonal`: the y = x line (calibration plots)."""
    if not points and not line:
        return '<p class="empty">No data yet.</p>'
    xs = [p[0] for p in points] + [p[0] for p in line]
    ys = [p[1] for p in points] + [p[1] for p in line]

    def tx(v: float) -> float:
        return math.log10(max(v, 1e-12)) if log_x else v

    xlo, xhi = min(tx(v) for v in xs), max(tx(v) for v in xs)
    ylo, yhi = min(ys), max(ys)
    if diagonal:
        xlo = ylo = min(xlo, ylo, 0.0)
        xhi = yhi = max(xhi, yhi, 1.0)
    pad_x = (xhi - xlo) * 0.05 or 0.5
    pad_y = (yhi - ylo) * 0.08 or 0.05
    xlo, xhi, ylo, yhi = xlo - pad_x, xhi + pad_x, ylo - pad_y, yhi + pad_y
    pw, ph = _W - _L - _R, _H - _T - _B

    def X(v: float) -> float:
        return _L + pw * (tx(v) - xlo) / (xhi - xlo)

    def Y(v: float) -> float:
        return _T + ph * (1 - (v - ylo) / (yhi - ylo))

    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H + 14}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for t in _ticks(ylo, yhi):
        parts.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}"/>')
        parts.append(f'<text class="tick" x="{_L - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(xlo, xhi, 6):
        xv = 10**t if log_x else t
        parts.append(
            f'<text class="tick" x="{_L + pw * (t - xlo) / (xhi - xlo):.1f}" y="{_H - _B + 16}" '
            f'text-anchor="middle">{escape(x_format(xv))}</text>'
        )
    parts.append(
        f'<text class="axis" x="{_L + pw / 2:.0f}" y="{_H + 8}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text class="axis" x="12" y="{_T + ph / 2:.0f}" transform="rotate(-90 12 {_T + ph / 2:.0f})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    if diagonal:
        lo, hi = max(xlo, ylo), min(xhi, yhi)
        parts.append(
            f'<line class="diag" x1="{X(lo):.1f}" y1="{Y(lo):.1f}" x2="{X(hi):.1f}" y2="{Y(hi):.1f}"/>'
        )
    if line:
        pts = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in line)
        parts.append(f'<polyline fill="none" stroke="{PALETTE[0]}" stroke-width="2" points="{pts}"/>')
    for j, (a, b, label) in enumerate(points):
        color = PALETTE[(j + 1) % len(PALETTE)]
        parts.append(
            f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="4" fill="{color}">'
            f"<title>{escape(label)}: {escape(x_format(a))}, {b:.3f}</title></circle>"
        )
        if label and len(points) <= 16:
            parts.append(
                f'<text class="label" x="{X(a) + 6:.1f}" y="{Y(b) - 5:.1f}">{escape(label[:28])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
