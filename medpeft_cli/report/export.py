"""The downloads: every row as results.json / results.csv / results.parquet, and the aggregated
cells as summary.csv. Each row carries its protocol_version; the summary keeps versions apart.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from medpeft_cli import duck
from medpeft_cli.report.overview import View
from medpeft_cli.report.rowjson import plain

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


def write_json(lines: list[str], path: Path) -> None:
    """All rows (as rowjson.row_json lines) as a JSON list of objects, one row per line."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n" + ",\n".join(lines) + "\n]\n")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """All rows as CSV with a header; missing values are empty cells."""
    names = columns(rows)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row.get(n) is None else plain(row.get(n)) for n in names])


def _literal(text: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _copy_json(json_path: Path, types: dict[str, str], parquet_path: Path, csv_path: Path | None) -> None:
    spec = "{" + ", ".join(f"{_literal(n)}: {_literal(t)}" for n, t in types.items()) + "}"
    con = duck.connect()
    try:
        con.execute(
            # maximum_object_size bounds one row, and DuckDB allocates twice it up front: 1 GiB made a report
            # job with --mem 1500M fail (out of memory); 64 MiB is far above any row.
            f"CREATE TABLE results AS SELECT * FROM read_json({_literal(json_path)}, format='array', columns={spec}, "
            "maximum_object_size=67108864)"
        )
        con.execute(f"COPY results TO {_literal(parquet_path)} (FORMAT parquet)")
        if csv_path is not None:
            con.execute(f"COPY results TO {_literal(csv_path)} (FORMAT csv, HEADER true)")
    finally:
        con.close()


def write_tables(json_path: Path, names: list[str], parquet_path: Path, csv_path: Path, rows: list[dict[str, Any]]) -> None:
    """results.json as Parquet and CSV (via DuckDB) with the store's column types (other columns as JSON).

    Types are given, not inferred, so text such as timestamps stays text. Rows whose values do not
    fit the store's types (hand-made rows) are written with every column as JSON text in Parquet,
    and as plain text by Python's csv writer.
    """
    import duckdb

    from medpeft_cli.store.results import COLUMNS

    names = names or ["run_key"]
    typed = {n: COLUMNS[n].replace(" PRIMARY KEY", "") if n in COLUMNS else "JSON" for n in names}
    try:
        _copy_json(json_path, typed, parquet_path, csv_path)
    except duckdb.Error:
        _copy_json(json_path, dict.fromkeys(names, "JSON"), parquet_path, None)
        write_csv(rows, csv_path)


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
                        [plain(x) if x is not None else "" for x in (
                            b.protocol_version, b.task, b.backbone, b.weights, view.fraction, view.metric.name,
                            view.metric.higher_is_better, row.method, dataset, stat.n, stat.mean, stat.sd, stat.low, stat.high,
                            rank, cell.n_settings if cell else None,
                        )]  # fmt: skip
                    )
