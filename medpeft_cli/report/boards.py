"""Runs -> boards -> cells (pure Python, no I/O).

A `Board` is one leaderboard table of the study: a protocol version, task, backbone and pretrained
weights. Runs of different protocol versions or weights are never in the same board, so they are
never aggregated together. A `Cell` is one (data fraction, method, dataset) of a board: the runs
with status 'ok' of one setting, one per seed, summarised as mean and 95 % CI per metric.

When a cell holds runs of several settings (learning rate, method options, epochs, ...: a
hyper-parameter search), the setting with the best mean validation score of the board's default
metric is reported, as the study selected hyper-parameters on the validation split; the cell says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from medpeft_cli.report.formatting import is_number, value
from medpeft_cli.report.metrics import CATALOGUE, MetricInfo, default_metric
from medpeft_cli.report.runs import Run
from medpeft_cli.report.stats import Stat, summarize

FULL_DATA = 1.0


def sort_key(x: Any) -> tuple:
    """Order for names and numbers that may be None or of mixed types (None last)."""
    return (x is None, not is_number(x), x if is_number(x) else str(x))


def span(values: Iterable[Any]) -> tuple[Any, Any] | None:
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else None


@dataclass(eq=False)
class Cell:
    fraction: float | None
    method: Any
    dataset: Any
    runs: list[Run]  # the reported setting's 'ok' runs
    stats: dict[str, Stat]  # metric name -> Stat
    n_settings: int = 1
    setting_note: str | None = None  # why and which setting was chosen, when there were several
    _by_seed: dict[str, dict[Any, float]] = field(default_factory=dict, repr=False)  # values_by_seed, per metric

    @property
    def n(self) -> int:
        return len(self.runs)

    @cached_property  # asked for by every (fraction, metric) view of the overview
    def trainable(self) -> tuple[int, int] | None:
        return span(r.trainable for r in self.runs)

    @cached_property
    def trainable_pct(self) -> tuple[float, float] | None:
        return span(r.trainable_pct for r in self.runs)

    def values_by_seed(self, metric: str) -> dict[Any, float]:
        """Metric value per seed (the mean when a seed occurs twice); runs without a seed are left out."""
        if metric in self._by_seed:  # full fine-tuning's cell is paired with every other method's
            return self._by_seed[metric]
        groups: dict[Any, list[float]] = {}
        for run in self.runs:
            if run.seed is not None and metric in run.metrics:
                groups.setdefault(run.seed, []).append(run.metrics[metric])
        self._by_seed[metric] = {seed: sum(v) / len(v) for seed, v in groups.items()}
        return self._by_seed[metric]


def cell_title(cell: Cell | None, metric) -> str:
    """Hover text of a table cell: n, CI, setting choice."""
    if cell is None:
        return "no runs"
    stat = cell.stats.get(metric.name)
    if stat is None or stat.mean is None:
        return f"{cell.n} run(s) without {metric.label}"
    parts = [f"n = {stat.n} seed{'s' if stat.n != 1 else ''}"]
    if stat.half_width is not None:
        parts.append(f"95 % CI {stat.low:.{metric.decimals}f} to {stat.high:.{metric.decimals}f}")
    else:
        parts.append("single run: no CI")
    if cell.setting_note:
        parts.append(cell.setting_note)
    return "; ".join(parts)


def _describe_choice(chosen: list[Run], settings: dict[str, list[Run]], metric: MetricInfo | None) -> str:
    flat = [runs[0].setting for runs in settings.values()]
    keys = sorted({k for s in flat for k in s})
    differing = [k for k in keys if len({repr(s.get(k)) for s in flat}) > 1]
    picked = ", ".join(f"{k}={value(chosen[0].setting.get(k))}" for k in differing) or "one of them"
    by = f"validation {metric.label}" if metric else "validation score"
    return f"{len(settings)} settings in this cell; reported: {picked} (best mean {by})"


def choose_setting(runs: list[Run], metric: MetricInfo | None) -> tuple[list[Run], int, str | None]:
    """The runs of the setting to report: the best mean validation score of `metric` (ties and
    settings without validation scores: more runs first, then the setting's text for a stable order)."""
    settings: dict[str, list[Run]] = {}
    for run in runs:
        settings.setdefault(run.setting_key, []).append(run)
    if len(settings) == 1:
        return runs, 1, None

    def score(item: tuple[str, list[Run]]) -> tuple:
        key, group = item
        val = summarize(r.val_metrics.get(metric.name) for r in group).mean if metric else None
        signed = None if val is None else (val if metric.higher_is_better else -val)
        return (signed is None, -(signed or 0.0), -len(group), key)

    _, chosen = min(settings.items(), key=score)
    return chosen, len(settings), _describe_choice(chosen, settings, metric)


@dataclass(eq=False)
class Board:
    index: int
    protocol_version: Any
    task: Any
    backbone: Any
    weights: Any
    runs: list[Run] = field(default_factory=list)
    datasets: list[Any] = field(default_factory=list)
    methods: list[Any] = field(default_factory=list)
    fractions: list[float | None] = field(default_factory=list)  # largest first
    metrics: list[MetricInfo] = field(default_factory=list)
    default: MetricInfo | None = None
    cells: dict[tuple, Cell] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"b{self.index}"

    @property
    def main_fraction(self) -> float | None:
        """The fraction the study's tables use: all training data when present, else the largest."""
        if FULL_DATA in self.fractions:
            return FULL_DATA
        return self.fractions[0] if self.fractions else None

    @property
    def excluded(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]

    def cell(self, fraction: float | None, method: Any, dataset: Any) -> Cell | None:
        return self.cells.get((fraction, method, dataset))


def _board_order(board: Board) -> tuple:
    version = board.protocol_version
    return (
        sort_key(board.task),
        version is None,
        -version if is_number(version) else 0,
        sort_key(board.backbone),
        sort_key(board.weights),
    )


def build_boards(runs: Iterable[Run]) -> list[Board]:
    """Group runs into boards and cells; boards ordered by task, newest protocol first, backbone."""
    boards: dict[tuple, Board] = {}
    for run in runs:
        key = run.board_key
        if key not in boards:
            boards[key] = Board(0, *key)
        boards[key].runs.append(run)
    ordered = sorted(boards.values(), key=_board_order)
    for i, board in enumerate(ordered, start=1):
        board.index = i
        _fill(board)
    return ordered


def _fill(board: Board) -> None:
    ok = [r for r in board.runs if r.ok]
    present = {name for r in ok for name in r.metrics}
    board.metrics = [m for m in CATALOGUE if m.name in present]
    board.default = default_metric(board.metrics)
    board.datasets = sorted({r.dataset for r in board.runs}, key=sort_key)
    board.methods = sorted({r.method for r in board.runs}, key=sort_key)
    fractions = {r.fraction for r in ok}
    board.fractions = sorted(fractions, key=lambda f: (f is None, -(f or 0.0)))
    grouped: dict[tuple, list[Run]] = {}
    for run in ok:
        grouped.setdefault((run.fraction, run.method, run.dataset), []).append(run)
    for (fraction, method, dataset), group in grouped.items():
        chosen, n_settings, note = choose_setting(group, board.default)
        stats = {m.name: summarize(r.metrics.get(m.name) for r in chosen) for m in board.metrics}
        board.cells[(fraction, method, dataset)] = Cell(fraction, method, dataset, chosen, stats, n_settings, note)
