"""Before and after submitting, without a cluster: grid points validated as `medpeft train` would
(one line, exit 2, nothing written), `sweep plan --estimate` from measured throughput, and `sweep status`
from the run directories, failure records and task logs."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from medpeft_cli.sweep.queue import compress, expand, parse_scontrol

BASE = """\
name: est
weights: random
backbone: test_vit
image_size: 32
method: linear
"""


def grid(tmp_path, body: str) -> None:
    (tmp_path / "grid.yaml").write_text(BASE + textwrap.dedent(body))


@pytest.mark.parametrize("command", ["plan", "slurm"])
def test_an_unknown_or_multilabel_dataset_is_refused_before_anything_is_written(cli, tmp_path, command):
    for dataset, says in (("nosuch", "unknown dataset 'nosuch'"), ("chestmnist", "chestmnist is a multilabel dataset")):
        grid(tmp_path, f"grid:\n  dataset: [synthetic-lesions, {dataset}]\n")
        res = cli("sweep", command, "grid.yaml")
        assert res.code == 2
        [line] = res.stderr.strip().splitlines()
        assert line.startswith(f"medpeft: error: dataset={dataset}: ") and says in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


def test_a_dataset_the_user_prepared_is_accepted(cli, tmp_path, monkeypatch):
    from medpeft_cli.data.prepared import prepared_dir

    monkeypatch.setenv("MEDPEFT_DATA_DIR", str(tmp_path / "data"))
    folder = prepared_dir(tmp_path / "data", "my-set", 64)
    folder.mkdir(parents=True)
    (folder / "info.json").write_text("{}")
    grid(tmp_path, "dataset: my-set\n")
    res = cli("sweep", "plan", "grid.yaml")
    assert res.code == 0, res.stderr


def write_benchmark(path, img_s: float, eval_img_s: float) -> None:
    """A file as benchmarks/train_step.py writes it (the fields the estimate reads)."""
    rows = [{"method": "linear", "medpeft_img_s": img_s, "medpeft_eval_img_s": eval_img_s}, {"method": "full", "medpeft_img_s": 1.0}]
    path.write_text(json.dumps({"harness": "benchmarks/train_step.py", "device": "Test GPU 80GB", "backbone": "test_vit", "img_size": 32, "rows": rows}))


def test_estimate_counts_training_and_evaluation_images_and_names_what_it_cannot_estimate(cli, tmp_path):
    write_benchmark(tmp_path / "bench.json", img_s=100.0, eval_img_s=200.0)
    grid(tmp_path, """\
        data_fraction: 0.5
        train: {epochs: 2, batch_size: 32}
        tune: {trials: 3, epochs: 1, data_fraction: 1.0}
        grid:
          dataset: [synthetic-lesions, busi]
          image_size: [32, 64]
          lr: tuned
        """)
    from medpeft_cli.sweep.estimate import estimate
    from medpeft_cli.sweep.manifest import plan

    result = estimate(plan(tmp_path / "grid.yaml"), [tmp_path / "bench.json"])
    assert result.device == "Test GPU 80GB"
    # synthetic-lesions: 2400 / 600 / 600 images; half of the training split, 2 epochs, validation after each
    [run] = [c for c in result.costs if c.seconds is not None and c.what == "run"]
    assert run.seconds == pytest.approx(2 * 1200 / 100 + (2 * 600 + 600) / 200)
    [study] = [c for c in result.costs if c.seconds is not None and c.what == "tune"]
    assert study.seconds == pytest.approx(3 * (2400 / 100 + (600 + 600) / 200))  # 3 trials of 1 epoch on the whole split

    res = cli("sweep", "plan", "grid.yaml", "--estimate", "--throughput", str(tmp_path / "bench.json"), "--max-parallel", "2")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "  runs: 1 of 4 estimated: 33 s of device time (training 24 s, evaluation and start-up 9 s)" in lines
    assert "  lr search: 4 studies, 3 of 12 trial runs estimated: 1.5 min of device time (an upper bound: pruned trials stop early)" in lines
    assert "  total: 2.0 min of device time; with 2 tasks at once about 1.0 min of wall-clock time" in lines
    assert "  not estimated: 2 runs and 6 trial runs: no measured throughput for test_vit / linear at 64 px on Test GPU 80GB" in lines
    assert any(line.startswith("  not estimated: 1 runs and 3 trial runs: busi is not prepared under ") for line in lines)


def test_estimate_from_finished_runs_uses_their_measured_speed(cli, tmp_path):
    grid(tmp_path, "dataset: synthetic-lesions\ndata_fraction: 0.1\ntrain: {epochs: 1, batch_size: 64}\ngrid:\n  seed: [0, 1]\n")
    from medpeft_cli.store import append

    row = {"run_key": "r0", "status": "ok", "dataset": "synthetic-lesions", "backbone": "test_vit", "method": "linear", "image_size": 32,
           "epochs": 1, "train_images": 240, "train_images_per_s": 120.0, "wall_time_s": 10.0, "device": "cpu (x86_64, 1 threads)"}  # fmt: skip
    append(tmp_path / "results" / "medpeft.duckdb", row)
    from medpeft_cli.sweep.estimate import estimate
    from medpeft_cli.sweep.manifest import plan

    result = estimate(plan(tmp_path / "grid.yaml"), [])
    # 2 s of training (240 images at 120 img/s); the other 8 s over the 1,200 images evaluated
    assert [c.seconds for c in result.costs] == pytest.approx([10.0, 10.0])
    assert result.device == "cpu (x86_64, 1 threads)"


def mark(tmp_path, key: str, folder: str, data: dict) -> None:
    path = tmp_path / "runs" / (key if folder == "result" else f".failed/{key}")
    path.mkdir(parents=True)
    (path / ("result.json" if folder == "result" else "status.json")).write_text(json.dumps(data))


def test_status_reads_run_directories_failure_records_and_task_logs(cli, tmp_path, monkeypatch):
    # A Slurm that no longer lists the jobs (they ended more than MinJobAge ago): the files say the rest.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/bash\necho 'No jobs in the system'\n")
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    grid(tmp_path, "train: {epochs: 1}\ngrid:\n  seed: [0, 1, 2, 3, 4]\n")
    res = cli("sweep", "slurm", "grid.yaml", "--gpus-per-task", "0")
    assert res.code == 0, res.stderr
    out = tmp_path / "slurm" / "est"
    keys = [e["run_key"] for e in json.loads((out / "manifest.json").read_text())["entries"]]
    mark(tmp_path, keys[0], "result", {"status": "ok"})
    mark(tmp_path, keys[1], "result", {"status": "diverged", "status_detail": "training loss became nan in epoch 1"})
    mark(tmp_path, keys[2], "failed", {"error": "RuntimeError: CUDA out of memory"})
    # Run 3 was submitted as task 3 of job 41, whose log says how it ended.
    (out / "jobs.log").write_text("runs 41 1-4 2026-01-01T00:00:00Z\n")
    (out / "logs" / "runs-41_3.log").write_text(
        "medpeft: 2026-01-01T00:00:01Z run task 3 started on n1 (job 41, restart 0)\n"
        "medpeft: error: unknown backbone 'x'; give a timm name\n"
        "medpeft: 2026-01-01T00:00:09Z run task 3 ended with exit code 2 (user error)\n"
    )  # fmt: skip
    res = cli("sweep", "status", "grid.yaml", "--json")
    assert res.code == 0, res.stderr
    state = json.loads(res.stdout)
    assert [r["state"] for r in state["runs"]] == ["done", "diverged", "failed", "failed", "failed"]
    assert state["runs"][1]["reason"] == "training loss became nan in epoch 1"
    assert state["runs"][2]["reason"] == "RuntimeError: CUDA out of memory"
    assert state["runs"][3]["reason"] == "error: unknown backbone 'x'; give a timm name" and state["runs"][3]["log"] == str(out / "logs" / "runs-41_3.log")
    assert state["runs"][4]["reason"].startswith("the task ended without a word")  # submitted, no log, not queued

    table = cli("sweep", "status", "grid.yaml")
    assert f"#3 {keys[3]} failed: error: unknown backbone 'x'; give a timm name (log: {out / 'logs' / 'runs-41_3.log'})" in table.stdout
    # The failed runs only: 2 (a crash recorded here), 3 and 4 (their tasks failed)
    again = cli("sweep", "slurm", "grid.yaml", "--gpus-per-task", "0", "--resubmit-failed")
    assert again.code == 0 and "3 failed run(s) in the array: 2, 3, 4" in again.stdout
    assert "#SBATCH --array=2-4" in (out / "runs.sbatch").read_text().splitlines()


def test_scontrol_records_and_array_syntax():
    text = (
        "JobId=8 ArrayJobId=8 ArrayTaskId=1-3%1 ArrayTaskThrottle=1 JobName=medpeft-x-runs JobState=PENDING Reason=JobArrayTaskLimit Restarts=0 ExitCode=0:0\n"
        "JobId=9 ArrayJobId=8 ArrayTaskId=0 JobName=medpeft-x-runs JobState=RUNNING Reason=None Restarts=1 ExitCode=0:0\n"
        "JobId=10 JobName=medpeft-x-report JobState=PENDING Reason=Dependency Restarts=0 ExitCode=0:0\n"
    )  # fmt: skip
    states = {(s.job_id, s.index): s for s in parse_scontrol(text)}
    assert sorted(states, key=str) == [("10", None), ("8", 0), ("8", 1), ("8", 2), ("8", 3)]
    assert states[("8", 0)].restarts == 1 and states[("8", 0)].queued and states[("8", 2)].reason == "JobArrayTaskLimit"
    assert expand("0-2,5,7-9:2%4") == [0, 1, 2, 5, 7, 9] and expand("-") == []
    assert compress([8, 0, 1, 2, 5, 7]) == "0-2,5,7-8" and expand(compress([3, 9, 4])) == [3, 4, 9]
