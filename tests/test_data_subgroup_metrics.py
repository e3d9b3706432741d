"""Expected calibration error and per-subgroup metrics (worst-group F1, largest gap)."""

from __future__ import annotations

import math

import pytest
import torch

from medpeft_cli.train.metrics import classification_metrics, expected_calibration_error, subgroup_metrics


def one_hot_probs(preds, k, confidence):
    probs = torch.full((len(preds), k), (1 - confidence) / (k - 1))
    probs[torch.arange(len(preds)), torch.tensor(preds)] = confidence
    return probs


def test_ece_by_hand():
    # 4 samples at confidence 0.9 (one bin), 3 correct: |accuracy 0.75 - confidence 0.9| = 0.15
    labels = torch.tensor([0, 1, 0, 1])
    probs = one_hot_probs([0, 1, 0, 0], 2, 0.9)
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(0.15, abs=1e-6)
    assert classification_metrics(probs, labels, 2)["ece"] == pytest.approx(0.15, abs=1e-6)


def test_ece_zero_when_calibrated_and_nan_when_empty():
    labels = torch.tensor([0, 1, 1, 0])
    assert expected_calibration_error(one_hot_probs([0, 1, 1, 0], 2, 1.0), labels, 2) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(expected_calibration_error(torch.empty(0, 2), torch.empty(0, dtype=torch.long), 2))


def test_subgroups_worst_group_and_gap():
    # group F: all 10 right; group M: 5 of 10 right; unknown sex ("") is left out
    labels = torch.tensor([0, 1] * 5 + [0, 1] * 5 + [0, 1])
    preds = [0, 1] * 5 + [0, 0] * 5 + [1, 0]
    sex = ["F"] * 10 + ["M"] * 10 + ["", ""]
    report = subgroup_metrics(one_hot_probs(preds, 2, 0.8), labels, 2, {"sex": sex})
    groups = report["attributes"]["sex"]
    assert set(groups) == {"F", "M"} and groups["F"]["n"] == 10
    assert groups["F"]["macro_f1"] == pytest.approx(1.0)
    m_f1 = (2 * 5 / (2 * 5 + 5) + 0.0) / 2  # class 0: tp 5 fp 5 fn 0; class 1: never predicted
    assert groups["M"]["macro_f1"] == pytest.approx(m_f1)
    assert report["worst_group_f1"] == pytest.approx(m_f1) and report["worst_group"] == "sex=M"
    assert report["group_gap"] == pytest.approx(1.0 - m_f1) and report["group_gap_attribute"] == "sex"


def test_small_groups_are_reported_but_not_ranked():
    labels = torch.tensor([0, 1] * 12)
    preds = [0, 1] * 10 + [1, 0] * 2
    site = ["a"] * 20 + ["b"] * 4
    report = subgroup_metrics(one_hot_probs(preds, 2, 0.7), labels, 2, {"site": site}, min_size=10)
    assert report["attributes"]["site"]["b"]["n"] == 4 and report["attributes"]["site"]["b"]["macro_f1"] == 0.0
    assert report["worst_group_f1"] is None and report["group_gap"] is None  # only one group of >= 10


def test_worst_over_attributes_gap_within_one():
    labels = torch.tensor([0, 1] * 20)
    preds = [0, 1] * 15 + [1, 0] * 5  # the last 10 samples wrong
    attrs = {"sex": ["F", "M"] * 20, "site": ["x"] * 30 + ["y"] * 10}
    report = subgroup_metrics(one_hot_probs(preds, 2, 0.9), labels, 2, attrs)
    assert report["worst_group"] == "site=y" and report["worst_group_f1"] == 0.0
    assert report["group_gap_attribute"] == "site" and report["group_gap"] == pytest.approx(1.0)
