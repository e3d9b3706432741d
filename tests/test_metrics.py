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
