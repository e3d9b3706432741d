"""Recomputing a run's test metrics from its predictions file (bundle/predictions.py), without training:
ties of rounded probabilities, inconsistent files, undefined AUROC."""

from __future__ import annotations

import pytest

from medpeft_cli.bundle import predictions as preds


def _csv(rows: list[tuple[int, int, list[float]]]) -> str:
    n = len(rows[0][2])
    lines = ["index,id,label,pred," + ",".join(f"prob_{c}" for c in range(n))]
    lines += [f"{i},s{i},{label},{pred}," + ",".join(f"{p:.6g}" for p in probs) for i, (label, pred, probs) in enumerate(rows)]
    return "\n".join(lines) + "\n"


def test_rounded_ties_are_broken_by_the_stored_prediction():
    text = _csv([(1, 1, [0.5, 0.5]), (0, 0, [0.9, 0.1]), (1, 1, [0.2, 0.8])])  # row 0: pred 1 ties with class 0
    computed = preds.recompute(*preds.parse(text, 2))
    assert computed["accuracy"] == 1.0 and computed["macro_f1"] == 1.0


@pytest.mark.parametrize(
    "rows, message",
    [
        ([(0, 1, [0.9, 0.1])], "pred 1 is not the most probable class"),
        ([(0, 0, [0.9, 0.1]), (0, 0, [0.8, 0.2])], None),
        ([(0, 0, [1.2, 0.1])], "out of range"),
    ],
)
def test_inconsistent_prediction_files_are_named(rows, message):
    if message is None:
        assert preds.parse(_csv(rows), 2)[1] == [0, 0]
        with pytest.raises(preds.BadPredictions, match="has 2 probability columns; the run has 3"):
            preds.parse(_csv(rows), 3)
        dup = _csv(rows).replace("\n1,s1,", "\n0,s1,")
        with pytest.raises(preds.BadPredictions, match="sample 0 .* appears twice"):
            preds.parse(dup, 2)
        return
    with pytest.raises(preds.BadPredictions, match=message):
        preds.parse(_csv(rows), 2)


def test_an_undefined_auroc_matches_a_stored_null():
    computed = preds.recompute(*preds.parse(_csv([(0, 0, [0.9, 0.1]), (0, 0, [0.7, 0.3])]), 2))  # class 1 absent
    assert computed["auroc"] is None
    stored = {"macro_f1": computed["macro_f1"], "accuracy": 1.0, "balanced_accuracy": computed["balanced_accuracy"], "auroc": None, "ece": computed["ece"]}
    assert preds.mismatches({"result.json": stored}, computed) == []
    assert preds.mismatches({"metrics.json": {**stored, "auroc": float("nan")}}, computed) == []  # older files wrote NaN
    assert preds.mismatches({"result.json": {**stored, "auroc": 0.5}}, computed) == ["test_auroc in result.json is 0.500000, recomputed from predictions_test.csv None"]
