"""Reading a CSV of published results: one row per (table, backbone, dataset, method, metric[, setting]).

Two shapes are accepted (docs/leaderboard.md, "Published results"):

    long:  table,backbone,dataset,method,metric,value[,plus_minus_as_printed][,data_fraction|train_images]
    wide:  table,backbone,dataset,method,<metric>[,plus_minus_as_printed][,data_fraction|train_images]
           where <metric> is one metric column such as f1 or fid (the study's Tables 2-4 files)

Values are kept as printed (`value_text`, `plus_minus`) next to the parsed number. Anything else, a
missing column, a value that is not a finite number, the same entry twice, is one UserError line naming
the file and line; nothing is imported then.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from medpeft_cli.errors import UserError
from medpeft_cli.reference.mapping import METRICS

REQUIRED = ("table", "backbone", "dataset", "method")
PLUS_MINUS = ("plus_minus_as_printed", "plus_minus")
SETTINGS = ("data_fraction", "train_images")
OPTIONAL = ("metric", "value", "task", *PLUS_MINUS, *SETTINGS)


@dataclass(frozen=True)
class PublishedRow:
    line: int  # line of the CSV file (the header is line 1)
    table: str
    backbone: str
    dataset: str
    method: str
    metric: str
    value: float
    value_text: str
    plus_minus: str | None
    data_fraction: float | None
    train_images: str | None

    @property
    def setting(self) -> str:
        if self.data_fraction is not None:
            return f"data_fraction={self.data_fraction:g}"
        return f"train_images={self.train_images}" if self.train_images else ""

    def identity(self) -> tuple:
        return (self.table, self.backbone, self.dataset, self.method, self.metric.lower(), self.setting)


@dataclass(frozen=True)
class PublishedFile:
    path: Path
    sha256: str
    rows: list[PublishedRow]


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {what} {text!r} is not a number; write it as printed, e.g. 0.92") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: {what} {text!r} is not a finite number")
    return value


def _columns(header: list[str], path: Path) -> tuple[str | None, str | None]:
    """(the wide file's metric column or None, the ± column or None); refuses unknown or missing columns."""
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; a published-results CSV has {', '.join(REQUIRED)} and a metric (docs/leaderboard.md)")
    metric_columns = [c for c in header if c.lower() in METRICS]
    unknown = [c for c in header if c not in REQUIRED and c not in OPTIONAL and c not in metric_columns]
    if unknown:
        raise UserError(f"{path}: unknown column(s) {', '.join(unknown)}; known: {', '.join((*REQUIRED, *OPTIONAL))} or one metric column ({', '.join(METRICS)})")
    long_form = "metric" in header or "value" in header
    if long_form and not ("metric" in header and "value" in header):
        raise UserError(f"{path}: give both `metric` and `value` columns (long form), or one metric column such as f1 (wide form)")
    if long_form and metric_columns:
        raise UserError(f"{path}: has both metric/value columns and the metric column {metric_columns[0]}; keep one form")
    if not long_form and len(metric_columns) != 1:
        found = ", ".join(metric_columns) or "none"
        raise UserError(f"{path}: needs exactly one metric column ({', '.join(METRICS)}) or metric/value columns; found {found}")
    if sum(c in header for c in SETTINGS) > 1:
        raise UserError(f"{path}: give the training data as data_fraction or train_images, not both")
    pm = next((c for c in PLUS_MINUS if c in header), None)
    return (None if long_form else metric_columns[0]), pm


def _row(raw: dict[str, str], line: int, metric_column: str | None, pm: str | None, path: Path) -> PublishedRow:
    where = f"{path} line {line}"
    cells = {k: (v or "").strip() for k, v in raw.items() if k is not None}
    if None in raw:
        raise UserError(f"{where}: more cells than columns; check the commas of this line")
    for name in REQUIRED:
        if not cells.get(name):
            raise UserError(f"{where}: empty {name}")
    metric = metric_column or cells.get("metric", "")
    text = cells.get(metric_column) if metric_column else cells.get("value", "")
    if not metric or not text:
        raise UserError(f"{where}: empty metric or value")
    fraction = cells.get("data_fraction") or None
    value = _number(text, "value", where)
    frac = _number(fraction, "data_fraction", where) if fraction else None
    if frac is not None and not 0 < frac <= 1:
        raise UserError(f"{where}: data_fraction {fraction} is not in (0, 1]")
    return PublishedRow(
        line, cells["table"], cells["backbone"], cells["dataset"], cells["method"], metric, value, text,
        (cells.get(pm) or None) if pm else None, frac, cells.get("train_images") or None,
    )  # fmt: skip


def read_published(path: Path) -> PublishedFile:
    """Parse and check one CSV of published results."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; pass a CSV file of published results") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save the CSV as UTF-8") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise UserError(f"{path} is empty; a published-results CSV starts with a header line (docs/leaderboard.md)")
    reader.fieldnames = header
    metric_column, pm = _columns(header, path)
    rows, seen = [], {}
    for i, raw in enumerate(reader, start=2):
        if not any((v or "").strip() for k, v in raw.items() if k is not None):
            continue  # blank line
        row = _row(raw, i, metric_column, pm, path)
        if row.identity() in seen:
            raise UserError(f"{path} line {i}: the same entry as line {seen[row.identity()]} ({row.table}, {row.backbone}, {row.dataset}, {row.method}, {row.metric}); keep one")
        seen[row.identity()] = i
        rows.append(row)
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    return PublishedFile(path, hashlib.sha256(data).hexdigest(), rows)
