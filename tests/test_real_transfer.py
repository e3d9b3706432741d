"""Real transfer on real data (issue 15, item 8): the packaged CIFAR-10 ResNet-20 weights fine-tuned on the
packaged BreastMNIST (28 px, shown at 32 px), through `medpeft train` as a user runs it.

What a user relies on: pretrained weights are really loaded and help (full fine-tuning and BN tuning
reach a test macro-F1 a hand-written loop reaches, and beat random init); the CIFAR-10 classifier is
replaced, not stacked on (trainable head = 64 x 2 + 2); the linear probe learns from the pretrained
features (well above the majority class's macro-F1 of 0.42); and `medpeft export --merge` of an SSF or
BN run gives a plain ResNet-20 whose logits on the real test images are the run's stored predictions.

The schedule is the shortest that passes robustly (checked for seeds 0-2; the margins are in
docs/protocol.md); thresholds are not lowered to fit it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import db_rows, single_thread  # noqa: F401

pytestmark = pytest.mark.slow  # every test fine-tunes a real network

BASE = ["--dataset", "breastmnist", "--backbone", "cifar_resnet20", "--image-size", "32", "-q", "--no-site"]
# Schedules on all 546 training images, selection on validation macro-F1 after every epoch (protocol 1).
# Full fine-tuning: 4 epochs at batch 32 (72 steps) with the CIFAR recipe's crop + flip, which the CIFAR
# features profit from and a random init does not in so few steps (without augmentation random init
# matched the pretrained weights here: docs/protocol.md). BN tuning: 5 epochs at batch 16 (175 steps).
FULL = ["--method", "full", "--lr", "1e-3", "--epochs", "4", "--batch-size", "32", "--augment", "crop-flip"]
BN = ["--method", "bn", "--lr", "1e-2", "--epochs", "5", "--batch-size", "16"]
LINEAR = ["--method", "linear", "--lr", "3e-2", "--epochs", "10", "--batch-size", "32"]
SSF = ["--method", "ssf", "--lr", "1e-2", "--epochs", "1", "--batch-size", "32"]  # only the export is checked
HEAD_PARAMS = 64 * 2 + 2  # the replaced classifier: 64 features -> 2 classes
MAJORITY_F1 = 0.42  # always the majority class (114 of the 156 test images): F1 0.84 for it, 0 for the other
TARGET_F1 = 0.72


def train(cli, tmp_path: Path, *args: str) -> dict:
    res = cli("train", *BASE, *args)
    assert res.code == 0, res.stderr
    rows = db_rows(tmp_path / "results" / "medpeft.duckdb")
    return rows[-1]


def test_full_fine_tuning_reaches_the_target_and_pretrained_beats_random_init(cli, tmp_path):
    pretrained = train(cli, tmp_path, "--weights", "pretrained", *FULL)
    random_init = train(cli, tmp_path, "--weights", "random", *FULL)
    assert "resnet20-12fca82f.th" in pretrained["weights_source"] and "resnet20-12fca82f.th" not in random_init["weights_source"]
    assert pretrained["test_macro_f1"] >= TARGET_F1, pretrained["test_macro_f1"]
    assert pretrained["test_macro_f1"] > random_init["test_macro_f1"], (pretrained["test_macro_f1"], random_init["test_macro_f1"])


def test_linear_probe_replaces_the_classifier_and_learns_from_the_pretrained_features(cli, tmp_path):
    row = train(cli, tmp_path, "--weights", "pretrained", *LINEAR)
    assert row["head_params"] == row["trainable_params"] == HEAD_PARAMS and row["method_params"] == 0
    assert row["test_macro_f1"] >= MAJORITY_F1 + 0.1, row["test_macro_f1"]


def stored_probabilities(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(run_dir / "predictions_test.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    index = torch.tensor([int(r["index"]) for r in rows])
    probs = torch.tensor([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])
    return index, probs


def merged_probabilities(merged: Path, index: torch.Tensor) -> torch.Tensor:
    """The exported state loaded into a fresh ResNet-20 with a 2-class head, on the real test images."""
    from safetensors.torch import load_file

    from medpeft_cli.data import load_dataset
    from medpeft_cli.models import create_backbone
    from medpeft_cli.train.batches import InputTransform

    model = create_backbone("cifar_resnet20", "random", 2, 32, 0, None).model
    model.load_state_dict(load_file(str(merged)), strict=True)  # every tensor from the export, none left random
    cfg = model.pretrained_cfg
    images = load_dataset("breastmnist", None).splits["test"].images[index.numpy()]
    with torch.no_grad():
        return model.eval()(InputTransform(32, cfg["mean"], cfg["std"])(torch.from_numpy(images))).softmax(dim=1)


@pytest.mark.parametrize(("method", "args"), [("bn", BN), ("ssf", SSF)])
def test_merged_export_reproduces_the_runs_test_predictions(cli, tmp_path, method, args):
    row = train(cli, tmp_path, "--weights", "pretrained", *args)
    if method == "bn":  # BN tuning reaches the target too
        assert row["test_macro_f1"] >= TARGET_F1, row["test_macro_f1"]
    run_dir = tmp_path / "runs" / row["run_key"]
    res = cli("export", str(run_dir), "--merge", "--out", str(tmp_path / "merged.safetensors"))
    assert res.code == 0, res.stderr
    index, stored = stored_probabilities(run_dir)
    merged = merged_probabilities(tmp_path / "merged.safetensors", index)
    assert torch.allclose(merged, stored, atol=2e-6, rtol=0), (merged - stored).abs().max()
    assert torch.equal(merged.argmax(1), stored.argmax(1))
    assert json.loads(row["metrics_json"])["test"]["n"] == len(index) == 156


def test_the_default_run_is_bn_tuning_of_the_packaged_weights_on_the_packaged_data(cli, tmp_path):
    # `medpeft train` with no options, cut to 2 epochs: everything else is the embedded default.
    res = cli("train", "--epochs", "2", "-q", "--no-site")
    assert res.code == 0, res.stderr
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert (row["dataset"], row["backbone"], row["method"], row["image_size"]) == ("breastmnist", "cifar_resnet20", "bn", 32)
    assert row["weights_source"].startswith("medpeft:cifar10_resnet20 file:resnet20-12fca82f.th sha256:12fca82f")
    assert "breastmnist.npz md5=750601b1f35ba3300ea97c75c52ff8f6" in row["dataset_source"]
    spec = json.loads(row["spec_json"])
    assert spec["train"]["batch_size"] == 32 and spec["train"]["lr"] == 1e-2  # BN tuning's default learning rate
    assert row["head_params"] == HEAD_PARAMS and row["method_params"] == 1376  # BN scale/shift of ResNet-20, new head
