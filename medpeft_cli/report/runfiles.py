"""What a run directory adds to its page: the confusion matrix (from predictions_test.csv), sample
images of generation runs, and the small files worth publishing next to the page.

Everything here is optional: a missing or unreadable run directory never fails the build, it only
leaves those sections out. Weights are never copied (they can be gigabytes); the page lists them.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREDICTIONS = "predictions_test.csv"
SAMPLES_DIR = "samples"  # generation runs: NN.png images and prompts.json (medpeft_cli/t2i/scoring.py)
PUBLISHED_SUFFIXES = {".json", ".csv", ".log", ".txt", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".webp"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_SAMPLES = 16
MAX_FILES = 200
_SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class RunFile:
    path: str  # relative to the run directory, '/'-separated
    size: int
    published: bool  # copied next to the page (else only listed)


@dataclass
class RunFiles:
    folder: Path
    files: list[RunFile] = field(default_factory=list)
    samples: list[dict[str, str]] = field(default_factory=list)  # published images under samples/: path, caption
    confusion: dict[str, Any] | None = None
    note: str | None = None  # why the confusion matrix is missing, when predictions exist but are unusable


def _safe(rel: Path) -> bool:
    return all(_SAFE_PART.fullmatch(part) for part in rel.parts)


def scan(runs_dir: Path | None, key: str, class_names: list[Any]) -> RunFiles | None:
    """The run directory `runs_dir/key` (the key is already a safe file name), or None when absent."""
    if runs_dir is None:
        return None
    folder = Path(runs_dir) / key
    try:
        if not folder.is_dir() or folder.is_symlink():
            return None
        found = RunFiles(folder)
        for path in sorted(folder.rglob("*")):
            if len(found.files) >= MAX_FILES:
                break
            if not path.is_file() or path.is_symlink():
                continue
            rel = path.relative_to(folder)
            size = path.stat().st_size
            published = _safe(rel) and path.suffix.lower() in PUBLISHED_SUFFIXES and size <= MAX_FILE_BYTES
            found.files.append(RunFile(rel.as_posix(), size, published))
        captions = _captions(folder / SAMPLES_DIR / "prompts.json")
        found.samples = [
            {"path": f.path, "caption": captions.get(Path(f.path).name, Path(f.path).name)}
            for f in found.files
            if f.published and f.path.startswith(f"{SAMPLES_DIR}/") and Path(f.path).suffix.lower() in IMAGE_SUFFIXES
        ][:MAX_SAMPLES]
        if (folder / PREDICTIONS).is_file():
            found.confusion, found.note = confusion_matrix(folder / PREDICTIONS, class_names)
        return found
    except OSError:
        return None


def _captions(path: Path) -> dict[str, str]:
    """Prompt per sample image from samples/prompts.json ({"prompts": {"00.png": "..."}}), when readable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    prompts = data.get("prompts") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in prompts.items()} if isinstance(prompts, dict) else {}


def confusion_matrix(path: Path, class_names: list[Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Counts of (true label, predicted label) from the predictions file; rows also as shares."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            pairs = [(int(r["label"]), int(r["pred"])) for r in reader]
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return None, f"{PREDICTIONS} could not be read as index,id,label,pred,prob_* rows"
    if not pairs:
        return None, f"{PREDICTIONS} holds no predictions"
    if min(min(p) for p in pairs) < 0:
        return None, f"{PREDICTIONS} has negative class indices"
    k = max(len(class_names), 1 + max(max(p) for p in pairs))
    counts = [[0] * k for _ in range(k)]
    for label, pred in pairs:
        counts[label][pred] += 1
    names = [str(class_names[i]) if i < len(class_names) and class_names[i] is not None else f"class {i}" for i in range(k)]
    rows = []
    for i, row in enumerate(counts):
        total = sum(row)
        cells = [{"count": c, "share": c / total if total else 0.0, "diag": i == j} for j, c in enumerate(row)]
        rows.append({"name": names[i], "total": total, "cells": cells})
    return {"names": names, "rows": rows, "n": len(pairs)}, None


def publish(found: RunFiles, dest: Path) -> None:
    """Copy the publishable files into `dest` (the folder next to the run's page)."""
    for f in found.files:
        if f.published:
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found.folder / f.path, target)
