"""Sweeps on a live Slurm cluster (tests/slurm_cluster.py: munged + slurmctld + slurmd started here):
`medpeft sweep slurm --submit` runs the tuning job, the run array and the report job through the real
scheduler; a running task pre-empted with Slurm's warning signal checkpoints, is requeued, resumes, and
ends with the result of an uninterrupted run; a task that fails for good does not block the others or
the report, and `--resubmit-failed` submits only it. No Slurm command is stood in for.

Skipped, saying why, where slurm-wlm/munge are not installed or the daemons cannot start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import db_rows, single_thread, wait_for  # noqa: F401
from slurm_cluster import Cluster, slurm, slurm_cluster  # noqa: F401

# Every test trains through Slurm tasks, each a `medpeft` process (20-55 s a test here on 2 shared cores);
# the time limit is a guard above pytest's default 120 s for a machine busy with other tests.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

# Every job must get exactly these (the node has no GPU: a --gpus line would make sbatch refuse the job).
RESOURCES = ["--partition", "other", "--account", "proj-medpeft", "--qos", "normal", "--mem", "1500M", "--time", "00:20:00",
             "--cpus-per-task", "1", "--gpus-per-task", "0"]  # fmt: skip
JOB_LIMIT_S = 300.0  # a guard for a whole submission; it takes seconds here

TUNED_GRID = """\
name: live
backbone: test_vit
weights: random
dataset: synthetic-lesions
image_size: 32
data_fraction: 0.2
train: {epochs: 1, batch_size: 64}
tune: {trials: 2, epochs: 1, storage: results/optuna.log}
grid:
  method: [linear]
  seed: [0, 1]
  lr: tuned
"""

# Long enough that a task is still training when the signal sent after its first checkpoint lands.
LONG_GRID = """\
name: long
backbone: test_vit
weights: random
dataset: synthetic-lesions
image_size: 32
method: lora
data_fraction: 0.2
train: {epochs: 4, batch_size: 16}
grid:
  seed: [0, 1]
"""


def submit(cli, *args: str) -> dict[str, str]:
    """`medpeft sweep slurm ... --submit`; returns {kind: job id} from its last line."""
    res = cli("sweep", "slurm", "grid.yaml", *RESOURCES, *args, "--submit")
    assert res.code == 0, res.stderr
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("medpeft: submitted "), res.stdout
    return dict(part.split() for part in line.removeprefix("medpeft: submitted ").split(", "))


def wait_until_idle(cluster: Cluster) -> None:
    """Every job of the cluster has ended (the queue is empty)."""
    wait_for(lambda: not cluster.run("squeue", "-h").stdout.strip(), "every Slurm job ending", JOB_LIMIT_S)


def tasks(cluster: Cluster, job_id: str) -> dict[int | None, dict[str, str]]:
    """Array index (None for a plain job) -> the `scontrol show job` fields of that task."""
    found = {}
    for line in cluster.run("scontrol", "-o", "show", "job", job_id).stdout.splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        index = fields.get("ArrayTaskId")
        found[int(index) if index and index.isdigit() else None] = fields
    return found


def status(cli) -> dict:
    res = cli("sweep", "status", "grid.yaml", "--json")
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


def test_tuned_grid_runs_tune_then_runs_then_report_with_the_resources_given(cli, tmp_path, slurm, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs inherit the environment: one math thread each
    (tmp_path / "grid.yaml").write_text(TUNED_GRID)
    ids = submit(cli, "--report", "site")
    assert list(ids) == ["tune", "runs", "report"]
    wait_until_idle(slurm)

    out = tmp_path / "slurm" / "live"
    tune, runs, report = tasks(slurm, ids["tune"])[0], tasks(slurm, ids["runs"]), tasks(slurm, ids["report"])[None]
    assert sorted(runs) == [0, 1]
    for job in (tune, *runs.values(), report):  # what sbatch was asked for, as the scheduler recorded it
        assert (job["Partition"], job["Account"], job["TimeLimit"], job["MinMemoryNode"], job["NumCPUs"]) == ("other", "proj-medpeft", "00:20:00", "1500M", "1")
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
    for script in ("tune", "runs", "report"):  # no accounting database here: Slurm records no QoS, the scripts carry it
        assert "#SBATCH --qos=normal" in (out / f"{script}.sbatch").read_text().splitlines()
    # The chain: the runs started after the tuning ended, the report after the last run ended.
    assert min(t["StartTime"] for t in runs.values()) >= tune["EndTime"]
    assert report["StartTime"] >= max(t["EndTime"] for t in runs.values())

    # Every run through `medpeft train`'s code with the tuned lr, each row exactly once.
    from medpeft_cli.sweep.manifest import Resolver, read_manifest

    manifest = read_manifest(out / "manifest.json")
    resolver = Resolver(manifest)
    tuned = resolver.tuned(manifest.entries[0].study)
    assert tuned is not None and tuned.trials == 2
    keys = sorted(resolver.require(e).run_key for e in manifest.entries)
    rows = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert sorted(r["run_key"] for r in rows) == keys
    assert all((r["status"], r["lr"], r["lr_source"], r["tuned_lr_trials"]) == ("ok", tuned.lr, "tuned", 2) for r in rows)
    assert "site: " in (out / "logs" / f"report-{ids['report']}.log").read_text() and (tmp_path / "site" / "index.html").is_file()
    assert status(cli)["counts"]["done"] == 2

    # The same grid again: everything is done, nothing is submitted.
    again = cli("sweep", "slurm", "grid.yaml", *RESOURCES, "--report", "site", "--submit")
    assert again.code == 0 and "every run is finished: nothing to submit" in again.stdout
    assert [line.split()[:2] for line in (out / "jobs.log").read_text().splitlines()] == [[k, v] for k, v in ids.items()]
    assert not slurm.run("squeue", "-h").stdout.strip()


def test_a_refused_sbatch_stops_the_submission_with_its_reason(cli, tmp_path, slurm):
    (tmp_path / "grid.yaml").write_text(LONG_GRID)
    res = cli("sweep", "slurm", "grid.yaml", *RESOURCES, "--mem", "64G", "--report", "site", "--submit")  # more than the node has
    assert res.code == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("medpeft: error: sbatch runs.sbatch failed (exit 1): sbatch: error: ") and "the scripts are in" in line
    assert not (tmp_path / "slurm" / "long" / "jobs.log").exists()
    assert not slurm.run("squeue", "-h").stdout.strip()


def outcome(row: dict, run_dir: Path) -> dict:
    """What must not depend on an interruption: metrics, the history without timings, the predictions."""
    metrics = json.loads(row["metrics_json"])
    history = [{k: v for k, v in r.items() if k != "train_images_per_s"} for r in metrics["history"]]
    return {"test": metrics["test"], "val": metrics["val"], "best_epoch": row["best_epoch"], "history": history,
            "predictions": (run_dir / "predictions_test.csv").read_bytes()}  # fmt: skip


def test_preempted_task_resumes_exactly_and_a_failed_one_blocks_nothing(cli, tmp_path, slurm, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tasks and the reference run: one thread, for bitwise equality
    (tmp_path / "grid.yaml").write_text(LONG_GRID)
    from medpeft_cli.config import RunSpec
    from medpeft_cli.sweep.manifest import plan

    long_run, failing = plan(tmp_path / "grid.yaml").entries
    runs_dir = tmp_path / "runs"
    # Run 1 fails for good: a file stands where its checkpoint folder must go (its first save crashes).
    blocker = runs_dir / ".partial" / failing.run_key
    blocker.parent.mkdir(parents=True)
    blocker.write_text("")

    ids = submit(cli, "--report", "site")
    out = tmp_path / "slurm" / "long"
    log = out / "logs" / f"runs-{ids['runs']}_0.log"
    wait_for(lambda: log.is_file() and "started on" in log.read_text(), "run 0's task starting", JOB_LIMIT_S)
    before = status(cli)["runs"][0]
    # Run 0 has provably started training: its first checkpoint (end of epoch 1 of 4) is on disk.
    wait_for(lambda: (runs_dir / ".partial" / long_run.run_key / "checkpoint.pt").is_file(), "run 0's first checkpoint", JOB_LIMIT_S)
    slurm.run("scancel", "--signal=USR1", "--batch", f"{ids['runs']}_0")  # what Slurm sends --signal-lead s before the limit
    wait_for(lambda: tasks(slurm, ids["runs"])[0]["Restarts"] == "1", "Slurm requeueing run 0", JOB_LIMIT_S)
    after = status(cli)["runs"][0]  # requeued until its second attempt has stored the run
    assert before["state"] == "running" and after["state"] == "requeued", (before, after)

    # Run 1 failed for good: its record and its log say why.
    wait_for(lambda: tasks(slurm, ids["runs"])[1]["JobState"] == "FAILED", "run 1 failing", JOB_LIMIT_S)
    assert (runs_dir / ".failed" / failing.run_key / "status.json").is_file()
    failed = status(cli)["runs"][1]
    assert failed["state"] == "failed" and str(blocker) in failed["reason"] and Path(failed["log"]).is_file(), failed
    # Fixed; only the failed run is submitted again (run 0 is still queued: left out), while run 0 resumes.
    blocker.unlink()
    again = submit(cli, "--resubmit-failed")
    assert list(again) == ["runs"] and "#SBATCH --array=1" in (out / "runs.sbatch").read_text().splitlines()

    # Meanwhile, run 0 uninterrupted, in this process.
    from medpeft_cli.run import train

    spec = RunSpec.model_validate(long_run.spec)
    reference = tmp_path / "reference"
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"runs_dir": reference / "runs", "db": reference / "db.duckdb"})})
    reference_row = train(spec).row
    wait_until_idle(slurm)

    text = log.read_text()
    assert "medpeft: stopped: received SIGTERM" in text and "stopped with exit code 75: requeueing it" in text
    assert "restart 1)" in text and text.rstrip().endswith("ended with exit code 0 (done)")
    rows = {r["run_key"]: r for r in db_rows(tmp_path / "results" / "medpeft.duckdb")}
    assert sorted(rows) == sorted([long_run.run_key, failing.run_key])
    assert outcome(rows[long_run.run_key], runs_dir / long_run.run_key) == outcome(reference_row, reference / "runs" / long_run.run_key)
    assert not (runs_dir / ".partial" / long_run.run_key).exists() and not (runs_dir / ".failed").exists()
    # The report job (afterany) ran once every task of the first array had ended, the failed one included.
    first = tasks(slurm, ids["runs"])
    report = tasks(slurm, ids["report"])[None]
    assert report["JobState"] == "COMPLETED" and report["StartTime"] >= max(t["EndTime"] for t in first.values())
    assert (tmp_path / "site" / "index.html").is_file()
    assert status(cli)["counts"]["done"] == 2
