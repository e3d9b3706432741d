"""Result rows -> leaderboard tables (pure Python, no I/O).

One `Table` per (protocol_version, task, dataset, backbone, weights): rows of different protocol
versions or pretrained weights are never averaged together. Within a table, one `Line` per
(method, data_fraction) summarises the runs whose status is 'ok' (normally one per seed);
other runs are kept in `Table.excluded` and never enter a mean.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from medpeft_cli.report.formatting import is_number

OK = "ok"
PRIMARY = "test_macro_f1"
METRICS: tuple[tuple[str, str], ...] = (
    ("test_macro_f1", "Macro-F1"),
    ("test_accuracy", "Accuracy"),
    ("test_balanced_accuracy", "Bal. acc."),
    ("test_auroc", "AUROC"),
)
COSTS: tuple[str, ...] = ("wall_time_s", "peak_memory_mb", "train_images_per_s")
# Settings that should be equal across the runs of one line; a line where they differ is flagged.
CONFIG_FIELDS: tuple[str, ...] = ("lr", "epochs", "batch_size", "image_size")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n-1) of the finite values; std is None when n < 2."""

    n: int
    mean: float | None
    std: float | None


def summarize(values: Iterable[Any]) -> Stat:
    """`Stat` over the finite numbers in `values` (None, NaN and inf are ignored)."""
    nums = [float(v) for v in values if is_number(v)]
    if not nums:
        return Stat(0, None, None)
    std = statistics.stdev(nums) if len(nums) >= 2 else None
    return Stat(len(nums), statistics.mean(nums), std)


@dataclass
class Line:
    """The runs of one (method, data_fraction) in a table, summarised."""

    method: str | None
    data_fraction: float | None
    rows: list[dict[str, Any]]
    stats: dict[str, Stat]
    trainable_params: tuple[int, int] | None  # (min, max) over the runs
    trainable_pct: tuple[float, float] | None
    lrs: tuple[float, ...]
    mixed: tuple[str, ...]  # CONFIG_FIELDS whose value differs between the runs
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def primary(self) -> Stat:
        return self.stats[PRIMARY]


@dataclass
class Table:
    """One leaderboard table: a protocol version, task, dataset and backbone (+ weights)."""

    protocol_version: int | None
    task: str | None
    dataset: str | None
    backbone: str | None
    weights: str | None
    lines: list[Line] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        return sum(line.n for line in self.lines) + len(self.excluded)


def _sort_text(x: Any) -> tuple[bool, str]:
    return (x is None, "" if x is None else str(x))


def _span(values: list[float]) -> tuple[Any, Any] | None:
    return (min(values), max(values)) if values else None


def _pct(row: dict[str, Any]) -> float | None:
    if is_number(row.get("trainable_pct")):
        return float(row["trainable_pct"])
    trainable, total = row.get("trainable_params"), row.get("total_params")
    if is_number(trainable) and is_number(total) and total > 0:
        return 100.0 * trainable / total
    return None


def make_line(method: str | None, data_fraction: float | None, rows: list[dict[str, Any]]) -> Line:
    """Summarise the 'ok' runs of one (method, data_fraction)."""
    stats = {name: summarize(r.get(name) for r in rows) for name, _ in METRICS}
    stats.update({name: summarize(r.get(name) for r in rows) for name in COSTS})
    trainable = [int(r["trainable_params"]) for r in rows if is_number(r.get("trainable_params"))]
    pcts = [p for p in map(_pct, rows) if p is not None]
    mixed = tuple(name for name in CONFIG_FIELDS if len({repr(r.get(name)) for r in rows}) > 1)
    lrs = tuple(sorted({float(r["lr"]) for r in rows if is_number(r.get("lr"))}))
    return Line(method, data_fraction, rows, stats, _span(trainable), _span(pcts), lrs, mixed)


def _line_order(line: Line) -> tuple:
    frac, mean = line.data_fraction, line.primary.mean
    return (frac is None, -(frac or 0.0), mean is None, -(mean or 0.0), _sort_text(line.method))


def _mark_best(lines: list[Line]) -> None:
    """Mark, for each data fraction, the line(s) with the highest mean macro-F1."""
    best: dict[Any, float] = {}
    for line in lines:
        mean = line.primary.mean
        if mean is not None and mean > best.get(line.data_fraction, float("-inf")):
            best[line.data_fraction] = mean
    for line in lines:
        line.best = line.primary.mean is not None and line.primary.mean == best.get(line.data_fraction)


def _table_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ("protocol_version", "task", "dataset", "backbone", "weights"))


def _table_order(table: Table) -> tuple:
    version = table.protocol_version
    return (
        _sort_text(table.dataset),
        _sort_text(table.backbone),
        _sort_text(table.weights),
        _sort_text(table.task),
        version is None,
        -version if is_number(version) else 0,
    )


def build_tables(rows: Iterable[dict[str, Any]]) -> list[Table]:
    """Group rows into sorted tables; lines sorted by data fraction (largest first), then mean macro-F1."""
    tables: dict[tuple, Table] = {}
    grouped: dict[tuple, dict[tuple, list[dict[str, Any]]]] = {}
    for row in rows:
        key = _table_key(row)
        table = tables.get(key)
        if table is None:
            table = tables[key] = Table(*key)
            grouped[key] = {}
        if row.get("status") != OK:
            table.excluded.append(row)
            continue
        frac = row.get("data_fraction")
        frac = float(frac) if is_number(frac) else None
        grouped[key].setdefault((row.get("method"), frac), []).append(row)
    for key, table in tables.items():
        table.lines = sorted(
            (make_line(method, frac, runs) for (method, frac), runs in grouped[key].items()), key=_line_order
        )
        _mark_best(table.lines)
        table.excluded.sort(key=lambda r: (_sort_text(r.get("method")), _sort_text(r.get("run_key"))))
    return sorted(tables.values(), key=_table_order)
