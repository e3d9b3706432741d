"""The rows as downloadable files: results.json and results.csv."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of the rows, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def _plain(x: Any) -> Any:
    """A JSON-safe scalar: NaN/inf become null, unknown types their text."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def write_json(rows: list[dict[str, Any]], path: Path) -> None:
    """All rows as a JSON list of objects (strict JSON: no NaN)."""
    data = [{k: _plain(v) for k, v in row.items()} for row in rows]
    Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """All rows as CSV with a header; missing values are empty cells."""
    names = columns(rows)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row.get(n) is None else _plain(row.get(n)) for n in names])
