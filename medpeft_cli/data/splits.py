"""Leakage-safe splits: seeded, stratified by label, grouped by patient / lesion id; and the split
file, a versioned artefact whose checksum goes into every result row.

The assignment is medpeft's own greedy rule rather than a library's (e.g. scikit-learn's
StratifiedGroupKFold) so that the same raw data gives byte-identical split files on every machine and
for every future version: it only uses numpy's uniform stream, like sampling.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medpeft_cli.errors import UserError

from .bundle import SPLIT_NAMES, split_checksum

SPLIT_FILE_FORMAT = "medpeft-splits-v1"


def grouped_stratified_split(
    labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int, num_classes: int | None = None
) -> np.ndarray:
    """Split index (0 = train, 1 = val, 2 = test) per sample; every group lands in exactly one split.

    Groups are visited in a seeded random order, largest first, and each goes to the split whose
    per-class counts lie furthest below their targets (fraction x class total), weighted by the
    group's own classes. With one sample per group this is a seeded stratified split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    if labels.ndim != 1 or groups.shape != labels.shape:
        raise ValueError(f"labels and groups must be 1-D and equally long, got {labels.shape} and {groups.shape}")
    fractions = np.asarray(fractions, dtype=np.float64)
    k = int(num_classes if num_classes is not None else (labels.max() + 1 if labels.size else 0))
    out = np.full(len(labels), -1, dtype=np.int64)
    if labels.size == 0:
        return out
    unique, inverse = np.unique(groups, return_inverse=True)  # sorted: independent of input order
    hist = np.zeros((len(unique), k), dtype=np.float64)
    np.add.at(hist, (inverse, labels), 1.0)
    total = hist.sum(axis=0)
    target = fractions[:, None] * total[None, :]  # (splits, classes)
    assigned = np.zeros_like(target)
    weight = 1.0 / np.maximum(total, 1.0)  # rare classes count as much as common ones

    rng = np.random.default_rng(seed)
    keys = rng.random(len(unique))
    order = np.lexsort((keys, -hist.sum(axis=1)))  # largest groups first, ties in seeded random order
    split_of_group = np.empty(len(unique), dtype=np.int64)
    for g in order:
        h = hist[g]
        need = ((target - assigned) * (h * weight)[None, :]).sum(axis=1)
        s = int(np.argmax(need))  # ties: the earlier split (train before val before test)
        split_of_group[g] = s
        assigned[s] += h
    out[:] = split_of_group[inverse]
    return out


def overlapping_groups(groups_by_split: Mapping[str, np.ndarray]) -> dict[tuple[str, str], list[str]]:
    """{(split a, split b): groups found in both} for every pair that shares a group."""
    sets = {s: set(np.asarray(groups_by_split[s]).astype(str).tolist()) for s in groups_by_split}
    names = list(sets)
    found = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(sets[a] & sets[b])
            if both:
                found[(a, b)] = both
    return found


def write_split_file(path: Path, ids_by_split: Mapping[str, Sequence[str]], **provenance) -> str:
    """Write the split file (JSON, ids sorted per split) and return its checksum."""
    checksum = split_checksum(ids_by_split)
    doc = {
        "format": SPLIT_FILE_FORMAT,
        **provenance,
        "checksum": checksum,
        "counts": {s: len(ids_by_split[s]) for s in SPLIT_NAMES},
        "splits": {s: sorted(str(i) for i in ids_by_split[s]) for s in SPLIT_NAMES},
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return checksum


def read_split_file(path: Path) -> dict:
    """The split file as a dict; UserError if it is unreadable, of another format, or its checksum
    does not match its contents (hand-edited or damaged)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read split file {path} ({exc}); prepare the dataset again with --force") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FILE_FORMAT or not isinstance(doc.get("splits"), dict):
        raise UserError(f"{path} is not a {SPLIT_FILE_FORMAT} split file; prepare the dataset again with --force")
    if any(s not in doc["splits"] for s in SPLIT_NAMES):
        raise UserError(f"{path} lacks one of the splits {', '.join(SPLIT_NAMES)}; prepare the dataset again with --force")
    actual = split_checksum(doc["splits"])
    if actual != doc.get("checksum"):
        raise UserError(
            f"split file {path} records checksum {doc.get('checksum')} but its splits hash to {actual}; it was "
            "edited or damaged: prepare the dataset again with --force"
        )
    return doc
