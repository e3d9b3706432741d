"""Classification metrics, computed once on the full (gathered) prediction set.

Written here rather than taken from torchmetrics: importing `torchmetrics` loads torchvision,
torch._dynamo, transformers and scipy.signal, about 7 s of every run's start on a 2-core machine (a
sweep starts one process per run). The definitions are torchmetrics' (1.x, `multiclass_*` with
`average="macro"`, exact thresholds) and tests/test_metrics.py checks equality with it on random and
edge-case predictions.
"""

from __future__ import annotations

import math

import torch

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
    counts = _counts(preds, labels, num_classes)
    per_class = _f1(counts)
    present = torch.bincount(labels, minlength=num_classes) > 0
    return {
        "macro_f1": _macro(per_class, counts),
        "accuracy": float((preds == labels).double().mean()) if labels.numel() else 0.0,
        "balanced_accuracy": _macro(_safe_ratio(counts["tp"], counts["tp"] + counts["fn"]), counts),
        "auroc": macro_auroc(probs, labels, num_classes) if bool(present.all()) else math.nan,
        "ece": expected_calibration_error(probs, labels, num_classes),
        "per_class_f1": [float(v) for v in per_class],
        "n": int(labels.numel()),
    }


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 of predicted class indices: the mean over the classes that occur as a label or a prediction."""
    counts = _counts(preds.long().cpu(), labels.long().cpu(), num_classes)
    return _macro(_f1(counts), counts)


def _counts(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """True positives, false positives and false negatives per class (float64)."""
    tp = torch.bincount(labels[preds == labels], minlength=num_classes).double()
    predicted = torch.bincount(preds, minlength=num_classes).double()
    actual = torch.bincount(labels, minlength=num_classes).double()
    return {"tp": tp, "fp": predicted - tp, "fn": actual - tp}


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (torchmetrics' zero_division=0)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), torch.zeros_like(numerator))


def _f1(counts: dict[str, torch.Tensor]) -> torch.Tensor:
    tp = counts["tp"]
    return _safe_ratio(2 * tp, 2 * tp + counts["fp"] + counts["fn"])


def _macro(per_class: torch.Tensor, counts: dict[str, torch.Tensor]) -> float:
    """Mean over the classes seen as a label or a prediction (a class absent from both is left out)."""
    seen = (counts["tp"] + counts["fp"] + counts["fn"]) > 0
    return float(per_class[seen].mean()) if bool(seen.any()) else 0.0


def binary_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for the boolean `positive`: the Mann-Whitney statistic with
    ties counted half (equal to the trapezoidal area of the exact ROC curve); NaN without both kinds."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    scores = scores.double()
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    _, inverse, tie_counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    last_rank = torch.cumsum(tie_counts, 0).double()
    mean_rank = last_rank - (tie_counts.double() - 1) / 2  # the mean rank of each group of tied scores
    ranks[order] = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Macro average of the one-vs-rest AUROCs (the classes where it is defined)."""
    values = torch.tensor([binary_auroc(probs[:, c], labels == c) for c in range(num_classes)], dtype=torch.float64)
    defined = ~torch.isnan(values)
    return float(values[defined].mean()) if bool(defined.any()) else math.nan


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (L1, `n_bins` equal-width bins); NaN when empty.

    As torchmetrics bins it: bucketize on linspace(0, 1, n_bins + 1) with right=True, so a confidence
    of exactly 1 has a bin of its own."""
    if labels.numel() == 0:
        return math.nan
    probs = probs.float().cpu()
    confidences, preds = probs.max(dim=1)
    correct = (preds == labels.long().cpu()).float()
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidences.dtype)
    bins = torch.bucketize(confidences, boundaries, right=True) - 1
    count = torch.zeros(n_bins + 1).scatter_add_(0, bins, torch.ones_like(confidences))
    confidence = torch.nan_to_num(torch.zeros(n_bins + 1).scatter_add_(0, bins, confidences) / count)
    accuracy = torch.nan_to_num(torch.zeros(n_bins + 1).scatter_add_(0, bins, correct) / count)
    return float(torch.sum(torch.abs(accuracy - confidence) * count / count.sum()))


def subgroup_metrics(
    probs: torch.Tensor, labels: torch.Tensor, num_classes: int, attributes: dict[str, list[str]], min_size: int = MIN_GROUP_SIZE
) -> dict[str, object]:
    """Per-subgroup macro-F1 (and n, accuracy, ECE) for each metadata attribute (e.g. sex, skin type).

    `attributes` maps an attribute name to one value per sample; "" (unknown) is left out. Macro-F1
    in a subgroup averages over the classes that occur in it as a label or a prediction. Worst-group F1 is the lowest macro-F1 of any subgroup with at
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
                "macro_f1": macro_f1(preds[mask], labels[mask], num_classes),
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
