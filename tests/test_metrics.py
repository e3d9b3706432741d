import math

import pytest
import torch

from medpeft_cli.train.metrics import classification_metrics


def test_metrics_on_hand_computable_predictions():
    # labels: 0 0 0 1 1 2 ; preds: 0 0 1 1 1 0
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 1, 0])
    probs = torch.nn.functional.one_hot(preds, 3).float() * 0.8 + 0.2 / 3
    m = classification_metrics(probs, labels, 3)
    f1 = [2 * 2 / (2 * 2 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 0.0]  # class 0: tp2 fp1 fn1; class 1: tp2 fp1 fn0
    assert m["per_class_f1"] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["n"] == 6


def test_auroc_perfect_ranking_and_undefined_class():
    labels = torch.tensor([0, 1, 0, 1])
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])
    assert classification_metrics(probs, labels, 2)["auroc"] == pytest.approx(1.0)
    only_zero = classification_metrics(probs[[0, 2]], labels[[0, 2]], 2)
    assert math.isnan(only_zero["auroc"])


def _torchmetrics_reference(probs, labels, num_classes):
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_auroc,
        multiclass_calibration_error,
        multiclass_f1_score,
        multiclass_recall,
    )

    preds = probs.argmax(dim=1)
    kw = {"num_classes": num_classes}
    return {
        "macro_f1": float(multiclass_f1_score(preds, labels, average="macro", **kw)),
        "accuracy": float(multiclass_accuracy(preds, labels, average="micro", **kw)),
        "balanced_accuracy": float(multiclass_recall(preds, labels, average="macro", **kw)),
        "auroc": float(multiclass_auroc(probs, labels, average="macro", **kw)),
        "ece": float(multiclass_calibration_error(probs, labels, n_bins=15, norm="l1", **kw)),
        "per_class_f1": [float(v) for v in multiclass_f1_score(preds, labels, average="none", **kw)],
    }


@pytest.mark.parametrize("case", range(40))
def test_metrics_equal_torchmetrics_on_random_predictions_with_ties_and_unpredicted_classes(case):
    """The hand-written metrics are torchmetrics' definitions: same numbers on random predictions,
    coarse (tied) probabilities, a class never predicted, confidences of exactly 1."""
    g = torch.Generator().manual_seed(case)
    num_classes = 2 + case % 4
    n = int(torch.randint(num_classes, 120, (1,), generator=g))
    labels = torch.cat([torch.arange(num_classes), torch.randint(0, num_classes, (n - num_classes,), generator=g)])
    logits = torch.randn(n, num_classes, generator=g) * (0.5 + case % 3)
    if case % 4 == 1:  # coarse probabilities: many tied scores
        logits = logits.round()
    if case % 5 == 2:  # the last class is never predicted
        logits[:, -1] = -30.0
    probs = torch.softmax(logits, dim=1)
    if case % 7 == 3:  # some confidences of exactly 1 (their own ECE bin in torchmetrics)
        probs[:3] = torch.nn.functional.one_hot(labels[:3], num_classes).float()
    ours = classification_metrics(probs, labels, num_classes)
    reference = _torchmetrics_reference(probs, labels, num_classes)
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_macro_f1_leaves_out_a_class_neither_labelled_nor_predicted():
    from medpeft_cli.train.metrics import macro_f1

    labels, preds = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    two = macro_f1(preds, labels, 2)
    assert macro_f1(preds, labels, 3) == pytest.approx(two) == pytest.approx((2 / 3 + 0.8) / 2)
