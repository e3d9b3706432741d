"""Page contexts of the site's summary pages: overview, dataset, method, methods, significance,
downloads. Plain data in, plain data (and the aggregation objects) out; no rendering, no I/O.

Links are relative to the site root; templates prefix them with ``root``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from medpeft_cli.report.boards import Board, sort_key
from medpeft_cli.report.catalog import FAMILY_ORDER, UNKNOWN, Catalog
from medpeft_cli.report.charts import Point, Series, cd_diagram, line_chart, scatter_chart
from medpeft_cli.report.formatting import filter_value, fraction, params, params_tick
from medpeft_cli.report.keys import slug
from medpeft_cli.report.metrics import CATALOGUE
from medpeft_cli.report.overview import CONTROL, View
from medpeft_cli.report.runpage import class_names
from medpeft_cli.report.runs import Run, parse_json
from medpeft_cli.report.significance import FRACTIONS, CriticalDifference
from medpeft_cli.report.stats import summarize


def dataset_href(name: Any) -> str:
    return f"datasets/{slug(name)}.html"


def method_href(name: Any) -> str:
    return f"methods/{slug(name)}.html"


@dataclass
class SiteData:
    """Everything the summary pages are built from."""

    runs: list[Run]
    boards: list[Board]
    views: dict[str, list[View]]
    cds: dict[str, list[CriticalDifference]]
    catalog: Catalog  # method metadata from the method registry
    datasets: list[Any] = field(default_factory=list)
    methods: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.datasets = sorted({r.dataset for r in self.runs}, key=sort_key)
        self.methods = sorted({r.method for r in self.runs} | self.catalog.names(), key=sort_key)

    def kind(self, method: Any) -> str:
        """The method's family (its kind in the registry), whatever the task."""
        return self.catalog.kind(None, method)


def _options(values: Iterable[Any], label=str) -> list[dict[str, str]]:
    return [{"value": filter_value(v), "label": label(v) if v is not None else "(none)"} for v in sorted(set(values), key=sort_key)]


def _filters(boards: list[Board], runs: list[Run], *, views: bool) -> list[dict[str, Any]]:
    """The filter bar: each select lists the values present; '' means all (for views: each table's default)."""
    filters = [
        {"name": "protocol", "label": "Protocol", "options": _options(b.protocol_version for b in boards), "all": "all versions"},
        {"name": "backbone", "label": "Backbone", "options": _options(b.backbone for b in boards), "all": "all backbones"},
        {"name": "family", "label": "Method family", "options": _options(r.kind for r in runs), "all": "all families"},
    ]
    if views:
        filters.append({"name": "dataset", "label": "Dataset", "options": _options({d for b in boards for d in b.datasets}), "all": "all datasets"})
        fractions = {f for b in boards for f in b.fractions}
        filters.append({"name": "fraction", "label": "Training data", "options": _options(fractions, fraction), "all": "default (100 % or largest)"})
        metrics = {m.name for b in boards for m in b.metrics}
        options = [{"value": m.name, "label": m.label} for m in CATALOGUE if m.name in metrics]
        filters.append({"name": "metric", "label": "Metric", "options": options, "all": "default (Macro-F1 / FID)"})
    return filters


def index_context(data: SiteData) -> dict[str, Any]:
    statuses = Counter(str(r.row.get("status") or "unknown") for r in data.runs if not r.ok)
    return {
        "n_runs": len(data.runs),
        "n_ok": sum(1 for r in data.runs if r.ok),
        "other_statuses": sorted(statuses.items()),
        "boards": [
            {
                "board": b,
                "views": data.views[b.id],
                "datasets": [{"name": d, "href": dataset_href(d)} for d in b.datasets],
                "has_control": CONTROL in b.methods,
            }
            for b in data.boards
        ],
        "filters": _filters(data.boards, data.runs, views=True),
        "datasets": [{"name": d, "href": dataset_href(d), "n": sum(1 for r in data.runs if r.dataset == d)} for d in data.datasets],
        "methods": [{"name": m, "href": method_href(m), "kind": data.kind(m)} for m in data.methods],
        "control": CONTROL,
    }


# --- dataset pages --------------------------------------------------------------------------------


def _volume_chart(board: Board, dataset: Any, metric, methods: list[Any]) -> dict[str, Any] | None:
    series = []
    for method in methods:
        points = []
        for f in board.fractions:
            cell = board.cell(f, method, dataset)
            stat = cell.stats.get(metric.name) if cell else None
            if f is not None and f > 0 and stat is not None and stat.mean is not None:
                tip = f"{method} at {fraction(f)}: {stat.mean:.{metric.decimals}f} (n = {stat.n})"
                points.append(Point(f, stat.mean, stat.low, stat.high, tip))
        if points:
            series.append(Series(str(method), points, method_href(method)))
    ticks = [(f, fraction(f)) for f in board.fractions if f is not None and f > 0]
    return line_chart(
        series, x_label="training data (fraction of the training split, log scale)", y_label=f"test {metric.label}",
        x_log=True, x_ticks=ticks, y_format=lambda v: f"{v:.{max(metric.decimals - 1, 0)}f}",
    )  # fmt: skip


def _pareto_chart(board: Board, dataset: Any, metric, methods: list[Any]) -> dict[str, Any] | None:
    series = []
    for method in methods:
        cell = board.cell(board.main_fraction, method, dataset)
        stat = cell.stats.get(metric.name) if cell else None
        trainable = summarize(r.trainable for r in cell.runs).mean if cell else None
        if stat is None or stat.mean is None or not trainable:
            continue
        tip = f"{method}: {stat.mean:.{metric.decimals}f} with {params(trainable)} trainable parameters"
        series.append(Series(str(method), [Point(trainable, stat.mean, stat.low, stat.high, tip)], method_href(method)))
    return scatter_chart(
        series, x_label="trainable parameters (log scale)", y_label=f"test {metric.label}", higher_is_better=metric.higher_is_better,
        y_format=lambda v: f"{v:.{max(metric.decimals - 1, 0)}f}", x_format=params_tick,
    )  # fmt: skip


def _per_class(board: Board, dataset: Any, methods: list[Any]) -> dict[str, Any] | None:
    """Mean per-class F1 over seeds at the board's main fraction."""
    names: list[Any] = []
    rows = []
    for method in methods:
        cell = board.cell(board.main_fraction, method, dataset)
        if not cell:
            continue
        per_run = []
        for run in cell.runs:
            scores, _ = parse_json(run.row.get("per_class_f1_json"))
            if isinstance(scores, list):
                per_run.append(scores)
                names = names or class_names(run.row)
        if per_run:
            width = max(len(s) for s in per_run)
            stats = [summarize(s[i] if i < len(s) else None for s in per_run) for i in range(width)]
            rows.append({"method": method, "href": method_href(method), "stats": stats})
    if not rows:
        return None
    width = max(len(r["stats"]) for r in rows)
    labels = [str(names[i]) if i < len(names) and names[i] is not None else f"class {i}" for i in range(width)]
    for r in rows:
        r["stats"] += [None] * (width - len(r["stats"]))
    return {"classes": labels, "rows": rows}


def _volume_table(board: Board, dataset: Any, methods: list[Any]) -> list[dict[str, Any]]:
    return [
        {"method": m, "href": method_href(m), "cells": [board.cell(f, m, dataset) for f in board.fractions]}
        for m in methods
        if any(board.cell(f, m, dataset) for f in board.fractions)
    ]


def dataset_context(data: SiteData, dataset: Any) -> dict[str, Any]:
    runs = [r for r in data.runs if r.dataset == dataset]
    sections = []
    for board in data.boards:
        if dataset not in board.datasets:
            continue
        metric = board.default
        methods = [m for m in board.methods if any(board.cell(f, m, dataset) for f in board.fractions)]
        section: dict[str, Any] = {"board": board, "metric": metric, "methods": methods}
        if metric is not None:
            section["volume"] = _volume_chart(board, dataset, metric, methods)
            section["pareto"] = _pareto_chart(board, dataset, metric, methods)
        section["volume_rows"] = _volume_table(board, dataset, methods)
        section["per_class"] = _per_class(board, dataset, methods)
        section["excluded"] = [r for r in board.excluded if r.dataset == dataset]
        sections.append(section)
    boards = [s["board"] for s in sections]
    metrics = [m for m in CATALOGUE if any(m.name in r.metrics for r in runs)]
    return {
        "name": dataset,
        "n_runs": len(runs),
        "n_ok": sum(1 for r in runs if r.ok),
        "sections": sections,
        "runs": sorted(runs, key=lambda r: (sort_key(r.row.get("backbone")), sort_key(r.method), -(r.fraction or 0), sort_key(r.seed))),
        "metrics": metrics,
        "filters": _filters(boards, runs, views=False)
        + [
            {"name": "fraction", "label": "Training data", "options": _options({r.fraction for r in runs}, fraction), "all": "all fractions"},
            {"name": "status", "label": "Status", "options": _options({r.row.get("status") for r in runs}), "all": "all statuses"},
        ],
    }


# --- method pages ---------------------------------------------------------------------------------


def _about(entry: dict[str, Any] | None, families: list[str]) -> dict[str, Any]:
    """One registry entry (or None: a method seen in the results only) as a capability-matrix row."""
    supported = set(entry.get("families") or ()) if entry else set()
    return {
        "known": entry is not None,
        "task": entry.get("task") if entry else None,
        "kind": str(entry.get("kind") or UNKNOWN) if entry else UNKNOWN,
        "summary": entry.get("summary") if entry else None,
        "cite": entry.get("cite") if entry else None,
        "url": entry.get("url") if entry and _is_web_url(entry.get("url")) else None,
        "default_lr": entry.get("default_lr") if entry else None,
        "knob": entry.get("knob") if entry else None,
        "mergeable": entry.get("mergeable") if entry else None,
        "peft": entry.get("peft") if entry else None,
        "families": [{"name": f, "supported": (f in supported) if entry else None} for f in families],
    }


def _is_web_url(url: Any) -> bool:
    return isinstance(url, str) and url.startswith(("https://", "http://"))


def method_context(data: SiteData, method: Any) -> dict[str, Any]:
    runs = [r for r in data.runs if r.method == method]
    sections = []
    for board in data.boards:
        if method not in board.methods:
            continue
        datasets = [d for d in board.datasets if any(board.cell(f, method, d) for f in board.fractions)]
        main = next((v for v in data.views[board.id] if v.is_default), None)
        row = next((r for r in main.rows if r.method == method), None) if main else None
        sections.append(
            {
                "board": board,
                "metric": board.default,
                "rows": [{"dataset": d, "href": dataset_href(d), "cells": [board.cell(f, method, d) for f in board.fractions]} for d in datasets],
                "view": main,
                "view_row": row,
                "n_methods": len(main.rows) if main else 0,
            }
        )
    families = data.catalog.families() or list(FAMILY_ORDER)
    entries = data.catalog.for_method(method) if isinstance(method, str) else []
    about = [_about(e, families) for e in entries] or [_about(None, families)]
    return {"name": method, "about": about, "families": families, "n_runs": len(runs), "sections": sections}


def methods_context(data: SiteData) -> dict[str, Any]:
    """The capability matrix: one row per registry entry (task, method), then methods seen only in results."""
    counts = Counter((r.row.get("task"), r.method) for r in data.runs)
    families = data.catalog.families() or list(FAMILY_ORDER)
    rows = []
    for (task, name), entry in sorted(data.catalog.entries.items()):
        rows.append({"name": name, "href": method_href(name), "n_runs": counts.get((task, name), 0), **_about(entry, families)})
    known = data.catalog.names()
    for (task, name), n in sorted(counts.items(), key=lambda kv: (sort_key(kv[0][0]), sort_key(kv[0][1]))):
        if name not in known:
            rows.append({"name": name, "href": method_href(name), "n_runs": n, **_about(None, families), "task": task})
    return {
        "rows": rows,
        "families": families,
        "filters": [
            {"name": "task", "label": "Task", "options": _options(r["task"] for r in rows), "all": "all tasks"},
            {"name": "family", "label": "Method family", "options": _options(r["kind"] for r in rows), "all": "all families"},
        ],
    }


# --- significance and downloads ------------------------------------------------------------------


def significance_context(data: SiteData) -> dict[str, Any]:
    sections = []
    for board in data.boards:
        for i, cd in enumerate(data.cds.get(board.id, [])):
            chart = cd_diagram([str(m) for m in cd.methods], cd.avg_ranks, cd.cd, cd.groups) if cd.cd is not None else None
            across = cd.blocks == FRACTIONS  # its Wilcoxon tests are in the per-fraction sections
            control_rows = [] if across else [r for r in cd.view.rows if r.vs_control is not None]
            anchor = board.id if i == 0 else None  # the overview links to a board's first section
            sections.append({"board": board, "cd": cd, "chart": chart, "view": cd.view, "control_rows": control_rows, "anchor": anchor, "across": across})
    return {
        "sections": sections,
        "control": CONTROL,
        "filters": [
            {"name": "protocol", "label": "Protocol", "options": _options(b.protocol_version for b in data.boards), "all": "all versions"},
            {"name": "backbone", "label": "Backbone", "options": _options(b.backbone for b in data.boards), "all": "all backbones"},
            {
                "name": "fraction", "label": "Training data", "all": "all fractions",
                "options": _options({f for b in data.boards for f in b.fractions}, fraction),
            },  # fmt: skip
        ],
    }


def downloads_context(data: SiteData, files: list[dict[str, Any]], columns: list[str]) -> dict[str, Any]:
    versions = Counter(r.row.get("protocol_version") for r in data.runs)
    return {
        "files": files,
        "versions": sorted(versions.items(), key=lambda kv: sort_key(kv[0])),
        "columns": columns,
    }
