"""Critical-difference analysis per board and data fraction (Demšar 2006), on the board's default metric.

Blocks are the datasets, treatments the methods, the score of a (dataset, method) its mean over
seeds. The Friedman test needs a complete table, so only methods with a result on every dataset of
the view take part (the others are listed as left out); it needs at least 3 methods and 2 datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpeft_cli.report.overview import View
from medpeft_cli.report.stats import ALPHA, Friedman, cliques, critical_difference, friedman, rank_columns

MIN_METHODS = 3
MIN_DATASETS = 2


@dataclass(eq=False)
class CriticalDifference:
    view: View
    methods: list[Any] = field(default_factory=list)  # ascending average rank
    avg_ranks: list[float] = field(default_factory=list)
    datasets: list[Any] = field(default_factory=list)
    left_out: list[Any] = field(default_factory=list)  # methods missing some dataset
    test: Friedman | None = None
    cd: float | None = None
    groups: list[tuple[int, int]] = field(default_factory=list)  # not significantly different (index spans)
    reason: str | None = None  # why there is no analysis

    @property
    def significant(self) -> bool:
        return self.test is not None and self.test.p < ALPHA


def analyse(view: View) -> CriticalDifference:
    board = view.board
    columns = [j for j in range(len(board.datasets)) if any(r.stats[j] and r.stats[j].mean is not None for r in view.rows)]
    result = CriticalDifference(view, datasets=[board.datasets[j] for j in columns])
    complete = [r for r in view.rows if all(r.stats[j] and r.stats[j].mean is not None for j in columns)]
    result.left_out = [r.method for r in view.rows if r not in complete]
    if len(complete) < MIN_METHODS or len(columns) < MIN_DATASETS:
        result.reason = (
            f"needs at least {MIN_METHODS} methods with results on at least {MIN_DATASETS} common datasets "
            f"(here: {len(complete)} methods on {len(columns)} datasets)"
        )
        return result
    # rows = datasets (blocks), columns = methods
    matrix = np.array([[r.stats[j].mean for r in complete] for j in columns], dtype=float)
    ranks = rank_columns(matrix.T, view.metric.higher_is_better).T  # rank methods within each dataset
    avg = ranks.mean(axis=0)
    order = np.argsort(avg, kind="stable")
    result.methods = [complete[i].method for i in order]
    result.avg_ranks = [float(avg[i]) for i in order]
    result.test = friedman(matrix)
    result.cd = critical_difference(len(complete), len(columns))
    result.groups = cliques(result.avg_ranks, result.cd)
    return result


def analyse_boards(views: dict[str, list[View]]) -> dict[str, list[CriticalDifference]]:
    """One analysis per board and fraction, on the board's default metric."""
    return {board_id: [analyse(v) for v in board_views if v.metric == v.board.default] for board_id, board_views in views.items()}
