"""Classification metrics, computed once on the full (gathered) prediction set."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1_score,
    multiclass_recall,
)

SUMMARY = ("macro_f1", "accuracy", "balanced_accuracy", "auroc")


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
        "per_class_f1": [float(v) for v in per_class],
        "n": int(labels.numel()),
    }
