"""Reliability of a run: determinism, checkpoint/resume (pre-emption, crash, full disk), divergence,
no secrets in what is stored.

Every resumed run is compared with one uninterrupted run of the same spec (module fixture): on CPU the
final metrics, the per-epoch history and the per-sample test probabilities must be bitwise equal.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import at_optimizer_step, child_env, db_rows, run_cli_killed_at_step, seeded_step, single_thread  # noqa: F401

from medpeft_cli.report.runpage import shard
from medpeft_cli.train.resume import INTERVAL_ENV

pytestmark = pytest.mark.slow  # every test trains (the reference run: 3 epochs)

# 120 training images (8 steps of 16 per epoch), 3 epochs: small enough for a 2-core CPU.
ARGS = ["--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--image-size", "32", "--epochs", "3", "--data-fraction", "0.05", "--batch-size", "16", "--method", "lora"]
FLAGS = {"dataset": "synthetic-lesions", "weights": "random", "backbone": "test_vit", "image_size": 32, "train.epochs": 3, "data_fraction": 0.05, "train.batch_size": 16, "method": "lora"}
STEPS_PER_EPOCH = 8
SECRETS = {"HF_TOKEN": "hf_secretTOKEN123", "HUGGING_FACE_HUB_TOKEN": "hf_otherSECRET456", "AWS_SECRET_ACCESS_KEY": "awsSECRET789", "MEDPEFT_API_KEY": "mpSECRET000"}


def outcome_of(row: dict, run_dir: Path) -> dict:
    """What must not depend on interruptions: metrics, the per-epoch history without timings, predictions."""
    metrics = json.loads(row["metrics_json"])
    history = [{k: v for k, v in r.items() if k != "train_images_per_s"} for r in metrics["history"]]
    return {
        "test": metrics["test"],
        "val": metrics["val"],
        "best_epoch": row["best_epoch"],
        "history": history,
        "predictions": (run_dir / "predictions_test.csv").read_bytes(),
        "weights": (run_dir / "adapter" / "adapter_model.safetensors").read_bytes(),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, single_thread):  # one thread: bitwise comparisons need equal thread counts
    """One uninterrupted run, made with secrets in the environment (the security test reads it)."""
    from medpeft_cli.config import build_spec
    from medpeft_cli.run import train

    root = tmp_path_factory.mktemp("reference")
    old = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    try:
        spec = build_spec(None, {**FLAGS, "output.runs_dir": root / "runs", "output.db": root / "results.duckdb"})
        outcome = train(spec)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    [row] = db_rows(root / "results.duckdb")
    return {"root": root, "key": outcome.run_key, "row": row, "outcome": outcome_of(row, outcome.run_dir)}


def assert_same_as_reference(tmp_path: Path, reference: dict) -> None:
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["run_key"] == reference["key"] and row["status"] == "ok"
    got = outcome_of(row, tmp_path / "runs" / row["run_key"])
    for name, value in reference["outcome"].items():
        assert got[name] == value, f"{name} differs from the uninterrupted run"
    assert not (tmp_path / "runs" / ".partial").exists(), "the checkpoint must be removed once the run is stored"
    assert not (tmp_path / "runs" / ".failed").exists()


def load_checkpoint(tmp_path: Path, key: str) -> dict:
    path = tmp_path / "runs" / ".partial" / key / "checkpoint.pt"
    assert path.is_file(), "no checkpoint was left for --resume"
    return torch.load(path, weights_only=True)


def test_same_spec_and_seed_twice_is_bitwise_identical(cli, tmp_path, reference):
    res = cli("train", *ARGS, "-q", "--no-site")
    assert res.code == 0, res.stderr
    assert_same_as_reference(tmp_path, reference)


def test_sigterm_stops_at_a_step_boundary_with_exit_75_and_resume_is_exact(cli, tmp_path, reference, request):
    # SIGTERM (what Slurm sends) in the middle of epoch 2: the loop finishes the step, checkpoints, exits 75.
    unhook = at_optimizer_step(request, STEPS_PER_EPOCH + 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    res = cli("train", *ARGS, "-q", "--no-site")
    assert res.code == 75, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medpeft: stopped: received SIGTERM") and "--resume" in lines[0]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler must be removed after the run"
    state = load_checkpoint(tmp_path, reference["key"])
    assert (state["epoch"], state["step"]) == (2, 3) and len(state["history"]) == 1
    assert db_rows(tmp_path / "results" / "medpeft.duckdb") == [] and not (tmp_path / "runs" / reference["key"]).exists()

    # Without --resume the checkpoint is neither used nor silently thrown away.
    unhook()
    refused = cli("train", *ARGS, "-q", "--no-site")
    assert refused.code == 2 and "pass --resume to continue it or --force to start over" in refused.stderr
    assert load_checkpoint(tmp_path, reference["key"])["step"] == 3

    # Sweeps call the runner, which resumes by default (no flag): the same exact result.
    from medpeft_cli.config import build_spec
    from medpeft_cli.run import train

    train(build_spec(None, {**FLAGS, "output.runs_dir": tmp_path / "runs", "output.db": tmp_path / "results" / "medpeft.duckdb"}))
    assert_same_as_reference(tmp_path, reference)


def test_a_crash_is_recorded_as_failed_and_resume_continues_from_the_last_epoch(cli, tmp_path, reference, request):
    def crash():
        raise RuntimeError("simulated crash (out of memory)")

    unhook = at_optimizer_step(request, STEPS_PER_EPOCH + 2, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli("train", *ARGS, "-q", "--no-site")
    key = reference["key"]
    status = json.loads((tmp_path / "runs" / ".failed" / key / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "RuntimeError: simulated crash (out of memory)" and "Traceback" in status["traceback"]
    assert db_rows(tmp_path / "results" / "medpeft.duckdb") == [] and not (tmp_path / "runs" / key).exists()
    state = load_checkpoint(tmp_path, key)
    assert (state["epoch"], state["step"]) == (2, 0)  # the end-of-epoch-1 checkpoint

    unhook()
    resumed = cli("train", *ARGS, "-q", "--no-site", "--resume")
    assert resumed.code == 0, resumed.stderr
    assert_same_as_reference(tmp_path, reference)


def test_disk_full_while_storing_leaves_no_row_and_resume_stores_without_retraining(cli, tmp_path, reference, monkeypatch, request):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    from medpeft_cli.train import checkpoint

    real = checkpoint.save_weights
    monkeypatch.setattr(checkpoint, "save_weights", full)
    res = cli("train", *ARGS, "-q", "--no-site")
    assert res.code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medpeft: error: cannot write run directory") and "No space left on device" in lines[0]
    key = reference["key"]
    assert db_rows(tmp_path / "results" / "medpeft.duckdb") == []
    assert [p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")] == []  # no half run directory
    assert "cannot write run directory" in json.loads((tmp_path / "runs" / ".failed" / key / "status.json").read_text())["error"]
    assert load_checkpoint(tmp_path, key)["epoch"] == 4  # after the last epoch: nothing left to train

    monkeypatch.setattr(checkpoint, "save_weights", real)
    seen = []
    at_optimizer_step(request, 1, lambda: seen.append("trained"))
    resumed = cli("train", *ARGS, "-q", "--no-site", "--resume")
    assert resumed.code == 0, resumed.stderr
    assert seen == [], "resuming after the last epoch must not train again"
    assert_same_as_reference(tmp_path, reference)


def test_nan_loss_is_stored_as_diverged_with_no_metrics_and_shown_so_on_the_site(cli, tmp_path):
    res = cli("train", *ARGS[:4], "--epochs", "2", "--data-fraction", "0.05", "--method", "full", "--lr", "1e30", "-q", "--site", "site")
    assert res.code == 3, res.stderr  # stored, with status diverged (errors.py: exit code 3)
    assert "diverged" in res.stdout
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("medpeft: diverged: training loss became nan in epoch 1") and "with status diverged; lower the learning rate" in line
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["status"] == "diverged" and "nan" in row["status_detail"].lower() and "epoch 1" in row["status_detail"]
    for column in ("test_macro_f1", "test_accuracy", "test_balanced_accuracy", "test_auroc", "val_macro_f1", "test_ece", "best_epoch"):
        assert row[column] is None, column
    run_dir = tmp_path / "runs" / row["run_key"]
    assert (run_dir / "result.json").is_file() and not (run_dir / "predictions_test.csv").exists()
    assert not (tmp_path / "runs" / ".partial").exists() and not (tmp_path / "runs" / ".failed").exists()
    assert '"status": "diverged"' in (tmp_path / "site" / "runs" / f"{shard(row['run_key'])}.html").read_text()
    assert "diverged" in (tmp_path / "site" / "index.html").read_text()
    evaluated = cli("eval", str(run_dir))
    assert evaluated.code == 2 and f"run {row['run_key']} diverged (" in evaluated.stderr and "lower --lr" in evaluated.stderr
    # The runner API keeps raising a FloatingPointError (learning-rate search prunes such trials), after storing.
    from medpeft_cli.config import build_spec
    from medpeft_cli.errors import RunDiverged
    from medpeft_cli.run import train

    spec = build_spec(None, {**FLAGS, "train.epochs": 1, "method": "full", "train.lr": 1e30, "output.runs_dir": tmp_path / "r2", "output.db": tmp_path / "r2.duckdb"})
    with pytest.raises(FloatingPointError) as info:
        train(spec)
    assert isinstance(info.value, RunDiverged) and info.value.outcome.row["status"] == "diverged"
    assert [r["status"] for r in db_rows(tmp_path / "r2.duckdb")] == ["diverged"]


def test_no_secret_reaches_the_row_or_the_run_directory(reference):
    from medpeft_cli.store.provenance import collect

    row = reference["row"]
    files = [p for p in (reference["root"] / "runs" / reference["key"]).rglob("*") if p.is_file()]
    texts = [json.dumps(row, default=str)] + [p.read_bytes().decode("latin-1") for p in files]
    for name, secret in SECRETS.items():
        assert not any(secret in t for t in texts), f"{name} leaked into the stored run"
        assert not any(name in t for t in texts), f"the name {name} appears in the stored run"
    # Provenance is a fixed list of fields, whatever the environment holds.
    os.environ["HF_TOKEN"] = SECRETS["HF_TOKEN"]
    try:
        fields = collect("cpu", 1)
    finally:
        os.environ.pop("HF_TOKEN")
    from medpeft_cli.store.provenance import PACKAGES

    listed = {"medpeft_version", "git_commit", "python_version", "device", "world_size", "container_image"}
    assert set(fields) == listed | set(PACKAGES.values()) and all(c.endswith("_version") for c in PACKAGES.values())
    assert SECRETS["HF_TOKEN"] not in json.dumps(fields)
    # The trained weights are safetensors, never a pickle.
    assert {p.suffix for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl")} == set()


def test_sigkill_at_a_seeded_step_then_resume_equals_the_uninterrupted_run(cli, tmp_path, reference, request):
    """A real process killed with SIGKILL (no handler can run) at a seeded optimizer step after its first
    checkpoint; the kill comes from inside the child, so where it lands does not depend on timing."""
    step = seeded_step(request, STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH)
    every_epoch = {**child_env(), INTERVAL_ENV: "0"}  # a checkpoint after every epoch, whatever the clock says
    run_cli_killed_at_step(["train", *ARGS, "-q", "--no-site"], step, cwd=tmp_path, env=every_epoch)
    assert not (tmp_path / "runs" / reference["key"]).exists() and db_rows(tmp_path / "results" / "medpeft.duckdb") == []
    state = load_checkpoint(tmp_path, reference["key"])
    finished_epochs = (step - 1) // STEPS_PER_EPOCH  # the checkpoint written at the end of the last whole epoch
    assert (state["epoch"], state["step"], len(state["history"])) == (finished_epochs + 1, 0, finished_epochs)

    resumed = cli("train", *ARGS, "-q", "--no-site", "--resume")
    assert resumed.code == 0, resumed.stderr
    assert_same_as_reference(tmp_path, reference)


def test_sigkill_long_after_the_first_checkpoint_resumes_from_it_and_equals_the_uninterrupted_run(cli, tmp_path, reference, request):
    """With routine checkpoints rate-limited (here: never again after the first), a kill in epoch 3
    loses two epochs of work, not the result: the run resumes after epoch 1 and ends bitwise the same."""
    step = seeded_step(request, 2 * STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH)
    run_cli_killed_at_step(["train", *ARGS, "-q", "--no-site"], step, cwd=tmp_path, env={**child_env(), INTERVAL_ENV: "1e9"})
    state = load_checkpoint(tmp_path, reference["key"])
    assert (state["epoch"], state["step"], len(state["history"])) == (2, 0, 1)

    resumed = cli("train", *ARGS, "-q", "--no-site", "--resume")
    assert resumed.code == 0, resumed.stderr
    assert_same_as_reference(tmp_path, reference)
