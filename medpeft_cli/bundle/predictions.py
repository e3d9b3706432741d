"""A run's test metrics recomputed from its per-sample predictions (predictions_test.csv), with the
project's metric functions (train/metrics.py), and compared with every stored copy of them.

The file holds one line per test image: index, id, label, pred and prob_0 ... prob_{C-1} (written with
6 significant digits). Label-based metrics (macro-F1, accuracy, balanced accuracy, per-class F1) are
recomputed exactly; those that read the probabilities (AUROC, ECE) can move by the rounding of the file,
so they are compared within `PROB_TOLERANCE`. A tie between rounded probabilities is broken in favour of
the stored `pred`, which was the argmax of the unrounded ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from medpeft_cli.jsonsafe import finite

LABEL_METRICS = ("macro_f1", "accuracy", "balanced_accuracy")
PROB_METRICS = ("auroc", "ece")
LABEL_TOLERANCE = 1e-6
PROB_TOLERANCE = 5e-4
FILE = "predictions_test.csv"


class BadPredictions(ValueError):
    """The predictions file cannot be read as a run's predictions (the message says why)."""


def parse(text: str, num_classes: int | None) -> tuple[list[list[float]], list[int], list[int]]:
    """(probabilities, labels, predictions) of the file, rows in index order; BadPredictions otherwise."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or header[:4] != ["index", "id", "label", "pred"] or len(header) < 6:
        raise BadPredictions(f"{FILE} does not start with the columns index,id,label,pred,prob_0,prob_1,...")
    classes = len(header) - 4
    if header[4:] != [f"prob_{c}" for c in range(classes)]:
        raise BadPredictions(f"{FILE} has probability columns {header[4:]}, not prob_0 ... prob_{classes - 1}")
    if num_classes is not None and classes != num_classes:
        raise BadPredictions(f"{FILE} has {classes} probability columns; the run has {num_classes} classes")
    by_index: dict[int, tuple[list[float], int, int]] = {}
    ids: set[str] = set()
    for line, cells in enumerate(reader, start=2):
        if len(cells) != len(header):
            raise BadPredictions(f"{FILE} line {line} has {len(cells)} cells, not {len(header)}")
        try:
            index, label, pred = int(cells[0]), int(cells[2]), int(cells[3])
            probs = [float(v) for v in cells[4:]]
        except ValueError:
            raise BadPredictions(f"{FILE} line {line} holds a value that is not a number") from None
        if not (0 <= label < classes and 0 <= pred < classes) or not all(math.isfinite(p) and 0 <= p <= 1 for p in probs):
            raise BadPredictions(f"{FILE} line {line}: label, pred or a probability is out of range")
        if index in by_index or cells[1] in ids:
            raise BadPredictions(f"{FILE} line {line}: sample {index} ({cells[1]}) appears twice")
        if probs[pred] < max(probs):
            raise BadPredictions(f"{FILE} line {line}: pred {pred} is not the most probable class")
        by_index[index] = (probs, label, pred)
        ids.add(cells[1])
    if not by_index:
        raise BadPredictions(f"{FILE} has no predictions")
    if sorted(by_index) != list(range(len(by_index))):
        raise BadPredictions(f"{FILE}: sample indices are not 0 ... {len(by_index) - 1}")
    rows = [by_index[i] for i in range(len(by_index))]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def recompute(probs: list[list[float]], labels: list[int], preds: list[int]) -> dict[str, Any]:
    """The test metrics of the run, from its predictions (classification_metrics, as training computed them)."""
    import torch

    from medpeft_cli.train.metrics import classification_metrics

    p = torch.tensor(probs, dtype=torch.float32)
    chosen = torch.tensor(preds)
    tied = p.argmax(dim=1) != chosen  # rounding made pred tie with an earlier class
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        p[rows, chosen[rows]] = torch.nextafter(p[rows, chosen[rows]], torch.tensor(math.inf))
    return finite(classification_metrics(p, torch.tensor(labels), p.shape[1]))


def _differs(stored: Any, computed: Any, tolerance: float) -> bool:
    stored = finite(stored)  # an undefined metric: NaN in files of older versions, null now
    if computed is None or stored is None:
        return computed is not stored
    if not isinstance(stored, (int, float)) or isinstance(stored, bool):
        return True
    return abs(float(stored) - float(computed)) > tolerance


def _show(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else repr(value)


def mismatches(copies: dict[str, dict[str, Any]], computed: dict[str, Any]) -> list[str]:
    """One message per stored value that differs from the recomputed one. `copies`: where -> {metric: value}
    (per_class_f1 a list, n an int); a metric missing from a copy differs unless it is undefined (None)."""
    found = []
    for where, stored in copies.items():
        for name in (*LABEL_METRICS, *PROB_METRICS):
            tolerance = LABEL_TOLERANCE if name in LABEL_METRICS else PROB_TOLERANCE
            if _differs(stored.get(name), computed[name], tolerance):
                label = f"test_{name}" if where == "result.json" else name  # the column's name there
                found.append(f"{label} in {where} is {_show(stored.get(name))}, recomputed from {FILE} {_show(computed[name])}")
        if "per_class_f1" in stored:
            values = stored["per_class_f1"]
            if not isinstance(values, list) or len(values) != len(computed["per_class_f1"]) or any(
                _differs(s, c, LABEL_TOLERANCE) for s, c in zip(values, computed["per_class_f1"])
            ):
                found.append(f"per_class_f1 in {where} differs from the one recomputed from {FILE}")
        if "n" in stored and stored["n"] != computed["n"]:
            found.append(f"{where} counts {stored['n']!r} test images, {FILE} has {computed['n']}")
    return found


def stored_copies(row: dict[str, Any], metrics_file: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every stored copy of the test metrics: result.json's columns, its metrics_json, metrics.json."""
    columns = {name: row.get(f"test_{name}") for name in (*LABEL_METRICS, *PROB_METRICS)}
    try:
        columns["per_class_f1"] = json.loads(row.get("per_class_f1_json") or "null")
    except ValueError:
        columns["per_class_f1"] = "unreadable"
    try:
        embedded = (json.loads(row.get("metrics_json") or "{}") or {}).get("test") or {}
    except (ValueError, AttributeError):
        embedded = {"macro_f1": "unreadable"}
    test_file = metrics_file.get("test") if isinstance(metrics_file, dict) else None
    return {
        "result.json": columns,
        "result.json metrics_json": embedded if isinstance(embedded, dict) else {},
        "metrics.json": test_file if isinstance(test_file, dict) else {},
    }
