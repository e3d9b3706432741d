"""`medpeft runs`: the stored runs as a table, JSON or CSV, without a DuckDB client. Read-only.

Each listed run: run_key, status, task, dataset, backbone, method, data_fraction, shots, seed, its task's
main metric (classification: test macro-F1; text-to-image: test FID) and when it finished. Filters are
exact matches (a repeated option matches any of its values), `key_prefix` a prefix of the run key.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpeft_cli import jsonsafe
from medpeft_cli.store.results import query

FIELDS = ("run_key", "status", "task", "dataset", "backbone", "method", "data_fraction", "shots", "seed", "metric", "value", "finished_at")
# the main metric of each task: (name shown, column, digits)
MAIN_METRIC = {"classification": ("test macro-F1", "test_macro_f1", 4), "t2i": ("test FID", "test_fid", 3)}
FILTERED = ("dataset", "method", "backbone", "status", "task")


@dataclass
class RunFilter:
    """Which runs to list: each given list is a set of allowed values of its column (empty: any)."""

    dataset: Sequence[str] = field(default_factory=list)
    method: Sequence[str] = field(default_factory=list)
    backbone: Sequence[str] = field(default_factory=list)
    status: Sequence[str] = field(default_factory=list)
    task: Sequence[str] = field(default_factory=list)
    key_prefix: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """A SQL condition with `?` parameters (values never enter the SQL text)."""
        parts, params = [], []
        for column in FILTERED:
            values = list(getattr(self, column) or [])
            if values:
                if column == "task":  # rows older than tasks are classification runs
                    parts.append(f"coalesce(task, 'classification') IN ({', '.join('?' for _ in values)})")
                else:
                    parts.append(f'"{column}" IN ({", ".join("?" for _ in values)})')
                params += values
        if self.key_prefix:
            parts.append("starts_with(run_key, ?)")
            params.append(self.key_prefix)
        return " AND ".join(parts), params


def listed(row: dict[str, Any]) -> dict[str, Any]:
    """The listing fields of one stored row."""
    task = row.get("task") or "classification"
    name, column, _ = MAIN_METRIC.get(task, MAIN_METRIC["classification"])
    return {
        "run_key": row["run_key"], "status": row.get("status"), "task": task, "dataset": row.get("dataset"),
        "backbone": row.get("backbone"), "method": row.get("method"), "data_fraction": row.get("data_fraction"),
        "shots": row.get("shots"), "seed": row.get("seed"), "metric": name, "value": row.get(column),
        "finished_at": row.get("finished_at"),
    }  # fmt: skip


def list_runs(db_path: str | Path, filters: RunFilter | None = None) -> list[dict[str, Any]]:
    """The stored runs that pass `filters`, oldest first (the database is opened read-only)."""
    where, params = (filters or RunFilter()).where()
    return [listed(row) for row in query(db_path, where, params)]


def as_json(runs: list[dict[str, Any]]) -> str:
    return jsonsafe.dumps(runs, indent=1)


def as_csv(runs: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in jsonsafe.finite(run).items()} for run in runs)
    return buffer.getvalue()


def _cell(run: dict[str, Any], name: str) -> str:
    value = run[name]
    if name == "value":
        digits = next((d for label, _, d in MAIN_METRIC.values() if label == run["metric"]), 4)
        return "-" if value is None else f"{value:.{digits}f}"
    if name == "data_fraction":
        return f"{run['shots']} shots" if run.get("shots") is not None else ("-" if value is None else f"{value:g}")
    return "-" if value is None else str(value)


TABLE_COLUMNS = (("run_key", "run key"), ("status", "status"), ("task", "task"), ("dataset", "dataset"), ("backbone", "backbone"),
                 ("method", "method"), ("data_fraction", "data"), ("seed", "seed"), ("metric", "metric"), ("value", "value"),
                 ("finished_at", "finished"))  # fmt: skip


def as_table(runs: list[dict[str, Any]]) -> str:
    """Plain aligned columns, never cut or wrapped at any terminal width (long lines stay long)."""
    if not runs:
        return "no stored run matches"
    rows = [[title for _, title in TABLE_COLUMNS]] + [[_cell(run, name) for name, _ in TABLE_COLUMNS] for run in runs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    right = {i for i, (name, _) in enumerate(TABLE_COLUMNS) if name in ("seed", "value")}
    return "\n".join(
        "  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows
    )
