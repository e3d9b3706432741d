"""Data-parallel runs through Accelerate: 2 CPU processes (gloo) give the same run as 1 process."""

import csv
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.sweep.launch import launch_command
from medpeft_cli.train.task import check_world

# 480 training images in batches of 32: no partial last batch, so 2 processes x 16 images per step
# compute exactly the steps of 1 process x 32 (a padded last batch would differ slightly).
RUN = ["--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--image-size", "32", "--epochs", "1", "--data-fraction", "0.2", "--batch-size", "32", "--method", "lora", "-q", "--no-site"]


def _result(runs_dir):
    [run] = [p for p in runs_dir.iterdir() if not p.name.startswith(".")]
    row = json.loads((run / "result.json").read_text())
    with open(run / "predictions_test.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    return row, preds


@pytest.mark.slow
@pytest.mark.timeout(300)  # two trainings, one of them two processes (measured: 19 s on 2 idle cores)
def test_two_cpu_processes_match_one(cli, tmp_path):
    one = cli("train", *RUN, "--runs-dir", "one/runs", "--db", "one/r.duckdb")
    assert one.code == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "medpeft_cli", "train", *RUN, "--runs-dir", "two/runs", "--db", "two/r.duckdb", "--num-processes", "2"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    row1, preds1 = _result(tmp_path / "one" / "runs")
    row2, preds2 = _result(tmp_path / "two" / "runs")
    assert (row1["world_size"], row2["world_size"]) == (1, 2)
    assert row1["run_key"] == row2["run_key"]  # the same experiment, whatever the world size
    assert len(preds1) == len(preds2) == 600  # gathered, without the padding duplicates
    assert [p["index"] for p in preds1] == [p["index"] for p in preds2]
    for metric in ("test_macro_f1", "test_accuracy", "test_balanced_accuracy", "test_auroc", "val_macro_f1"):
        assert row2[metric] == pytest.approx(row1[metric], abs=2e-3), metric  # at most one of 600 predictions may flip
    diffs = [abs(float(a[k]) - float(b[k])) for a, b in zip(preds1, preds2) for k in a if k.startswith("prob_")]
    assert max(diffs) < 1e-4  # float summation order differs across processes, nothing else (measured: 1e-6)


def test_cpu_launch_uses_gloo_processes_and_checks_gpus(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    cmd, env = launch_command(["train", "--config", "x.yaml"], 2, cuda_devices=0)
    assert env["ACCELERATE_USE_CPU"] == "true"  # without it Accelerate would start 2 independent runs
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[-5:] == ["-m", "medpeft_cli", "train", "--config", "x.yaml"]
    cmd, env = launch_command(["train"], 2, cuda_devices=4)
    assert "ACCELERATE_USE_CPU" not in env  # one process per GPU
    with pytest.raises(UserError, match="needs 8 GPUs but 4 are visible"):
        launch_command(["train"], 8, cuda_devices=4)


def test_uneven_batches_are_refused_before_launching(cli):
    res = cli("train", "--dataset", "synthetic-lesions", "--weights", "random", "--method", "lora", "--backbone", "test_vit", "--batch-size", "64", "--num-processes", "3", "--no-site")
    assert res.code == 2 and "train.batch_size 64 does not split evenly over 3 processes" in res.stderr


def test_a_launch_that_is_not_one_distributed_run_is_refused(monkeypatch):
    # `accelerate launch --multi_gpu` on a CPU machine without ACCELERATE_USE_CPU: 2 processes, each alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="2 processes were launched but Accelerate runs them as 1"):
        check_world(SimpleNamespace(num_processes=1), RunSpec())
