"""The downloads: every row as results.json / results.csv / results.parquet, and the aggregated
cells as summary.csv. Each row carries its protocol_version; the summary keeps versions apart.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
from pathlib import Path
from typing import Any

from medpeft_cli.report.overview import View

SUMMARY_COLUMNS = (
    "protocol_version", "task", "backbone", "weights", "data_fraction", "metric", "higher_is_better",
    "method", "dataset", "n", "mean", "sd", "ci95_low", "ci95_high", "rank", "settings_in_cell",
)  # fmt: skip


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of the rows, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


_SCALARS = (str, int, bool, type(None))


def _plain(x: Any) -> Any:
    """A JSON-safe scalar: NaN/inf become null, other numbers plain int/float, unknown types their
    text. Exact type checks first: this runs for every value of every row."""
    kind = type(x)
    if kind is float:
        return x if math.isfinite(x) else None
    if kind in _SCALARS:
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):  # numpy.float64, Decimal, ...
        x = float(x)
        return x if math.isfinite(x) else None
    return str(x)


def write_json(rows: list[dict[str, Any]], path: Path) -> None:
    """All rows as a JSON list of objects, one row per line (strict JSON: no NaN)."""
    lines = (json.dumps({k: _plain(v) for k, v in row.items()}, ensure_ascii=False, allow_nan=False) for row in rows)
    Path(path).write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """All rows as CSV with a header; missing values are empty cells."""
    names = columns(rows)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row.get(n) is None else _plain(row.get(n)) for n in names])


def _literal(text: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _copy_json_to_parquet(json_path: Path, types: dict[str, str], path: Path) -> None:
    import duckdb

    spec = "{" + ", ".join(f"{_literal(n)}: {_literal(t)}" for n, t in types.items()) + "}"
    con = duckdb.connect()
    try:
        con.execute(
            f"COPY (SELECT * FROM read_json({_literal(json_path)}, format='array', columns={spec}, maximum_object_size=1073741824)) "
            f"TO {_literal(path)} (FORMAT parquet)"
        )
    finally:
        con.close()


def write_parquet(json_path: Path, names: list[str], path: Path) -> None:
    """results.json as Parquet (via DuckDB) with the store's column types (other columns as JSON).

    Types are given, not inferred, so text such as timestamps stays text. Rows whose values do not
    fit the store's types (hand-made rows) are written with every column as JSON text instead.
    """
    import duckdb

    from medpeft_cli.store.results import COLUMNS

    names = names or ["run_key"]
    typed = {n: COLUMNS[n].replace(" PRIMARY KEY", "") if n in COLUMNS else "JSON" for n in names}
    try:
        _copy_json_to_parquet(json_path, typed, path)
    except duckdb.Error:
        _copy_json_to_parquet(json_path, dict.fromkeys(names, "JSON"), path)


def write_summary(views: list[View], path: Path) -> None:
    """One line per (board, fraction, metric, method, dataset) cell of the overview."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_COLUMNS)
        for view in views:
            b = view.board
            for row in view.rows:
                for dataset, cell, stat, rank in zip(b.datasets, row.cells, row.stats, row.ranks):
                    if stat is None or stat.mean is None:
                        continue
                    writer.writerow(
                        [_plain(x) if x is not None else "" for x in (
                            b.protocol_version, b.task, b.backbone, b.weights, view.fraction, view.metric.name,
                            view.metric.higher_is_better, row.method, dataset, stat.n, stat.mean, stat.sd, stat.low, stat.high,
                            rank, cell.n_settings if cell else None,
                        )]  # fmt: skip
                    )
