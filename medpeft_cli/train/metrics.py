"""Classification metrics, computed once on the full (gathered) prediction set."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_recall,
)

ECE_BINS = 15  # equal-width confidence bins (Guo et al., ICML 2017)
MIN_GROUP_SIZE = 10  # subgroups smaller than this are reported but left out of worst-group / gap


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, object]:
    """macro-F1 (the study's metric), accuracy, balanced accuracy, macro one-vs-rest AUROC, per-class F1.

    `probs` are softmax probabilities (N, C); `labels` are class indices (N,).
    Balanced accuracy is the macro average of per-class recall. AUROC is NaN when a class is
    absent from `labels` (it is undefined there), never silently zero.
    """
    probs = probs.float().cpu()
    labels = labels.long().cpu()
    preds = probs.argmax(dim=1)
    kw = {"num_classes": num_classes}
    per_class = multiclass_f1_score(preds, labels, average="none", **kw)
    present = torch.bincount(labels, minlength=num_classes) > 0
    auroc = float(multiclass_auroc(probs, labels, average="macro", **kw)) if bool(present.all()) else math.nan
    return {
        "macro_f1": float(multiclass_f1_score(preds, labels, average="macro", **kw)),
        "accuracy": float(multiclass_accuracy(preds, labels, average="micro", **kw)),
        "balanced_accuracy": float(multiclass_recall(preds, labels, average="macro", **kw)),
        "auroc": auroc,
        "ece": expected_calibration_error(probs, labels, num_classes),
        "per_class_f1": [float(v) for v in per_class],
        "n": int(labels.numel()),
    }


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (L1, equal-width bins) via torchmetrics; NaN when empty."""
    if labels.numel() == 0:
        return math.nan
    return float(multiclass_calibration_error(probs.float().cpu(), labels.long().cpu(), num_classes=num_classes, n_bins=n_bins, norm="l1"))


def subgroup_metrics(
    probs: torch.Tensor, labels: torch.Tensor, num_classes: int, attributes: dict[str, list[str]], min_size: int = MIN_GROUP_SIZE
) -> dict[str, object]:
    """Per-subgroup macro-F1 (and n, accuracy, ECE) for each metadata attribute (e.g. sex, skin type).

    `attributes` maps an attribute name to one value per sample; "" (unknown) is left out. Macro-F1
    in a subgroup averages over the classes that occur in it (as torchmetrics does for classes with
    no true or predicted samples). Worst-group F1 is the lowest macro-F1 of any subgroup with at
    least `min_size` samples, over all attributes; the gap is the largest (best - worst) within one
    attribute. Both are None when no attribute has two such subgroups.
    """
    probs = probs.float().cpu()
    labels = labels.long().cpu()
    preds = probs.argmax(dim=1)
    report: dict[str, object] = {"min_group_size": min_size, "attributes": {}}
    worst, worst_name, gap, gap_attr = math.inf, None, -math.inf, None
    for attribute, values in attributes.items():
        if len(values) != labels.numel():
            raise ValueError(f"attribute {attribute!r} has {len(values)} values for {labels.numel()} samples")
        groups = {}
        for value in sorted({v for v in values if v != ""}):
            mask = torch.tensor([v == value for v in values], dtype=torch.bool)
            n = int(mask.sum())
            groups[value] = {
                "n": n,
                "macro_f1": float(multiclass_f1_score(preds[mask], labels[mask], num_classes=num_classes, average="macro")),
                "accuracy": float((preds[mask] == labels[mask]).float().mean()),
                "ece": expected_calibration_error(probs[mask], labels[mask], num_classes),
            }
        report["attributes"][attribute] = groups
        sized = {v: g["macro_f1"] for v, g in groups.items() if g["n"] >= min_size}
        if len(sized) >= 2:
            low_value = min(sized, key=sized.get)
            if sized[low_value] < worst:
                worst, worst_name = sized[low_value], f"{attribute}={low_value}"
            spread = max(sized.values()) - sized[low_value]
            if spread > gap:
                gap, gap_attr = spread, attribute
    report["worst_group_f1"] = worst if worst_name else None
    report["worst_group"] = worst_name
    report["group_gap"] = gap if gap_attr else None
    report["group_gap_attribute"] = gap_attr
    return report
