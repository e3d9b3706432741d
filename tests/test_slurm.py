"""Slurm job arrays without Slurm: the generated scripts pass `bash -n`, carry the array, throttle,
requeue, resource and log settings, chain their jobs with dependencies, stop a submission at the first
refused sbatch, requeue themselves on the time-limit signal, and their per-task commands run here
(through a stand-in `apptainer`). tests/test_slurm_live.py does the same on a live cluster."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import wait_for

GRID = """\
name: arr
backbone: test_vit
weights: random
dataset: synthetic-lesions
image_size: 32
data_fraction: 0.2
train: {epochs: 1, batch_size: 64}
grid:
  method: [linear, bitfit, {name: lora, rank: 2}]
"""

FAKE_APPTAINER = """\
#!/bin/bash
# stand-in for `apptainer exec [--nv] [--bind SRC:DST]... IMAGE CMD...`: runs CMD on this machine
[[ "$1" == exec ]] || exit 64
shift
while [[ "$1" == --* ]]; do if [[ "$1" == --bind ]]; then shift 2; else shift; fi; done
echo "image=$1 pid=$$" >> "$FAKE_LOG"
shift
exec "$@"
"""

FAKE_SBATCH = """\
#!/bin/bash
# stand-in for `sbatch --parsable ...`: records its arguments, prints a job id; refuses the script named in
# $FAKE_REFUSE as sbatch does (a reason on stderr, exit 1); prints no id at all for $FAKE_SILENT
n=$(( $(wc -l < "$FAKE_LOG" 2>/dev/null || echo 0) + 1000 ))
echo "sbatch $*" >> "$FAKE_LOG"
if [[ -n "${FAKE_REFUSE:-}" && "$*" == *"$FAKE_REFUSE"* ]]; then
  echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2
  exit 1
fi
[[ -n "${FAKE_SILENT:-}" && "$*" == *"$FAKE_SILENT"* ]] && exit 0
echo "$n;cluster"
"""

FAKE_SCANCEL = """\
#!/bin/bash
echo "scancel $*" >> "$FAKE_LOG"
"""

FAKE_SCONTROL = """\
#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
"""


@pytest.fixture
def fakes(tmp_path):
    """A bin directory with stand-ins for apptainer/sbatch/scontrol, first on PATH, and their log."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, text in (("apptainer", FAKE_APPTAINER), ("sbatch", FAKE_SBATCH), ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "fake.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", "FAKE_LOG": str(log)}
    return env, log


def _write(cli, tmp_path, *extra, grid=GRID):
    (tmp_path / "grid.yaml").write_text(textwrap.dedent(grid))
    (tmp_path / "medpeft.sif").write_bytes(b"")
    res = cli("sweep", "slurm", "grid.yaml", "--image", "medpeft.sif", "--partition", "gpu", "--gpus-per-task", "1",
              "--max-parallel", "2", "--time", "01:00:00", "--out", "slurm", *extra)  # fmt: skip
    assert res.code == 0, res.stderr
    return res, tmp_path / "slurm"


def _mark_done(tmp_path, index):
    """Pretend entry `index` finished (a run is done when runs/<key>/result.json exists)."""
    manifest = json.loads((tmp_path / "slurm" / "manifest.json").read_text())
    run = tmp_path / "runs" / manifest["entries"][index]["run_key"]
    run.mkdir(parents=True)
    (run / "result.json").write_text("{}")


def test_array_script_settings_and_dependency_chain(cli, tmp_path, fakes, monkeypatch):
    _write(cli, tmp_path)
    _mark_done(tmp_path, 0)
    res, out = _write(cli, tmp_path, "--report", "site", "--bind", "/data:/data")
    assert "1 done, 2 to run" in res.stdout
    for script in ("runs.sbatch", "report.sbatch", "submit.sh"):
        assert subprocess.run(["bash", "-n", str(out / script)]).returncode == 0, script
    assert not (out / "tune.sbatch").exists()
    runs = (out / "runs.sbatch").read_text()
    for line in (
        "#SBATCH --array=1-2%2",  # only the missing runs, at most 2 at once
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=01:00:00",
        f"#SBATCH --output={out.resolve() / 'logs' / 'runs-%A_%a.log'}",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        f"#SBATCH --chdir={tmp_path}",
        "export HF_HUB_OFFLINE=1 MEDPEFT_OFFLINE=1",
        f'apptainer exec --nv --bind /data:/data {tmp_path / "medpeft.sif"} medpeft sweep run-one {out.resolve() / "manifest.json"} --index "$INDEX" &',
        "trap on_usr1 USR1",
    ):
        assert line in runs, line
    report = (out / "report.sbatch").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=01:00:00", "#SBATCH --cpus-per-task=1"):  # every job: the resources given
        assert line in report.splitlines(), line
    assert "--gpus" not in report and "--mem" not in report  # no GPU for the report; no --mem given: the cluster's default
    assert f"apptainer exec --bind /data:/data {tmp_path / 'medpeft.sif'} medpeft report --out {tmp_path / 'site'} --db {tmp_path / 'results' / 'medpeft.duckdb'}" in report

    env, log = fakes
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_LOG", env["FAKE_LOG"])
    submitted = cli("sweep", "slurm", "grid.yaml", "--image", "medpeft.sif", "--out", "slurm", "--report", "site", "--submit")
    assert submitted.code == 0, submitted.stderr
    assert "medpeft: submitted runs 1000, report 1001" in submitted.stdout
    assert log.read_text().splitlines() == ["sbatch --parsable runs.sbatch", "sbatch --parsable --dependency=afterany:1000 report.sbatch"]


def test_tuning_array_runs_first(cli, tmp_path, fakes):
    grid = GRID.replace("grid:", "tune: {trials: 3}\ngrid:\n  lr: tuned")
    res, out = _write(cli, tmp_path, "--tune-workers", "2", grid=grid)
    assert "3 waiting for a tuned lr (3 studies)" in res.stdout
    tune = (out / "tune.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(out / "tune.sbatch")]).returncode == 0
    assert "#SBATCH --array=0-5%2" in tune  # 3 studies x 2 workers
    assert 'medpeft tune ' in tune and '--group "$((INDEX / 2))" --worker "$((INDEX % 2))"' in tune
    env, log = fakes
    done = subprocess.run(["bash", str(out / "submit.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # afterany: a study without an answer fails its runs with one line each instead of leaving them pending forever
    assert log.read_text().splitlines() == ["sbatch --parsable tune.sbatch", "sbatch --parsable --dependency=afterany:1000 runs.sbatch"]


@pytest.mark.parametrize("fault", ["FAKE_REFUSE", "FAKE_SILENT"])
def test_a_refused_sbatch_cancels_the_jobs_before_it_and_exits_2(cli, tmp_path, fakes, monkeypatch, fault):
    _write(cli, tmp_path)
    env, log = fakes
    for name in ("PATH", "FAKE_LOG"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv(fault, "report.sbatch")  # the second sbatch of the chain
    res = cli("sweep", "slurm", "grid.yaml", "--image", "medpeft.sif", "--out", "slurm", "--report", "site", "--submit")
    assert res.code == 2
    [line] = res.stderr.strip().splitlines()  # sbatch's own lines go to stderr too: the error is the one medpeft line
    reason = "sbatch: error: Batch job submission failed: Invalid account" if fault == "FAKE_REFUSE" else "no job id in its output"
    assert line.startswith(f"medpeft: error: sbatch report.sbatch failed (exit {1 if fault == 'FAKE_REFUSE' else 0}): {reason}")
    assert "cancelled the jobs submitted before it (1000)" in line and "medpeft: submitted" not in res.stdout
    assert log.read_text().splitlines()[-1] == "scancel 1000"
    assert not (tmp_path / "slurm" / "jobs.log").exists()  # nothing recorded as submitted


def test_cpu_tasks_ask_for_no_gpu(cli, tmp_path):
    _, out = _write(cli, tmp_path, "--gpus-per-task", "0", "--cpus-per-task", "2", "--mem", "1500M", "--tune-workers", "1")
    runs = (out / "runs.sbatch").read_text()
    assert "--gpus" not in runs and "--nv" not in runs and "--num-processes" not in runs
    assert "#SBATCH --cpus-per-task=2" in runs.splitlines() and "#SBATCH --mem=1500M" in runs.splitlines()
    for bad, message in ((["--gpus-per-task", "-1"], "--gpus-per-task must be 0 (CPU tasks) or more"), (["--mem", "lots"], "is not a Slurm memory size")):
        refused = cli("sweep", "slurm", "grid.yaml", "--out", "other", *bad)
        assert refused.code == 2 and message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "other").exists()


def process_state(pid: int) -> str:
    """The state letter of a process (R running, S sleeping in a system call, Z zombie, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_time_limit_signal_stops_the_task_and_requeues_it(cli, tmp_path, fakes):
    _, out = _write(cli, tmp_path)
    env, log = fakes
    # this task's "medpeft" is a sleep that records its pid (and ends only if the trap fails to stop it)
    sleeper = "medpeft.sif bash -c 'echo child=$$ >> $FAKE_LOG; exec sleep 600'"
    script = re.sub(r'\S*medpeft\.sif medpeft sweep run-one \S+ --index "\$INDEX"', sleeper, (out / "runs.sbatch").read_text())
    assert sleeper + " &" in script
    (out / "slow.sbatch").write_text(script)
    task = subprocess.Popen(["bash", str(out / "slow.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "77"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # The run started, and the task script waits on it (it has stored the run's pid: bash sleeps only
        # in `wait` once its child exists), so the trap knows what to stop.
        wait_for(lambda: "child=" in (log.read_text() if log.exists() else "") and process_state(task.pid) == "S", "the task waiting on its run")
        child = int(log.read_text().split("child=")[1].split()[0])
        task.send_signal(signal.SIGUSR1)  # what Slurm sends --signal-lead seconds before the limit
        stdout, stderr = task.communicate(timeout=120)  # a guard: the trap stops the run at once
    finally:
        task.kill()  # only if something above failed: the task has exited otherwise
        task.wait()
    assert task.returncode == 143, stderr  # the run's own exit code (a sleep killed by SIGTERM; medpeft exits 75)
    assert "run task 2 time limit near: stopping it" in stderr
    assert "run task 2 stopped with exit code 143: requeueing it" in stderr
    assert "scontrol requeue 77_2" in log.read_text().splitlines()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the run was stopped, not left behind


@pytest.mark.slow
@pytest.mark.timeout(300)  # two array tasks, each a `medpeft` process (measured: 9-24 s on 2 shared cores)
def test_per_task_commands_run_locally(cli, tmp_path, fakes):
    _, out = _write(cli, tmp_path)
    env, log = fakes
    manifest = json.loads((out / "manifest.json").read_text())
    # Task 0 is a requeued task whose run already finished (its row was never stored); task 2 trains.
    done = manifest["entries"][0]
    row = {"run_key": done["run_key"], "status": "ok", "method": "linear", "backbone": "test_vit", "dataset": "synthetic-lesions",
           "lr": 0.001, "lr_source": "method-default", "test_macro_f1": 0.25}  # fmt: skip
    (tmp_path / "runs" / done["run_key"]).mkdir(parents=True)
    (tmp_path / "runs" / done["run_key"] / "result.json").write_text(json.dumps(row))
    tasks = [  # two array tasks at once, as Slurm starts them
        subprocess.Popen(["bash", str(out / "runs.sbatch")], cwd=tmp_path, env={**env, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_JOB_ID": "5"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for i in (0, 2)
    ]
    try:
        outputs = [t.communicate()[0] for t in tasks]
    finally:
        for t in tasks:  # only if something above failed (e.g. the per-test time limit)
            t.kill()
            t.wait()
    assert [t.returncode for t in tasks] == [0, 0], outputs
    assert f"run #0 {done['run_key']} already finished: test macro-F1 0.2500" in outputs[0]
    assert "run #2 " in outputs[1] and "finished: test macro-F1" in outputs[1] and "(lora / test_vit / synthetic-lesions" in outputs[1]
    assert "task 2 ended with exit code 0" in outputs[1]
    assert log.read_text().count(f"image={tmp_path / 'medpeft.sif'}") == 2
    import duckdb

    con = duckdb.connect(str(tmp_path / "results" / "medpeft.duckdb"), read_only=True)
    keys = {r[0] for r in con.execute("SELECT run_key FROM runs").fetchall()}
    con.close()
    assert keys == {done["run_key"], manifest["entries"][2]["run_key"]}
    assert "2 done, 1 to run" in cli("sweep", "plan", str(out / "manifest.json")).stdout


def test_array_indices_are_compressed_to_slurm_ranges():
    from medpeft_cli.sweep.slurm import compress

    assert compress([8, 0, 1, 2, 5, 7]) == "0-2,5,7-8"
    assert compress([3]) == "3"
