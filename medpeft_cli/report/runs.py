"""Store rows -> `Run` records: each row's JSON parsed once, its metrics and settings pulled out.

A row is whatever the store holds (plain dict); nothing here assumes a column exists. Numbers that
are missing, NaN or infinite are simply absent from `Run.metrics`, so they never enter a mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from medpeft_cli.report.catalog import UNKNOWN, Catalog
from medpeft_cli.report.formatting import is_number
from medpeft_cli.report.metrics import CATALOGUE
from medpeft_cli.report.rowjson import row_json

OK = "ok"
# Spec fields that place a run in a table cell rather than describe its hyper-parameters.
PLACEMENT_FIELDS = ("task", "dataset", "backbone", "weights", "seed", "data_fraction")
# Columns that describe the setting when a row has no (valid) spec_json.
FALLBACK_SETTING_COLUMNS = ("method_options", "lr", "epochs", "batch_size", "image_size")


def parse_json(text: Any) -> tuple[Any, str | None]:
    """(parsed value, None), or (None, raw text) when `text` is not valid JSON. Non-strings pass through."""
    if not isinstance(text, str):
        return text, None
    try:
        return json.loads(text), None
    except ValueError:
        return None, text


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _setting(row: dict[str, Any], spec: Any) -> dict[str, Any]:
    """The run's hyper-parameters: its spec without the fields that place it in a cell."""
    if isinstance(spec, dict):
        flat = _flatten({k: v for k, v in spec.items() if k not in PLACEMENT_FIELDS})
        flat.pop("method.name", None)
        return flat
    return {name: row.get(name) for name in FALLBACK_SETTING_COLUMNS if row.get(name) is not None}


def _metric_values(row: dict[str, Any], section: Any, prefix: str) -> dict[str, float]:
    values: dict[str, float] = {}
    section = section if isinstance(section, dict) else {}
    for metric in CATALOGUE:
        value = row.get(f"{prefix}{metric.name}")
        if not is_number(value):
            value = section.get(metric.name)
        if is_number(value):
            values[metric.name] = float(value)
    return values


def _fraction(value: Any) -> float | None:
    return float(value) if is_number(value) else None


@dataclass
class Run:
    """One stored row with its parsed parts (metrics_json parsed on first use)."""

    row: dict[str, Any]
    setting: dict[str, Any]  # flattened hyper-parameters
    setting_key: str
    spec: Any = None
    spec_raw: str | None = None
    kind: str = UNKNOWN  # the method's kind (family) from the method catalogue
    metrics: dict[str, float] = field(default_factory=dict)  # catalogue metric -> test value

    @cached_property
    def _metrics_json(self) -> tuple[Any, str | None]:
        return parse_json(self.row.get("metrics_json"))

    @cached_property
    def json(self) -> str:
        """The row as one line of strict JSON (results.json and the run record)."""
        return row_json(self.row)

    @property
    def metrics_doc(self) -> Any:
        """Parsed metrics_json (None when absent or invalid)."""
        return self._metrics_json[0]

    @property
    def metrics_raw(self) -> str | None:
        """metrics_json's text when it is not valid JSON."""
        return self._metrics_json[1]

    def _section(self, name: str) -> Any:
        return self.metrics_doc.get(name) if isinstance(self.metrics_doc, dict) else None

    @cached_property
    def val_metrics(self) -> dict[str, float]:
        """Catalogue metric -> validation value (for choosing between settings)."""
        values = _metric_values(self.row, None, "val_")
        return values or _metric_values(self.row, self._section("val"), "val_")

    @property
    def key(self) -> Any:
        return self.row.get("run_key")

    @property
    def ok(self) -> bool:
        return self.row.get("status") == OK

    @property
    def board_key(self) -> tuple:
        return tuple(self.row.get(k) for k in ("protocol_version", "task", "backbone", "weights"))

    @property
    def dataset(self) -> Any:
        return self.row.get("dataset")

    @property
    def method(self) -> Any:
        return self.row.get("method")

    @property
    def seed(self) -> Any:
        return self.row.get("seed")

    @property
    def fraction(self) -> float | None:
        return _fraction(self.row.get("data_fraction"))

    @property
    def trainable(self) -> int | None:
        value = self.row.get("trainable_params")
        return int(value) if is_number(value) else None

    @property
    def trainable_pct(self) -> float | None:
        if is_number(self.row.get("trainable_pct")):
            return float(self.row["trainable_pct"])
        trainable, total = self.row.get("trainable_params"), self.row.get("total_params")
        if is_number(trainable) and is_number(total) and total > 0:
            return 100.0 * trainable / total
        return None


def make_run(row: dict[str, Any], catalog: Catalog | None = None) -> Run:
    spec, spec_raw = parse_json(row.get("spec_json"))
    setting = _setting(row, spec)
    run = Run(
        row=row,
        setting=setting,
        setting_key=json.dumps(setting, sort_keys=True, default=str),
        spec=spec,
        spec_raw=spec_raw,
        kind=catalog.kind(row.get("task"), row.get("method")) if catalog else UNKNOWN,
    )
    # Test metrics from the columns; metrics_json only for a row whose task stores them there alone
    # (a row with some catalogue columns filled has its task's metrics as columns).
    run.metrics = _metric_values(row, None, "test_") or _metric_values(row, run._section("test"), "test_")
    return run
