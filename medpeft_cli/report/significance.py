"""Critical-difference analysis per board and data fraction (Demšar 2006), on the board's default metric.

Blocks are the datasets, treatments the methods, the score of a (dataset, method) its mean over
seeds. The Friedman test needs a complete table, so only methods with a result on every dataset of
the view take part (the others are listed as left out); it needs at least 3 methods and 2 datasets.

A board with results on one dataset only (a first study, the demo) cannot be compared across datasets;
when it has at least 2 data fractions, one more analysis takes the fractions of that dataset as blocks
(`analyse_fractions`): it ranks the methods across data budgets on this one dataset, a narrower claim,
and the page says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpeft_cli.report.overview import View
from medpeft_cli.report.stats import ALPHA, Friedman, cliques, critical_difference, friedman, rank_columns

MIN_METHODS = 3
MIN_DATASETS = 2


DATASETS = "datasets"
FRACTIONS = "data fractions"


@dataclass(eq=False)
class CriticalDifference:
    view: View  # the view whose metric is tested (across fractions: the board's main fraction's)
    blocks: str = DATASETS  # what the Friedman blocks are: DATASETS or FRACTIONS (of `dataset`)
    dataset: Any = None  # FRACTIONS: the one dataset
    methods: list[Any] = field(default_factory=list)  # ascending average rank
    avg_ranks: list[float] = field(default_factory=list)
    datasets: list[Any] = field(default_factory=list)  # the blocks: datasets, or fractions (FRACTIONS)
    left_out: list[Any] = field(default_factory=list)  # methods missing some block
    test: Friedman | None = None
    cd: float | None = None
    groups: list[tuple[int, int]] = field(default_factory=list)  # not significantly different (index spans)
    reason: str | None = None  # why there is no analysis

    @property
    def significant(self) -> bool:
        return self.test is not None and self.test.p < ALPHA


def analyse(view: View) -> CriticalDifference:
    """Across the datasets of one view (one fraction)."""
    board = view.board
    columns = [j for j in range(len(board.datasets)) if any(r.stats[j] and r.stats[j].mean is not None for r in view.rows)]
    result = CriticalDifference(view, datasets=[board.datasets[j] for j in columns])
    scores = {r.method: [r.stats[j].mean if r.stats[j] else None for j in columns] for r in view.rows}
    return _rank(result, scores, "datasets")


def analyse_fractions(views: list[View], dataset_index: int) -> CriticalDifference:
    """Across the data fractions of one dataset: `views` are a board's views of one metric, one per fraction."""
    main = next((v for v in views if v.is_default), views[0])
    usable = [v for v in views if any(r.stats[dataset_index] and r.stats[dataset_index].mean is not None for r in v.rows)]
    result = CriticalDifference(main, blocks=FRACTIONS, dataset=main.board.datasets[dataset_index], datasets=[v.fraction for v in usable])
    scores: dict[Any, list[float | None]] = {r.method: [] for r in main.rows}
    for v in usable:
        by_method = {r.method: r.stats[dataset_index] for r in v.rows}
        for method, column in scores.items():
            stat = by_method.get(method)
            column.append(stat.mean if stat else None)
    return _rank(result, scores, "data fractions")


def _rank(result: CriticalDifference, scores: dict[Any, list[float | None]], blocks: str) -> CriticalDifference:
    """Friedman + Nemenyi on the methods with a score in every block (`scores`: method -> one per block)."""
    complete = [m for m, column in scores.items() if all(v is not None for v in column)]
    result.left_out = [m for m in scores if m not in complete]
    n_blocks = len(result.datasets)
    if len(complete) < MIN_METHODS or n_blocks < MIN_DATASETS:
        result.reason = (
            f"needs at least {MIN_METHODS} methods with results on at least {MIN_DATASETS} common {blocks} "
            f"(here: {len(complete)} methods on {n_blocks} {blocks})"
        )
        return result
    # rows = blocks, columns = methods
    matrix = np.array([[scores[m][j] for m in complete] for j in range(n_blocks)], dtype=float)
    ranks = rank_columns(matrix.T, result.view.metric.higher_is_better).T  # rank methods within each block
    avg = ranks.mean(axis=0)
    order = np.argsort(avg, kind="stable")
    result.methods = [complete[i] for i in order]
    result.avg_ranks = [float(avg[i]) for i in order]
    result.test = friedman(matrix)
    result.cd = critical_difference(len(complete), n_blocks)
    result.groups = cliques(result.avg_ranks, result.cd)
    return result


def analyse_boards(views: dict[str, list[View]]) -> dict[str, list[CriticalDifference]]:
    """One analysis per board and fraction, on the board's default metric; for a board with results on
    one dataset and at least 2 fractions, first one across its fractions."""
    analyses = {}
    for board_id, board_views in views.items():
        default = [v for v in board_views if v.metric == v.board.default]
        per_fraction = [analyse(v) for v in default]
        with_results = {d for cd in per_fraction for d in cd.datasets}
        fractions = [v for v in default if v.fraction is not None]
        across = []
        if len(with_results) == 1 and len(fractions) >= MIN_DATASETS:
            across = [analyse_fractions(fractions, fractions[0].board.datasets.index(with_results.pop()))]
        analyses[board_id] = across + per_fraction
    return analyses
