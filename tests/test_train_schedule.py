"""The training protocol's options beyond protocol 1 (issue 15): run length in optimizer steps,
step-based evaluation (every N steps / K per run), the selection rule, and on-device augmentation.

What a user relies on: protocol-1 run keys do not change; each option enters the key only when set;
a run trained for `steps` trains exactly that many optimizer steps at any data fraction; the history
holds every evaluation with its step and the row names the selected one; augmentation changes the
training but never the evaluation; and an interrupted run with all of these on resumes bitwise exactly.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap

import pytest
import torch
from helpers import db_rows, run_cli_killed_at_step, seeded_step, single_thread  # noqa: F401

from medpeft_cli.config import TrainOptions, build_spec, run_key
from medpeft_cli.errors import UserError
from medpeft_cli.train.batches import InputTransform, random_crop, random_flip
from medpeft_cli.train.schedule import training_schedule

# test_vit at 32 px on 120 synthetic-lesions images: 8 steps of 16 per epoch. 20 steps = epochs of 8, 8
# and 4 (cut); 4 evaluations after steps 5, 10, 15 (inside epochs 1 and 2) and 20 (the end).
TINY = ["--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--image-size", "32", "--data-fraction", "0.05", "--batch-size", "16", "--method", "lora", "-q", "--no-site"]
STEPS = ["--steps", "20", "--evals-per-run", "4", "--select-on", "val_loss", "--augment", "crop-flip"]
EVAL_STEPS = [5, 10, 15, 20]
EPOCH_ENDS = [8, 16]


# ------------------------------------------------------------------ options and run keys (no training)

def test_protocol_1_keys_do_not_change_and_each_new_option_enters_the_key_only_when_set():
    base = build_spec(None, {"backbone": "test_vit"})
    explicit = build_spec(None, {
        "backbone": "test_vit", "train.steps": None, "train.eval_every_steps": None, "train.evals_per_run": None,
        "train.select_on": "val_macro_f1", "train.augment": "none",
    })  # fmt: skip
    assert run_key(explicit) == run_key(base)
    assert not {"steps", "eval_every_steps", "evals_per_run", "select_on", "augment"} & set(base.key_fields()["train"])
    keys = {run_key(base)}
    for flag, value in [("train.steps", 600), ("train.eval_every_steps", 100), ("train.evals_per_run", 6),
                        ("train.select_on", "val_loss"), ("train.select_on", "last"), ("train.augment", "flip"), ("train.augment", "crop-flip")]:  # fmt: skip
        keys.add(run_key(build_spec(None, {"backbone": "test_vit", flag: value})))
    assert len(keys) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "100", "--epochs", "3"], "either as epochs (3) or as steps (100), not both"),
        (["--eval-every-steps", "10", "--evals-per-run", "4"], "either eval_every_steps or evals_per_run, not both"),
        (["--augment", "rotate"], "train.augment"),
        (["--select-on", "val_auroc"], "train.select_on"),
        (["--task", "t2i", "--augment", "flip"], "train.augment applies to classification runs only"),
        (["--steps", "20", "--evals-per-run", "21"], "train.evals_per_run 21 is more than the run's 20 optimizer steps"),
    ],
)
def test_bad_protocol_options_are_one_line_user_errors(cli, tmp_path, args, message):
    res = cli("train", *([] if "--task" in args else TINY), *args)  # t2i: its own defaults
    assert res.code == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert db_rows(tmp_path / "results" / "medpeft.duckdb") == []


def test_schedule_in_steps_is_the_same_at_every_data_volume():
    options = TrainOptions(steps=600, evals_per_run=6)
    # BreastMNIST's 546 training images at batch 64: 100 % = 9 batches per epoch, 20 % (109) = 2, 5 % (27) = 1
    for batches, epochs in [(9, 67), (2, 300), (1, 600)]:
        schedule = training_schedule(options, batches)
        assert (schedule.total_steps, schedule.epochs, schedule.steps_per_epoch) == (600, epochs, batches)
        assert sorted(schedule.eval_steps) == [100, 200, 300, 400, 500, 600]
    every = training_schedule(TrainOptions(steps=25, eval_every_steps=10), 4)
    assert sorted(every.eval_steps) == [10, 20, 25] and every.epochs == 7  # the last step is always evaluated
    protocol_1 = training_schedule(TrainOptions(epochs=3), 9)
    assert (protocol_1.total_steps, protocol_1.epochs, protocol_1.eval_steps) == (27, 3, None)
    assert protocol_1.evaluates_after(9, epoch_end=True) and not protocol_1.evaluates_after(5, epoch_end=False)
    with pytest.raises(UserError, match="at most 20 evaluations"):
        training_schedule(TrainOptions(steps=20, evals_per_run=21), 3)


def test_a_data_volume_grid_with_train_steps_keeps_the_steps_at_every_fraction(tmp_path):
    from medpeft_cli.sweep.grid import load_grid

    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent("""
        backbone: test_vit
        weights: random
        dataset: synthetic-lesions
        image_size: 32
        train: {steps: 600, evals_per_run: 6, augment: flip}
        grid:
          data_fraction: [1.0, 0.2, 0.05]
          select_on: [val_macro_f1, last]
        """))  # fmt: skip
    grid = load_grid(path)
    assert len(grid.points) == 6 and len({run_key(p.spec) for p in grid.points}) == 6
    assert {(p.spec.train.steps, p.spec.train.evals_per_run, p.spec.train.augment) for p in grid.points} == {(600, 6, "flip")}
    path.write_text("backbone: test_vit\nweights: random\ndataset: synthetic-lesions\ntrain: {epochs: 10}\ngrid: {steps: [600]}\n")
    with pytest.raises(UserError, match=r"either as epochs \(10\) or as steps \(600\)"):
        load_grid(path)


# ------------------------------------------------------------------ augmentation (no training)

def test_crop_pads_with_black_and_shifts_each_image_by_at_most_the_padding():
    torch.manual_seed(0)
    x = torch.arange(1, 1 + 16 * 3 * 8 * 8, dtype=torch.float32).view(16, 3, 8, 8)
    out = random_crop(x, padding=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(16):  # every output is one window of the zero-padded image, all channels alike
        hits = [(r, c) for r in range(5) for c in range(5) if torch.equal(padded[i, :, r:r + 8, c:c + 8], out[i])]
        assert len(hits) == 1
        shifts.add(hits[0])
    assert len(shifts) > 1  # drawn per image
    flipped = random_flip(x)
    same = [torch.equal(flipped[i], x[i]) for i in range(16)]
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(16)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_augmentation_is_only_in_the_training_transform():
    images = torch.randint(0, 256, (8, 28, 28, 3), dtype=torch.uint8)
    plain = InputTransform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    train = plain.augmented("crop-flip")
    assert plain.augmented("none") is plain and plain.augment == "none"
    torch.manual_seed(1)
    a = train(images)
    torch.manual_seed(1)
    assert torch.equal(train(images), a)  # seeded by the global RNG: the same draws after the same seed
    assert not torch.equal(a, plain(images)) and torch.equal(plain(images), plain(images))
    # the padding is black in pixel space: normalised, it is (0 - mean) / std
    black = (0 - 0.5 * 255) / (0.25 * 255)
    assert torch.isclose(a, torch.tensor(black)).any()


@pytest.mark.parametrize("kind", ["none", "flip", "crop-flip"])
@pytest.mark.parametrize("size", [28, 32])
def test_model_input_is_channels_last_with_or_without_augmentation(kind, size):
    """Augmentation must not silently change the input's memory layout (channels-last convolutions are
    the fast ones on CPU): every transform gives the same NHWC-stored batch."""
    x = InputTransform(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).augmented(kind)(torch.randint(0, 256, (4, 28, 28, 3), dtype=torch.uint8))
    assert x.shape == (4, 3, size, size) and x.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ training (tiny model, seconds)

@pytest.fixture(scope="module")
def reference(tmp_path_factory, single_thread):
    """One uninterrupted run of 20 steps with step-based evaluation, val-loss selection and crop-flip."""
    from medpeft_cli.cli import main

    root = tmp_path_factory.mktemp("steps-reference")
    main(["train", *TINY, *STEPS, "--runs-dir", str(root / "runs"), "--db", str(root / "results.duckdb")])  # returns on success
    [row] = db_rows(root / "results.duckdb")
    return {"root": root, "row": row, "run_dir": root / "runs" / row["run_key"]}


def outcome_of(row: dict, run_dir) -> dict:
    metrics = json.loads(row["metrics_json"])
    return {
        "test": metrics["test"], "val": metrics["val"], "best": (row["best_epoch"], row["best_step"]),
        "history": [{k: v for k, v in r.items() if k != "train_images_per_s"} for r in metrics["history"]],
        "predictions": (run_dir / "predictions_test.csv").read_bytes(),
        "weights": (run_dir / "adapter" / "adapter_model.safetensors").read_bytes(),
    }  # fmt: skip


@pytest.mark.slow
def test_a_run_in_steps_records_every_evaluation_with_its_step_and_the_selected_one(reference):
    row = reference["row"]
    assert (row["train_steps"], row["epochs"]) == (20, 3)  # epochs as run: 8 + 8 + 4 steps
    history = json.loads(row["metrics_json"])["history"]
    epochs = [r for r in history if "train_loss" in r]
    evaluations = [r for r in history if "val_macro_f1" in r]
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 8), (2, 16), (3, 20)]
    assert [(r["epoch"], r["step"]) for r in evaluations] == [(1, 5), (2, 10), (2, 15), (3, 20)]
    assert "val_macro_f1" not in epochs[0] and "val_loss" in epochs[2]  # only the last epoch ends at an evaluation
    best = min(evaluations, key=lambda r: r["val_loss"])  # select_on val_loss
    assert (row["best_epoch"], row["best_step"]) == (best["epoch"], best["step"])
    assert row["val_macro_f1"] == best["val_macro_f1"]
    assert json.loads(row["spec_json"])["train"]["steps"] == 20


@pytest.mark.slow
def test_augmentation_changes_training_but_never_evaluation(reference, cli, tmp_path):
    from medpeft_cli.train.evaluate import evaluate_run

    # Re-scoring the saved (selected) weights without augmentation gives the stored test metrics exactly:
    # the test split was not augmented. (A flipped or shifted image changes the probabilities, so ECE too.)
    again = evaluate_run(reference["run_dir"])["metrics"]
    stored = json.loads(reference["row"]["metrics_json"])["test"]
    assert again == stored
    # Without the augmentation the same run trains differently.
    res = cli("train", *TINY, *[a for a in STEPS if a not in ("--augment", "crop-flip")])
    assert res.code == 0, res.stderr
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["run_key"] != reference["row"]["run_key"]
    plain, augmented = ([r["train_loss"] for r in json.loads(r["metrics_json"])["history"] if "train_loss" in r] for r in (row, reference["row"]))
    assert len(plain) == len(augmented) == 3 and plain[0] != augmented[0]


@pytest.mark.slow
def test_sigkill_at_a_seeded_step_then_resume_equals_the_uninterrupted_run(reference, cli, tmp_path, request):
    """Killed at a seeded optimizer step, with augmentation, evaluations inside epochs and a cut last
    epoch: the checkpoint is the last epoch end or evaluation before the kill, and --resume gives the
    uninterrupted run's metrics, history, predictions and weights bitwise."""
    step = seeded_step(request, 6, 20)
    run_cli_killed_at_step(["train", *TINY, *STEPS], step, cwd=tmp_path)
    key = reference["row"]["run_key"]
    state = torch.load(tmp_path / "runs" / ".partial" / key / "checkpoint.pt", weights_only=True)
    saved_at = max(s for s in EVAL_STEPS + EPOCH_ENDS if s < step)  # kill before step `step`: steps 1..step-1 ran
    epoch, batches = (saved_at // 8 + 1, 0) if saved_at in EPOCH_ENDS else (saved_at // 8 + 1, saved_at % 8)
    assert (state["optimizer_steps"], state["epoch"], state["step"]) == (saved_at, epoch, batches)
    assert [r["step"] for r in state["history"] if "val_loss" in r] == [s for s in EVAL_STEPS if s <= saved_at]

    resumed = cli("train", *TINY, *STEPS, "--resume")
    assert resumed.code == 0, resumed.stderr
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["run_key"] == key
    got, want = outcome_of(row, tmp_path / "runs" / key), outcome_of(reference["row"], reference["run_dir"])
    for name, value in want.items():
        assert got[name] == value, f"{name} differs from the uninterrupted run"
    assert not (tmp_path / "runs" / ".partial").exists()


@pytest.mark.slow
def test_sigterm_at_the_last_step_of_a_cut_epoch_then_resume_trains_no_further(reference, cli, tmp_path, request):
    """Stopped right after the run's last optimizer step (inside epoch 3, which the step budget cuts after
    4 of its 8 batches): the resumed run trains no further batch and equals the uninterrupted one."""
    from helpers import at_optimizer_step

    unhook = at_optimizer_step(request, 20, lambda: os.kill(os.getpid(), signal.SIGTERM))
    stopped = cli("train", *TINY, *STEPS)
    assert stopped.code == 75, stopped.stderr
    key = reference["row"]["run_key"]
    state = torch.load(tmp_path / "runs" / ".partial" / key / "checkpoint.pt", weights_only=True)
    assert (state["optimizer_steps"], state["epoch"], state["step"]) == (20, 3, 4)
    unhook()
    resumed = cli("train", *TINY, *STEPS, "--resume")
    assert resumed.code == 0, resumed.stderr
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    got, want = outcome_of(row, tmp_path / "runs" / key), outcome_of(reference["row"], reference["run_dir"])
    for name, value in want.items():
        assert got[name] == value, f"{name} differs from the uninterrupted run"


@pytest.mark.slow
def test_select_on_last_scores_the_final_weights(cli, tmp_path):
    res = cli("train", *TINY, "--steps", "12", "--eval-every-steps", "5", "--select-on", "last")
    assert res.code == 0, res.stderr
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    history = json.loads(row["metrics_json"])["history"]
    assert [r["step"] for r in history if "val_loss" in r] == [5, 10, 12]
    assert (row["best_epoch"], row["best_step"], row["train_steps"], row["epochs"]) == (2, 12, 12, 2)
    assert row["val_macro_f1"] == history[-1]["val_macro_f1"]
    assert "2 of 2 (step 12 of 12)" in res.stdout


def test_a_checkpoint_written_before_the_selection_rules_still_loads():
    """Runs interrupted under the previous code hold `best_f1` and no step; --resume must continue them."""
    from medpeft_cli.train.classify import Selection

    selection = Selection()
    selection.load({"best_f1": 0.61, "best_epoch": 2, "best_state": None, "val_metrics": {"macro_f1": 0.61}})
    assert (selection.best_score, selection.best_epoch, selection.best_step) == (0.61, 2, None)
    model = torch.nn.Linear(2, 2)
    selection.update(3, 30, {"macro_f1": 0.60, "loss": 0.5}, model)  # not better: kept
    assert selection.best_epoch == 2
    selection.update(4, 40, {"macro_f1": 0.70, "loss": 0.9}, model)
    assert (selection.best_epoch, selection.best_step) == (4, 40) and set(selection.best_state) == {"weight", "bias"}
