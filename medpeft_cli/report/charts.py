"""Chart geometry for the hand-made SVG plots (numbers in, coordinates and labels out).

Nothing here writes markup: `leaderboard/templates/charts.html.j2` draws the SVG from these dicts
through Jinja, so every label (method names are user strings) is escaped by autoescape. Coordinates
are rounded to 0.1 px to keep the pages small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Okabe & Ito (2008) colour-blind-safe palette, then Tableau 10 for charts with more series.
PALETTE = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
    "#4E79A7", "#F28E2B", "#E15759", "#76B7B2", "#59A14F", "#EDC948", "#B07AA1", "#FF9DA7", "#9C755F", "#BAB0AC",
)  # fmt: skip
MARGIN = {"left": 56, "right": 16, "top": 16, "bottom": 44}
LEGEND_WIDTH = 170
LEGEND_ROW = 16


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _r(x: float) -> str:
    return f"{x:.1f}"


class Scale:
    """Data value -> pixel, linear or log10; the mapping is precomputed (charts call it thousands of times)."""

    def __init__(self, lo: float, hi: float, px_lo: float, px_hi: float, log: bool = False):
        self.lo, self.hi, self.log = lo, hi, log
        a, b = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        self._slope = 0.0 if b == a else (px_hi - px_lo) / (b - a)
        self._offset = (px_lo + px_hi) / 2 if b == a else px_lo - a * self._slope

    def __call__(self, v: float) -> float:
        return (math.log10(v) if self.log else v) * self._slope + self._offset


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] with about `count` steps of 1, 2 or 5 x 10^k."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def decade_ticks(lo: float, hi: float) -> list[float]:
    return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) if lo <= 10.0**e <= hi]


def padded(lo: float, hi: float, frac: float = 0.05) -> tuple[float, float]:
    if hi == lo:
        pad = abs(hi) * 0.05 or 0.05
        return lo - pad, hi + pad
    pad = (hi - lo) * frac
    return lo - pad, hi + pad


def padded_log(lo: float, hi: float) -> tuple[float, float]:
    return (lo / 1.6, hi * 1.6) if lo > 0 else (1.0, max(hi, 10.0))


@dataclass
class Point:
    x: float
    y: float
    low: float | None = None  # CI band / error bar
    high: float | None = None
    tip: str = ""


@dataclass
class Series:
    name: str
    points: list[Point]
    href: str | None = None


def _frame(width: int, height: int, legend: bool) -> dict[str, float]:
    right = width - MARGIN["right"] - (LEGEND_WIDTH if legend else 0)
    return {"x0": MARGIN["left"], "x1": right, "y0": height - MARGIN["bottom"], "y1": MARGIN["top"]}


def _legend(series: list[Series], frame: dict[str, float]) -> list[dict[str, Any]]:
    x = frame["x1"] + 14
    return [
        {"name": s.name, "href": s.href, "color": color(i), "x": _r(x), "y": _r(frame["y1"] + 8 + i * LEGEND_ROW)}
        for i, s in enumerate(series)
    ]


def _scales(points: list[Point], frame: dict[str, float], x_log: bool) -> tuple[Scale, Scale]:
    xs = [p.x for p in points]
    ys = [v for p in points for v in (p.y, p.low, p.high) if v is not None]
    xlo, xhi = (padded_log if x_log else padded)(min(xs), max(xs))
    ylo, yhi = padded(min(ys), max(ys))
    return Scale(xlo, xhi, frame["x0"], frame["x1"], x_log), Scale(ylo, yhi, frame["y0"], frame["y1"])


MIN_TICK_GAP = 30  # px between x tick labels; closer ones are dropped (the largest value is kept)


def _thin(ticks: list[tuple[float, str]]) -> list[dict[str, str]]:
    kept: list[tuple[float, str]] = []
    for x, label in sorted(ticks, reverse=True):
        if not kept or kept[-1][0] - x >= MIN_TICK_GAP:
            kept.append((x, label))
    return [{"x": _r(x), "label": label} for x, label in reversed(kept)]


def _chart(
    frame: dict[str, float], sx: Scale, sy: Scale, width: int, height: int, x_ticks: Sequence[tuple[float, str]],
    y_format: Callable[[float], str], x_label: str, y_label: str,
) -> dict[str, Any]:  # fmt: skip
    return {
        "w": width,
        "h": height,
        "frame": {k: _r(v) for k, v in frame.items()},
        "xticks": _thin([(sx(v), label) for v, label in x_ticks if sx.lo <= v <= sx.hi]),
        "yticks": [{"y": _r(sy(v)), "label": y_format(v)} for v in nice_ticks(sy.lo, sy.hi)],
        "x_label": x_label,
        "y_label": y_label,
        "marks": [],
        "front": None,
    }


def line_chart(
    series: list[Series],
    *,
    x_label: str,
    y_label: str,
    x_log: bool = False,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
    width: int = 720,
    height: int = 360,
    bands: bool = True,
    legend: bool = True,
    marks: Sequence[tuple[float, str]] = (),
    markers: bool = True,
) -> dict[str, Any] | None:
    """Lines (one per series, in x order) with optional CI bands and point markers (with their
    tips); None when there is nothing to draw."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return None
    frame = _frame(width, height, legend)
    sx, sy = _scales(pts, frame, x_log)
    if x_ticks is None:
        x_ticks = [(t, f"{t:g}") for t in (decade_ticks(sx.lo, sx.hi) if x_log else nice_ticks(sx.lo, sx.hi))]
    chart = _chart(frame, sx, sy, width, height, x_ticks, y_format, x_label, y_label)
    chart["series"] = []
    for i, s in enumerate(series):
        ordered = sorted(s.points, key=lambda p: p.x)
        band = None
        if bands and any(p.low is not None for p in ordered):
            upper = [f"{_r(sx(p.x))},{_r(sy(p.high if p.high is not None else p.y))}" for p in ordered]
            lower = [f"{_r(sx(p.x))},{_r(sy(p.low if p.low is not None else p.y))}" for p in reversed(ordered)]
            band = "M" + "L".join(upper + lower) + "Z"
        chart["series"].append(
            {
                "name": s.name,
                "href": s.href,
                "color": color(i),
                "line": "M" + "L".join(f"{_r(sx(p.x))},{_r(sy(p.y))}" for p in ordered),
                "band": band,
                "errbar": None,
                "points": [{"x": _r(sx(p.x)), "y": _r(sy(p.y)), "tip": p.tip} for p in ordered] if markers else [],
            }
        )
    chart["marks"] = [{"x": _r(sx(v)), "label": label} for v, label in marks if sx.lo <= v <= sx.hi]
    chart["legend"] = _legend(series, frame) if legend else []
    return chart


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points that no other point beats on both cost (lower x) and metric, by ascending x."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if sign * points[i][1] > best:
            front.append(i)
            best = sign * points[i][1]
    return front


def scatter_chart(
    series: list[Series],
    *,
    x_label: str,
    y_label: str,
    higher_is_better: bool,
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
    x_format: Callable[[float], str] = lambda v: f"{v:g}",
    width: int = 720,
    height: int = 360,
) -> dict[str, Any] | None:
    """One point (with its CI as error bar) per series on a log x axis, and the Pareto front as a step line."""
    usable = [s for s in series if s.points and s.points[0].x > 0]
    if not usable:
        return None
    pts = [s.points[0] for s in usable]
    frame = _frame(width, height, True)
    sx, sy = _scales(pts, frame, True)
    chart = _chart(frame, sx, sy, width, height, [(v, x_format(v)) for v in decade_ticks(sx.lo, sx.hi)], y_format, x_label, y_label)
    chart["series"] = [
        {
            "name": s.name,
            "href": s.href,
            "color": color(i),
            "line": None,
            "band": None,
            "errbar": None if p.low is None else {"x": _r(sx(p.x)), "y0": _r(sy(p.low)), "y1": _r(sy(p.high))},
            "points": [{"x": _r(sx(p.x)), "y": _r(sy(p.y)), "tip": p.tip}],
        }
        for i, (s, p) in enumerate(zip(usable, pts))
    ]
    front = pareto_front([(p.x, p.y) for p in pts], higher_is_better)
    path = [f"M{_r(sx(pts[front[0]].x))},{_r(sy(pts[front[0]].y))}"]
    for a, b in zip(front, front[1:]):  # a staircase: cost grows, metric improves
        path.append(f"L{_r(sx(pts[b].x))},{_r(sy(pts[a].y))}L{_r(sx(pts[b].x))},{_r(sy(pts[b].y))}")
    chart["front"] = "".join(path)
    chart["front_names"] = [usable[i].name for i in front]
    chart["legend"] = _legend(usable, frame)
    return chart


def cd_diagram(methods: list[str], avg_ranks: list[float], cd: float, groups: list[tuple[int, int]], width: int = 720) -> dict[str, Any]:
    """Demšar-style critical-difference diagram: rank axis (1 = best, left), the CD as a bar, each
    method pointing to its average rank (best half labelled on the left, the rest on the right),
    and thick bars joining methods whose ranks differ by less than the CD."""
    k = len(methods)
    left, right, axis_y = 150, width - 150, 52
    scale = Scale(1, max(k, 2), left, right)
    half = (k + 1) // 2
    row_h = 18
    group_y0 = axis_y + 14
    label_y0 = group_y0 + 10 * len(groups) + 16
    labels = []
    for i, (name, rank) in enumerate(zip(methods, avg_ranks)):
        on_left = i < half
        row = i if on_left else k - 1 - i
        y = label_y0 + row * row_h
        x = scale(rank)
        labels.append(
            {
                "name": name,
                "rank": f"{rank:.2f}",
                "x": _r(x),
                "y": _r(y),
                "tx": _r(left - 8 if on_left else right + 8),
                "anchor": "end" if on_left else "start",
                "side": "left" if on_left else "right",
            }
        )
    bars = [
        {"x0": _r(scale(avg_ranks[i]) - 3), "x1": _r(scale(avg_ranks[j]) + 3), "y": _r(group_y0 + 10 * n)}
        for n, (i, j) in enumerate(groups)
    ]
    height = int(label_y0 + max(half, k - half) * row_h + 8)
    return {
        "w": width,
        "h": height,
        "axis": {"x0": _r(left), "x1": _r(right), "y": axis_y},
        "ticks": [{"x": _r(scale(r)), "label": str(r)} for r in range(1, max(k, 2) + 1)],
        "cd": {"x0": _r(left), "x1": _r(scale(1 + cd)) if 1 + cd <= max(k, 2) else _r(right), "label": f"CD = {cd:.2f}", "y": 18},
        "labels": labels,
        "bars": bars,
    }
