"""Page contexts: the plain data each template receives (no rendering, no I/O).

Values stay raw (numbers, None); templates format them with the ``fmt``/``span``/``mean_std``
filters from `formatting`. Links are relative to the site root and exist only for runs whose key
is a safe file name (`keys.page_name`).
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import zip_longest
from typing import Any

from medpeft_cli.report.aggregate import METRICS, OK, Line, Table
from medpeft_cli.report.keys import page_name

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
    ("seed", "Seed", "value"),
    ("epochs", "Epochs", "value"),
    ("lr", "Learning rate", "value"),
    ("batch_size", "Batch size", "value"),
    ("image_size", "Image size", "value"),
)
RESULT_FIELDS = (
    ("test_macro_f1", "Test macro-F1", "metric"),
    ("test_accuracy", "Test accuracy", "metric"),
    ("test_balanced_accuracy", "Test balanced accuracy", "metric"),
    ("test_auroc", "Test macro AUROC", "metric"),
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


def run_href(run_key: Any) -> str | None:
    """Link to a run page, relative to the site root; None when the key is unsafe."""
    name = page_name(run_key)
    return None if name is None else f"runs/{name}"


def _run_ref(row: dict[str, Any]) -> dict[str, Any]:
    seed = row.get("seed")
    key = row.get("run_key")
    return {
        "key": key,
        "label": f"s{seed}" if seed is not None else (str(key)[:8] if key else "run"),
        "href": run_href(key),
        "status": row.get("status") or "unknown",
        "method": row.get("method"),
        "data_fraction": row.get("data_fraction"),
        "seed": seed,
    }


def _line_context(line: Line) -> dict[str, Any]:
    if not line.lrs:
        lr = None
    elif len(line.lrs) == 1:
        lr = line.lrs[0]
    else:
        lr = "mixed"
    return {
        "method": line.method,
        "data_fraction": line.data_fraction,
        "n": line.n,
        "stats": line.stats,
        "best": line.best,
        "trainable": line.trainable_params,
        "trainable_pct": line.trainable_pct,
        "lr": lr,
        "mixed": line.mixed,
        "runs": [_run_ref(r) for r in sorted(line.rows, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))],
    }


def _table_context(table: Table, index: int) -> dict[str, Any]:
    return {
        "id": f"t{index}",
        "dataset": table.dataset,
        "backbone": table.backbone,
        "weights": table.weights,
        "task": table.task,
        "protocol_version": table.protocol_version,
        "n_runs": table.n_runs,
        "lines": [
            {**_line_context(line), "new_fraction": i > 0 and line.data_fraction != table.lines[i - 1].data_fraction}
            for i, line in enumerate(table.lines)
        ],
        "excluded": [_run_ref(r) for r in table.excluded],
    }


def index_context(rows: list[dict[str, Any]], tables: list[Table]) -> dict[str, Any]:
    """Context of index.html: counts and the tables grouped by dataset."""
    sections: list[dict[str, Any]] = []
    for i, table in enumerate(tables, start=1):
        if not sections or sections[-1]["dataset"] != table.dataset:
            sections.append({"dataset": table.dataset, "id": f"d{len(sections) + 1}", "tables": []})
        sections[-1]["tables"].append(_table_context(table, i))
    statuses = Counter(str(r.get("status") or "unknown") for r in rows if r.get("status") != OK)
    return {
        "n_runs": len(rows),
        "n_ok": sum(1 for r in rows if r.get("status") == OK),
        "other_statuses": sorted(statuses.items()),
        "n_tables": len(tables),
        "metrics": METRICS,
        "sections": sections,
    }


def parse_json(text: Any) -> tuple[Any, str | None]:
    """(parsed value, None), or (None, raw text) when `text` is not valid JSON. Non-strings pass through."""
    if not isinstance(text, str):
        return text, None
    try:
        return json.loads(text), None
    except ValueError:
        return None, text


def _items(row: dict[str, Any], fields: tuple[tuple[str, str, str], ...]) -> list[dict[str, Any]]:
    return [{"label": label, "value": row.get(name), "kind": kind} for name, label, kind in fields]


def _per_class(row: dict[str, Any]) -> list[dict[str, Any]]:
    names, _ = parse_json(row.get("class_names_json"))
    scores, _ = parse_json(row.get("per_class_f1_json"))
    names = names if isinstance(names, list) else []
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


def _metric_sections(metrics: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None, Any]:
    """(key/value sections, history table, leftover value shown as JSON) from metrics_json."""
    if not isinstance(metrics, dict):
        return [], None, metrics
    sections, leftover = [], {}
    history = _history(metrics.get("history"))
    for name, content in metrics.items():
        if name == "history" and history is not None:
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


def run_context(row: dict[str, Any]) -> dict[str, Any]:
    """Context of runs/<run_key>.html: every stored field of one run."""
    spec, spec_raw = parse_json(row.get("spec_json"))
    metrics, metrics_raw = parse_json(row.get("metrics_json"))
    sections, history, leftover = _metric_sections(metrics)
    shown = {name for group in (SETUP_FIELDS, RESULT_FIELDS, PARAM_FIELDS, COST_FIELDS, PROVENANCE_FIELDS) for name, _, _ in group}
    other = [{"label": k, "value": v, "kind": "value"} for k, v in row.items() if k not in shown and k not in STRUCTURED]
    return {
        "key": row.get("run_key"),
        "head": {name: row.get(name) for name in HEAD_FIELDS},
        "ok": row.get("status") == OK,
        "setup": _items(row, SETUP_FIELDS),
        "results": _items(row, RESULT_FIELDS),
        "per_class": _per_class(row),
        "metric_sections": sections,
        "history": history,
        "metrics_extra": _pretty(leftover, metrics_raw),
        "params": _items(row, PARAM_FIELDS),
        "cost": _items(row, COST_FIELDS),
        "provenance": _items(row, PROVENANCE_FIELDS),
        "other": other,
        "spec": _pretty(spec, spec_raw),
    }
