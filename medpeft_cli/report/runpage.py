"""The context of one run page (runs/<run_key>.html): every stored field of the run, grouped, plus
its training curves and — when the run directory is at hand — confusion matrix, samples and files.

Values stay raw (numbers, None); templates format them with the ``fmt`` filter.
"""

from __future__ import annotations

import json
from itertools import zip_longest
from pathlib import Path
from typing import Any

from medpeft_cli.report import charts
from medpeft_cli.report.formatting import decimals, is_number
from medpeft_cli.report.keys import page_name, slug
from medpeft_cli.report.metrics import CATALOGUE
from medpeft_cli.report.runfiles import RunFiles, scan
from medpeft_cli.report.runs import Run, parse_json

# (column, label, format kind) for the sections of a run page.
SETUP_FIELDS = (
    ("status", "Status", "value"),
    ("protocol_version", "Protocol version", "value"),
    ("task", "Task", "value"),
    ("dataset", "Dataset", "value"),
    ("backbone", "Backbone", "value"),
    ("weights", "Pretrained weights", "value"),
    ("method", "Method", "value"),
    ("data_fraction", "Training data", "fraction"),
    ("train_images", "Training images", "count"),
    ("seed", "Seed", "value"),
    ("epochs", "Epochs", "value"),
    ("lr", "Learning rate", "value"),
    ("batch_size", "Batch size", "value"),
    ("image_size", "Image size", "value"),
    ("precision", "Precision", "value"),
)
# The test metrics come first, data-driven (`_results`); then these when the row has them.
RESULT_FIELDS = (
    ("val_macro_f1", "Validation macro-F1", "metric"),
    ("best_epoch", "Selected epoch (best validation macro-F1)", "value"),
    ("num_classes", "Classes", "value"),
)
PARAM_FIELDS = (
    ("trainable_params", "Trainable parameters", "params_exact"),
    ("head_params", "of which classification head", "params_exact"),
    ("method_params", "of which added by the method", "params_exact"),
    ("total_params", "Total parameters", "params_exact"),
    ("trainable_pct", "Trainable share", "percent"),
)
COST_FIELDS = (
    ("wall_time_s", "Wall time", "seconds"),
    ("train_images_per_s", "Training throughput", "throughput"),
    ("peak_memory_mb", "Peak memory", "megabytes"),
    ("memory_kind", "Memory measured", "value"),
    ("device", "Device", "value"),
    ("world_size", "Processes", "value"),
)
PROVENANCE_FIELDS = (
    ("run_key", "Run key", "value"),
    ("medpeft_version", "medpeft version", "value"),
    ("git_commit", "Git commit", "value"),
    ("python_version", "Python", "value"),
    ("torch_version", "torch", "value"),
    ("timm_version", "timm", "value"),
    ("peft_version", "peft", "value"),
    ("accelerate_version", "accelerate", "value"),
    ("device", "Device", "value"),
    ("world_size", "Processes", "value"),
    ("container_image", "Container image", "value"),
    ("dataset_source", "Dataset source", "value"),
    ("dataset_checksum", "Dataset split checksum", "value"),
    ("weights_source", "Weights source", "value"),
    ("backbone_checksum", "Backbone checksum", "value"),
    ("started_at", "Started", "value"),
    ("finished_at", "Finished", "value"),
)
# Columns in the one-line summary under a run page's title.
HEAD_FIELDS = ("status", "dataset", "backbone", "method", "data_fraction", "seed", "protocol_version")
# Columns shown in their own section (not as label/value items).
STRUCTURED = ("spec_json", "metrics_json", "class_names_json", "per_class_f1_json")
SHOWN = {name for group in (SETUP_FIELDS, RESULT_FIELDS, PARAM_FIELDS, COST_FIELDS, PROVENANCE_FIELDS) for name, _, _ in group} | {
    m.column for m in CATALOGUE
}


def run_href(run_key: Any) -> str | None:
    """Link to a run page, relative to the site root; None when the key is unsafe."""
    name = page_name(run_key)
    return None if name is None else f"runs/{name}"


def _items(row: dict[str, Any], fields: tuple[tuple[str, str, str], ...]) -> list[dict[str, Any]]:
    return [{"label": label, "value": row.get(name), "kind": kind} for name, label, kind in fields]


def _results(run: Run) -> list[dict[str, Any]]:
    """Test metrics of the catalogue the run has (macro-F1 ... for classification, FID/KID for
    generation), each with its own decimals; then validation score, selected epoch, classes."""
    tests = []
    for m in CATALOGUE:
        if m.name in run.metrics:
            tests.append({"label": f"Test {m.label}", "value": decimals(run.metrics[m.name], m.decimals), "kind": "value"})
        elif run.row.get(m.column) is not None:  # NaN or inf (a diverged run): shown as such
            tests.append({"label": f"Test {m.label}", "value": run.row[m.column], "kind": "metric"})
    return tests + [i for i in _items(run.row, RESULT_FIELDS) if i["value"] is not None]


def class_names(row: dict[str, Any]) -> list[Any]:
    names, _ = parse_json(row.get("class_names_json"))
    return names if isinstance(names, list) else []


def _per_class(row: dict[str, Any]) -> list[dict[str, Any]]:
    names = class_names(row)
    scores, _ = parse_json(row.get("per_class_f1_json"))
    scores = scores if isinstance(scores, list) else []
    return [
        {"index": i, "name": name if name is not None else f"class {i}", "f1": score}
        for i, (name, score) in enumerate(zip_longest(names, scores))
    ]


def _history(history: Any) -> dict[str, Any] | None:
    """A list of per-epoch dicts as a table (columns in first-seen order)."""
    if not isinstance(history, list) or not history or not all(isinstance(h, dict) for h in history):
        return None
    columns: list[str] = []
    for entry in history:
        columns.extend(k for k in entry if k not in columns)
    return {"columns": columns, "rows": [[entry.get(c) for c in columns] for entry in history]}


# Validation curves drawn per epoch: the catalogue's metrics and calibration error (not counts such as val_n).
CURVE_METRICS = {m.name for m in CATALOGUE} | {"ece"}


def training_charts(history: Any, best_epoch: Any) -> list[dict[str, Any]]:
    """Loss and validation-metric curves per epoch, with the selected epoch marked."""
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return []
    epochs = [h.get("epoch") if is_number(h.get("epoch")) else i + 1 for i, h in enumerate(history)]
    keys: list[str] = []
    for h in history:
        keys.extend(k for k, v in h.items() if k not in keys and is_number(v) and k not in ("epoch", "lr", "train_images_per_s"))
    panels = (
        ("Training loss", [k for k in keys if "loss" in k]),
        ("Validation metrics", [k for k in keys if k.startswith("val_") and k[4:] in CURVE_METRICS]),
    )
    marks = [(best_epoch, "selected")] if is_number(best_epoch) else []
    out = []
    for title, names in panels:
        series = [charts.Series(name, [charts.Point(e, h[name]) for e, h in zip(epochs, history) if is_number(h.get(name))]) for name in names]
        chart = charts.line_chart(
            [s for s in series if s.points], x_label="epoch", y_label=title.lower(), width=520, height=240,
            bands=False, marks=marks, markers=len(epochs) == 1,  # the values are in the history table below
            x_ticks=[(e, f"{e:g}") for e in epochs] if len(epochs) <= 12 else None,
        )  # fmt: skip
        if chart:
            out.append({"title": title, "chart": chart})
    return out


def _metric_sections(metrics: Any) -> tuple[list[dict[str, Any]], Any, Any]:
    """(key/value sections, history list, leftover value shown as JSON) from metrics_json."""
    if not isinstance(metrics, dict):
        return [], None, metrics
    sections, leftover = [], {}
    history = metrics.get("history")
    for name, content in metrics.items():
        if name == "history" and _history(history) is not None:
            continue
        if isinstance(content, dict):
            sections.append({"name": name, "items": list(content.items())})
        else:
            leftover[name] = content
    return sections, history, leftover or None


def _pretty(value: Any, raw: str | None) -> str | None:
    if raw is not None:
        return raw
    return None if value is None else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def run_context(run: Run, runs_dir: Path | None = None) -> tuple[dict[str, Any], RunFiles | None]:
    """(context of runs/<run_key>.html, the run directory's files when found)."""
    row = run.row
    sections, history, leftover = _metric_sections(run.metrics_doc)
    other = [{"label": k, "value": v, "kind": "value"} for k, v in row.items() if k not in SHOWN and k not in STRUCTURED]
    key = row.get("run_key")
    files = scan(runs_dir, key, class_names(row)) if runs_dir is not None and page_name(key) else None
    context = {
        "key": key,
        "head": {name: row.get(name) for name in HEAD_FIELDS},
        "ok": run.ok,
        "dataset_href": f"datasets/{slug(row.get('dataset'))}.html",
        "method_href": f"methods/{slug(row.get('method'))}.html",
        "setup": _items(row, SETUP_FIELDS),
        "results": _results(run),
        "per_class": _per_class(row),
        "metric_sections": sections,
        "history": _history(history),
        "curves": training_charts(history, row.get("best_epoch")),
        "metrics_extra": _pretty(leftover, run.metrics_raw),
        "params": _items(row, PARAM_FIELDS),
        "cost": _items(row, COST_FIELDS),
        "provenance": _items(row, PROVENANCE_FIELDS),
        "other": other,
        "spec": _pretty(run.spec, run.spec_raw),
        "files": files,
    }
    return context, files
