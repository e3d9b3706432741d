"""Boards -> the overview's views: one table per (board, data fraction, metric), like the study's
Tables 2-4 — rows = methods, columns = datasets — plus average metric, average rank and a test of
each method against full fine-tuning.

Rules (the page states them):
- a cell is the mean over seeds with its 95 % CI; the best mean of each dataset column is marked;
- ranks are given per dataset column among the methods with a result there (1 = best; ties get the
  average of the ranks they span), from unrounded means; average rank and average metric are taken
  over the datasets a method has results on; a method missing some of the view's datasets is marked;
- vs full fine-tuning: two-sided Wilcoxon signed-rank test over the runs paired by (dataset, seed),
  Holm-corrected over the methods of the view, alpha = 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpeft_cli.report.boards import Board, Cell, sort_key, span
from medpeft_cli.report.catalog import Catalog
from medpeft_cli.report.metrics import MetricInfo
from medpeft_cli.report.stats import ALPHA, Stat, Wilcoxon, holm, rank_columns, wilcoxon_many

CONTROL = "full"


@dataclass(eq=False)
class VsControl:
    test: Wilcoxon
    p_holm: float | None = None

    @property
    def verdict(self) -> str:
        """'better' / 'worse' (significant after Holm), 'n.s.', or 'few pairs' (no test possible)."""
        if self.test.p is None or self.p_holm is None:
            return "few pairs"
        if self.p_holm >= ALPHA or not self.test.median_diff:
            return "n.s."
        return "better" if self.test.median_diff > 0 else "worse"


@dataclass(eq=False)
class ViewRow:
    method: Any
    kind: str
    cells: list[Cell | None]
    stats: list[Stat | None]
    best: list[bool] = field(default_factory=list)
    ranks: list[float | None] = field(default_factory=list)
    avg: float | None = None
    avg_rank: float | None = None
    n_datasets: int = 0
    complete: bool = True
    vs_control: VsControl | None = None

    @property
    def trainable(self) -> tuple[int, int] | None:
        return span(v for c in self.cells if c is not None for v in (c.trainable or ()))

    @property
    def trainable_pct(self) -> tuple[float, float] | None:
        return span(v for c in self.cells if c is not None for v in (c.trainable_pct or ()))


@dataclass(eq=False)
class View:
    board: Board
    fraction: float | None
    metric: MetricInfo
    rows: list[ViewRow]
    n_datasets: int  # datasets with at least one result in this view
    has_control: bool

    @property
    def is_default(self) -> bool:
        return self.fraction == self.board.main_fraction and self.metric == self.board.default


def _rank_and_average(view: View) -> None:
    means = np.array(
        [[s.mean if s is not None and s.mean is not None else np.nan for s in row.stats] for row in view.rows], dtype=float
    ).reshape(len(view.rows), len(view.board.datasets))
    ranks = rank_columns(means, view.metric.higher_is_better)
    with_values = ~np.isnan(means)
    view.n_datasets = int(with_values.any(axis=0).sum())
    for i, row in enumerate(view.rows):
        present = with_values[i]
        row.ranks = [float(r) if ok else None for r, ok in zip(ranks[i], present)]
        row.n_datasets = int(present.sum())
        row.complete = row.n_datasets == view.n_datasets
        if row.n_datasets:
            row.avg = float(means[i][present].mean())
            row.avg_rank = float(ranks[i][present].mean())
    _mark_best(view, means)


def _mark_best(view: View, means: np.ndarray) -> None:
    """best[j]: the row has the best mean of dataset column j (ties: all of them)."""
    best = []
    for column in means.T:
        if np.isnan(column).all():
            best.append(None)
        else:
            best.append(np.nanmax(column) if view.metric.higher_is_better else np.nanmin(column))
    for i, row in enumerate(view.rows):
        row.best = [b is not None and bool(means[i, j] == b) for j, b in enumerate(best)]


def _paired_diffs(board: Board, fraction: float | None, method: Any, metric: MetricInfo) -> list[float]:
    """Differences method - full over runs paired by (dataset, seed), signed so > 0 means better."""
    sign = 1.0 if metric.higher_is_better else -1.0
    diffs = []
    for dataset in board.datasets:
        mine, ctrl = board.cell(fraction, method, dataset), board.cell(fraction, CONTROL, dataset)
        if mine is None or ctrl is None:
            continue
        a, b = mine.values_by_seed(metric.name), ctrl.values_by_seed(metric.name)
        diffs.extend(sign * (a[s] - b[s]) for s in sorted(set(a) & set(b), key=sort_key))
    return diffs


def _row_order(row: ViewRow, higher_is_better: bool) -> tuple:
    """Complete rows first, then by average rank, then by average metric (better first), then name."""
    avg = row.avg if row.avg is not None else 0.0
    return (not row.complete, row.avg_rank is None, row.avg_rank or 0.0, -avg if higher_is_better else avg, sort_key(row.method))


def build_views(boards: list[Board], catalog: Catalog | None = None) -> dict[str, list[View]]:
    """Every (fraction, metric) view of every board; tests against full fine-tuning run in one batch."""
    catalog = catalog or Catalog()
    views: dict[str, list[View]] = {}
    pending: list[tuple[View, ViewRow, list[float]]] = []
    for board in boards:
        views[board.id] = []
        for fraction in board.fractions:
            methods = [m for m in board.methods if any(board.cell(fraction, m, d) for d in board.datasets)]
            has_control = CONTROL in methods
            for metric in board.metrics:
                rows = []
                for method in methods:
                    cells = [board.cell(fraction, method, d) for d in board.datasets]
                    stats = [c.stats.get(metric.name) if c else None for c in cells]
                    rows.append(ViewRow(method, catalog.kind(board.task, method), cells, stats))
                view = View(board, fraction, metric, rows, 0, has_control)
                _rank_and_average(view)
                view.rows.sort(key=lambda r, better=metric.higher_is_better: _row_order(r, better))
                if has_control:
                    for row in view.rows:
                        if row.method != CONTROL:
                            pending.append((view, row, _paired_diffs(board, fraction, row.method, metric)))
                views[board.id].append(view)
    tests = wilcoxon_many([d for _, _, d in pending])
    by_view: dict[int, list[tuple[ViewRow, Wilcoxon]]] = {}
    for (view, row, _), test in zip(pending, tests):
        by_view.setdefault(id(view), []).append((row, test))
    for pairs in by_view.values():
        adjusted = holm([t.p for _, t in pairs])
        for (row, test), p_holm in zip(pairs, adjusted):
            row.vs_control = VsControl(test, p_holm)
    return views
