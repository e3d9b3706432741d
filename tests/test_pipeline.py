"""The run pipeline every task shares (medpeft_cli/run/): a text-to-image run takes the run key's lock,
checkpoints and resumes exactly (after SIGKILL, after SIGTERM mid-epoch), leaves a failure record on a
crash; a NaN loss is stored as 'diverged' and ends with exit code 3 and one line, the same from
`medpeft train`, `sweep run` (in-process and as subprocesses) and `sweep run-one`, for both tasks.

Kills and interruptions happen at a fixed optimizer step from inside the process (torch's global
optimizer step pre-hook), never after a wall-clock sleep.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch

# tiny-sd on 80 captioned images (5 steps of 16 per epoch), 2 epochs with EMA, 8 generated images:
# every stage of a text-to-image run in seconds.
T2I_SMALL = [
    "--task", "t2i", "--data-fraction", "0.05", "--batch-size", "16", "--fid-samples", "8", "--set", "t2i.fid_seeds=[0]",
    "--set", "t2i.num_inference_steps=2", "--set", "train.eval_batch_size=16", "-q", "--no-site",
]  # fmt: skip
T2I = [*T2I_SMALL, "--epochs", "2", "--set", "t2i.ema=true", "--set", "t2i.ema_decay=0.5", "--method", "difffit"]
T2I_FLAGS = {
    "task": "t2i", "train.epochs": 2, "data_fraction": 0.05, "train.batch_size": 16, "t2i.fid_samples": 8, "t2i.fid_seeds": [0],
    "t2i.num_inference_steps": 2, "train.eval_batch_size": 16, "t2i.ema": True, "t2i.ema_decay": 0.5, "method": "difffit",
}  # fmt: skip
T2I_STEPS_PER_EPOCH = 5
CLS = ["--dataset", "synthetic-lesions", "--weights", "random", "--method", "lora", "--backbone", "test_vit", "--image-size", "32", "--epochs", "1", "--data-fraction", "0.05", "--batch-size", "16", "-q", "--no-site"]

# The child of the SIGKILL and lock tests: runs `medpeft ARGS`, and right before its N-th optimizer step
# (counted by torch's global pre-hook over every optimizer) either kills itself or holds (prints "ready",
# then waits until its parent closes stdin or kills it).
CHILD = """
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_pre_hook

action, target, calls = sys.argv[1], int(sys.argv[2]), [0]


def before_step(optimizer, args, kwargs):
    calls[0] += 1
    if calls[0] == target:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        print("ready", flush=True)
        sys.stdin.read()


register_optimizer_step_pre_hook(before_step)
from medpeft_cli.cli import main

main(sys.argv[3:])
"""


def child(action: str, step: int, args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", CHILD, action, str(step), *args], cwd=cwd, env=env, text=True, **popen)


def at_step(request, n: int, action) -> None:
    """Call action() right before this process's n-th optimizer step (removed when the test ends)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    calls = [0]

    def before_step(optimizer, args, kwargs):
        calls[0] += 1
        if calls[0] == n:
            action()

    request.addfinalizer(register_optimizer_step_pre_hook(before_step).remove)


def seeded_step(request, low: int, high: int) -> int:
    """A step in [low, high] fixed by the test's id and MEDPEFT_TEST_SEED (printed for a failing test)."""
    seed = os.environ.get("MEDPEFT_TEST_SEED", "0")
    step = random.Random(f"{seed}:{request.node.nodeid}").randint(low, high)
    print(f"step {step} of [{low}, {high}] (MEDPEFT_TEST_SEED={seed})")
    return step


def db_rows(db: Path) -> list[dict]:
    if not Path(db).exists():
        return []
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM runs ORDER BY run_key")
        return [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
    finally:
        con.close()


def t2i_outcome(row: dict, run_dir: Path) -> dict:
    """What must not depend on interruptions: scores, the history without timings, weights, samples."""
    metrics = json.loads(row["metrics_json"])
    test = {k: v for k, v in metrics["test"].items() if k != "generate_images_per_s"}
    return {
        "test": test,
        "history": [{k: v for k, v in r.items() if k != "train_images_per_s"} for r in metrics["history"]],
        "val_loss": row["val_loss"],
        "weights": (run_dir / "trainable.safetensors").read_bytes(),
        "sample": (run_dir / "samples" / "00.png").read_bytes(),
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bitwise comparisons need equal thread counts (children run with OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def t2i_reference(tmp_path_factory):
    """One uninterrupted text-to-image run, through the run API."""
    from medpeft_cli.config import build_spec
    from medpeft_cli.run import train

    root = tmp_path_factory.mktemp("t2i-reference")
    outcome = train(build_spec(None, {**T2I_FLAGS, "output.runs_dir": root / "runs", "output.db": root / "r.duckdb"}))
    [row] = db_rows(root / "r.duckdb")
    return {"key": outcome.run_key, "outcome": t2i_outcome(row, outcome.run_dir)}


def checkpoint_of(tmp_path: Path, key: str) -> dict:
    path = tmp_path / "runs" / ".partial" / key / "checkpoint.pt"
    assert path.is_file(), "no checkpoint was left to resume from"
    return torch.load(path, weights_only=True)


def assert_t2i_same_as_reference(tmp_path: Path, reference: dict) -> None:
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["run_key"] == reference["key"] and row["status"] == "ok"
    got = t2i_outcome(row, tmp_path / "runs" / row["run_key"])
    for name, value in reference["outcome"].items():
        assert got[name] == value, f"{name} differs from the uninterrupted run"
    assert not (tmp_path / "runs" / ".partial").exists() and not (tmp_path / "runs" / ".failed").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)  # text-to-image runs: training, then generation and FID (the first builds the reference)
def test_t2i_run_killed_with_sigkill_resumes_to_the_same_result(cli, tmp_path, t2i_reference, request):
    step = seeded_step(request, T2I_STEPS_PER_EPOCH + 1, 2 * T2I_STEPS_PER_EPOCH)  # in epoch 2
    killed = child("kill", step, ["train", *T2I], tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = killed.communicate()
    assert killed.returncode == -signal.SIGKILL, stderr[-2000:]
    key = t2i_reference["key"]
    assert db_rows(tmp_path / "results" / "medpeft.duckdb") == [] and not (tmp_path / "runs" / key).exists()
    state = checkpoint_of(tmp_path, key)
    assert (state["epoch"], state["step"]) == (2, 0) and len(state["history"]) == 1 and state["ema"] is not None

    resumed = cli("train", *T2I, "--resume")
    assert resumed.code == 0, resumed.stderr
    assert_t2i_same_as_reference(tmp_path, t2i_reference)


@pytest.mark.slow
@pytest.mark.timeout(400)  # text-to-image runs: training, then generation and FID (the first builds the reference)
def test_t2i_run_stopped_by_sigterm_mid_epoch_resumes_to_the_same_result(cli, tmp_path, t2i_reference, request):
    at_step(request, T2I_STEPS_PER_EPOCH + 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    res = cli("train", *T2I)
    assert res.code == 75, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("medpeft: stopped: received SIGTERM: stopped in epoch 2 after step 2") and "--resume" in line
    state = checkpoint_of(tmp_path, t2i_reference["key"])
    assert (state["epoch"], state["step"]) == (2, 2)
    refused = cli("train", *T2I)  # without --resume the checkpoint is neither used nor thrown away
    assert refused.code == 2 and "pass --resume to continue it or --force to start over" in refused.stderr

    resumed = cli("train", *T2I, "--resume")
    assert resumed.code == 0, resumed.stderr
    assert_t2i_same_as_reference(tmp_path, t2i_reference)


@pytest.mark.slow
@pytest.mark.timeout(400)  # text-to-image runs: training, then generation and FID (the first builds the reference)
def test_t2i_crash_leaves_a_failure_record_and_resume_continues(cli, tmp_path, t2i_reference, request):
    def crash():
        raise RuntimeError("simulated crash (out of memory)")

    at_step(request, T2I_STEPS_PER_EPOCH + 3, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli("train", *T2I)
    key = t2i_reference["key"]
    status = json.loads((tmp_path / "runs" / ".failed" / key / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "RuntimeError: simulated crash (out of memory)" and "Traceback" in status["traceback"]
    assert db_rows(tmp_path / "results" / "medpeft.duckdb") == [] and not (tmp_path / "runs" / key).exists()
    assert checkpoint_of(tmp_path, key)["epoch"] == 2  # the end-of-epoch-1 checkpoint

    resumed = cli("train", *T2I, "--resume")  # the hook counts on: it never fires again
    assert resumed.code == 0, resumed.stderr
    assert_t2i_same_as_reference(tmp_path, t2i_reference)


@pytest.mark.slow
@pytest.mark.timeout(400)  # text-to-image runs: training, then generation and FID (the first builds the reference)
def test_a_second_process_on_a_t2i_run_key_is_refused_while_the_first_trains(cli, tmp_path, t2i_reference):
    holder = child("hold", 1, ["train", *T2I], tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "ready"  # inside its first optimizer step: the lock is held
        res = cli("train", *T2I)
        assert res.code == 2
        [line] = res.stderr.strip().splitlines()
        assert line.startswith(f"medpeft: error: run {t2i_reference['key']} is being trained by another process (pid {holder.pid} on ")
        assert db_rows(tmp_path / "results" / "medpeft.duckdb") == []
    finally:
        holder.kill()
        holder.wait()


def nan_grid(tmp_path: Path, task: str, lrs: str = "[1.0e+30]") -> None:
    """A grid of runs with method full and these lrs (1e30 makes the loss NaN in the first epoch)."""
    if task == "t2i":
        head = "task: t2i\nt2i: {fid_samples: 8, fid_seeds: [0], num_inference_steps: 2}\ntrain: {epochs: 1, batch_size: 16, eval_batch_size: 16}\n"
    else:
        head = "backbone: test_vit\nweights: random\ndataset: synthetic-lesions\nimage_size: 32\ntrain: {epochs: 1, batch_size: 16}\n"
    (tmp_path / "grid.yaml").write_text(f"name: nan\n{head}data_fraction: 0.05\nmethod: full\ngrid:\n  lr: {lrs}\n")


def assert_diverged(res, what: str) -> str:
    """Exit code 3, one line on stderr, no traceback; returns the line."""
    assert res.code == 3, f"{what}: exit {res.code}: {res.stderr}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medpeft: diverged: "), f"{what}: {res.stderr}"
    assert "Traceback" not in res.stdout + res.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.timeout(400)  # text-to-image runs: training, then generation and FID (the first builds the reference)
def test_a_nan_loss_in_a_t2i_run_is_stored_as_diverged_with_exit_code_3_everywhere(cli, tmp_path):
    line = assert_diverged(cli("train", *T2I_SMALL, "--epochs", "1", "--method", "full", "--lr", "1e30"), "train")
    assert "training loss became" in line and "with status diverged; lower the learning rate" in line
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["status"] == "diverged" and row["task"] == "t2i" and row["test_fid"] is None and row["train_loss"] is None
    run_dir = tmp_path / "runs" / row["run_key"]
    assert (run_dir / "result.json").is_file() and not (run_dir / "samples.png").exists() and not (run_dir / "trainable.safetensors").exists()
    assert not (tmp_path / "runs" / ".partial").exists() and not (tmp_path / "runs" / ".failed").exists()

    nan_grid(tmp_path, "t2i")
    ran = cli("sweep", "run", "grid.yaml", "--force")  # the same run, trained again: diverges again
    assert "DIVERGED: training loss became" in ran.stdout and "0 finished, 0 already done, 0 failed, 1 diverged" in ran.stdout, ran.stderr
    assert "1 run(s) diverged (indices 0)" in assert_diverged(ran, "sweep run")
    manifest = tmp_path / "sweeps" / "nan.manifest.json"
    one = cli("sweep", "run-one", str(manifest), "--index", "0", "--force", "-q")
    assert "stored as diverged: training loss became" in one.stdout
    assert "with status diverged" in assert_diverged(one, "sweep run-one")


@pytest.mark.slow
def test_a_nan_loss_in_a_classification_run_gives_the_same_exit_code_and_line_everywhere(cli, tmp_path):
    nan_grid(tmp_path, "classification")
    ran = cli("sweep", "run", "grid.yaml")
    assert "0 finished, 0 already done, 0 failed, 1 diverged" in ran.stdout
    assert "1 run(s) diverged (indices 0): stored with status diverged" in assert_diverged(ran, "sweep run")
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["status"] == "diverged" and row["test_macro_f1"] is None

    # The stored run: the same answer from every command (a finished key is not trained again).
    manifest = str(tmp_path / "sweeps" / "nan.manifest.json")
    assert row["run_key"] in assert_diverged(cli("sweep", "run-one", manifest, "--index", "0"), "run-one of a stored run")
    trained = cli("train", *CLS, "--method", "full", "--lr", "1e30")
    assert "already finished" in trained.stdout and row["run_key"] in assert_diverged(trained, "train of a stored run")
    again = cli("sweep", "run", "grid.yaml")
    assert "stored as diverged" in again.stdout and "0 already done, 0 failed, 1 diverged" in again.stdout
    assert_diverged(again, "sweep run of a stored run")

    # Trained again (--force), from run-one in this process.
    assert "with status diverged" in assert_diverged(cli("sweep", "run-one", manifest, "--index", "0", "--force", "-q"), "run-one")


@pytest.mark.slow
@pytest.mark.timeout(400)  # two `medpeft sweep run-one` processes, each importing the whole stack
def test_a_sweep_of_run_one_subprocesses_counts_a_diverged_run_apart_and_exits_3(cli, tmp_path):
    nan_grid(tmp_path, "classification", "[1.0e+30, 1.0e-3]")
    both = cli("sweep", "run", "grid.yaml", "--concurrent", "2")
    assert "1 finished, 0 already done, 0 failed, 1 diverged" in both.stdout, both.stdout
    assert "DIVERGED: training loss became" in both.stdout and "test macro-F1" in both.stdout
    assert "1 run(s) diverged (indices 0)" in assert_diverged(both, "sweep run --concurrent 2")
    assert sorted(r["status"] for r in db_rows(tmp_path / "results" / "medpeft.duckdb")) == ["diverged", "ok"]


def test_tasks_are_found_by_the_registry_and_resolving_a_spec_needs_no_torch(tmp_path):
    code = (
        "import sys; from medpeft_cli.config import build_spec; from medpeft_cli.run import resolve_run; "
        "from medpeft_cli.run.task import tasks; "
        "keys = [resolve_run(build_spec(None, {'task': t})).key for t in ('classification', 't2i')]; "
        "print(sorted(tasks()), len(set(keys)), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['classification',", "'t2i']", "2", "False"]


@pytest.mark.slow
@pytest.mark.timeout(400)  # `accelerate launch` of two CPU processes (gloo)
def test_a_diverged_multi_process_run_exits_3_like_a_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "medpeft_cli", "train", *CLS, "--method", "full", "--lr", "1e30", "--num-processes", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]  # the launcher alone would say 1
    assert done.stderr.count("medpeft: diverged: training loss became") == 1, done.stderr[-3000:]
    [row] = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["status"] == "diverged" and row["world_size"] == 2
