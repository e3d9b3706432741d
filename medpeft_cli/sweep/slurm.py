"""Slurm job arrays for a sweep: sbatch scripts that run manifest entries inside a container.

`write_scripts` writes, into one directory:

    manifest.json   the plan the tasks read (entry I = array task I)
    tune.sbatch     (when runs wait for a tuned lr) one task per study and worker: `medpeft tune`
    runs.sbatch     one task per missing run: `apptainer exec --nv IMAGE medpeft sweep run-one ...`
    report.sbatch   (with a site directory) `medpeft report` once the array has ended
    submit.sh       sbatch the scripts above, chained with --dependency; prints the job ids
    logs/           one log per task (%A_%a), appended to when a task is requeued

Time limits and pre-emption: Slurm sends SIGUSR1 to the task's batch shell `signal_lead_s` seconds
before the time limit (`--signal=B:USR1@...`). The shell sends SIGTERM to medpeft, whose run code
checkpoints at the next optimizer step and exits (code 75, train/resume.py), then requeues the task
with `scontrol requeue` (`--requeue`). The requeued task's `run-one` resumes the run from that
checkpoint; a finished run key is skipped. Tasks pre-empted by the scheduler get SIGTERM from Slurm
(checkpoint as above) and are requeued by Slurm itself.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import medpeft_cli
from medpeft_cli.errors import UserError
from medpeft_cli.sweep.manifest import Manifest, status, write_manifest

# Environment variables copied into the scripts when set where the scripts are written.
PASSED_ENV = ("MEDPEFT_DATA_DIR", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME")
# Slurm's default MaxArraySize is 1001: array indices above 1000 need a cluster that allows them.
SLURM_DEFAULT_MAX_INDEX = 1000


@dataclass
class SlurmOptions:
    out_dir: Path
    image: str | None = None  # Apptainer image (.sif or docker://...); None runs this Python's medpeft
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem: str | None = None
    max_parallel: int | None = None  # %K: at most K tasks of an array at once
    signal_lead_s: int = 300
    binds: list[str] = field(default_factory=list)
    sbatch_args: list[str] = field(default_factory=list)
    report_site: Path | None = None
    offline: bool = True
    tune_workers: int = 1


@dataclass
class SlurmPlan:
    out_dir: Path
    manifest: Path
    scripts: dict[str, Path]  # "tune" / "runs" / "report" / "submit" -> path
    run_indices: list[int]
    tune_tasks: int
    warnings: list[str] = field(default_factory=list)


def compress(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (Slurm's --array syntax)."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = prev = ordered[0]
    for i in ordered[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def _medpeft(opts: SlurmOptions, gpus: bool) -> str:
    if opts.image is None:
        return f"{shlex.quote(sys.executable)} -m medpeft_cli"
    binds = "".join(f" --bind {shlex.quote(b)}" for b in opts.binds)
    return f"apptainer exec{' --nv' if gpus else ''}{binds} {shlex.quote(opts.image)} medpeft"


def _header(name: str, what: str, opts: SlurmOptions, array: str | None, gpus: bool, logs: Path) -> list[str]:
    lines = [
        "#!/bin/bash",
        f"# medpeft sweep {name}: {what}",
        f"# Written by `medpeft sweep slurm` (medpeft {medpeft_cli.__version__}); write it again rather than editing it.",
        f"#SBATCH --job-name=medpeft-{name}-{what.split()[0]}",
    ]
    if array is not None:
        throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
        lines.append(f"#SBATCH --array={array}{throttle}")
    lines += ["#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={opts.cpus_per_task if gpus else 1}"]
    if gpus and opts.gpus_per_task > 0:
        lines.append(f"#SBATCH --gpus-per-task={opts.gpus_per_task}")
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos), ("mem", opts.mem if gpus else "4G")):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines.append(f"#SBATCH --time={opts.time if gpus else '00:30:00'}")
    log_name = f"{what.split()[0]}-%A_%a.log" if array is not None else f"{what.split()[0]}-%j.log"
    lines += [
        f"#SBATCH --output={logs / log_name}",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={Path.cwd()}",
    ]
    if array is not None:
        lines += ["#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{opts.signal_lead_s}"]
    lines += [f"#SBATCH {arg}" for arg in opts.sbatch_args]
    lines += ["", "set -uo pipefail"]
    if opts.offline:
        lines.append("# Compute nodes have no internet: `medpeft prefetch` put every dataset and backbone on disk.")
        lines.append("export HF_HUB_OFFLINE=1 MEDPEFT_OFFLINE=1")
    for var in PASSED_ENV:
        if os.environ.get(var):
            lines.append(f"export {var}={shlex.quote(os.environ[var])}")
    return lines


def _task_body(command: str, what: str) -> list[str]:
    """Run `command` in the background so the USR1 trap fires at once; on the signal, stop it
    (SIGTERM: medpeft checkpoints and exits) and requeue the task."""
    return [
        'INDEX="${SLURM_ARRAY_TASK_ID:?not a Slurm array task: submit with sbatch (or set SLURM_ARRAY_TASK_ID to run one index by hand)}"',
        'child=""',
        "stop_and_requeue() {",
        f'  echo "medpeft: $(date -u +%FT%TZ) time limit near: stopping {what} task ${{INDEX}} and requeueing it" >&2',
        '  if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "  exit 0",
        "}",
        "trap stop_and_requeue USR1",
        f'echo "medpeft: $(date -u +%FT%TZ) {what} task ${{INDEX}} on $(hostname) (job ${{SLURM_ARRAY_JOB_ID:-?}}, restart ${{SLURM_RESTART_COUNT:-0}})"',
        f"{command} &",
        "child=$!",
        'wait "$child"',
        "status=$?",
        f'echo "medpeft: $(date -u +%FT%TZ) {what} task ${{INDEX}} ended with exit code ${{status}}"',
        'exit "$status"',
        "",
    ]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def write_scripts(manifest: Manifest, opts: SlurmOptions) -> SlurmPlan | None:
    """Write the scripts for what is still missing; None when every run is finished."""
    if opts.max_parallel is not None and opts.max_parallel < 1:
        raise UserError("--max-parallel must be at least 1")
    if opts.image is not None and opts.image.endswith(".sif") and not Path(opts.image).exists():
        raise UserError(f"image {opts.image} does not exist; build it with `apptainer build {opts.image} containers/medpeft.def` (see containers/README.md)")
    if opts.image is not None and Path(opts.image).is_file():
        opts = replace(opts, image=str(Path(opts.image).resolve()))  # tasks may start in another directory
    state = status(manifest)
    run_indices = sorted(state.todo + state.waiting)
    if not run_indices:
        return None
    out = Path(opts.out_dir).resolve()
    logs = out / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {logs}: {exc.strerror or exc}; pass a writable --out directory") from None
    manifest_path = write_manifest(manifest, out / "manifest.json")
    q_manifest = shlex.quote(str(manifest_path))
    scripts: dict[str, Path] = {}
    warnings = []
    if run_indices[-1] > SLURM_DEFAULT_MAX_INDEX:
        warnings.append(
            f"the array uses indices up to {run_indices[-1]}; Slurm's default MaxArraySize allows 0-{SLURM_DEFAULT_MAX_INDEX} "
            "(check `scontrol show config | grep MaxArraySize`, or split the grid)"
        )

    groups = [i for i, g in enumerate(manifest.tune_groups) if g.study in state.studies_waiting]
    tune_tasks = len(groups) * opts.tune_workers
    if groups:
        w = opts.tune_workers
        tune_indices = [g * w + k for g in groups for k in range(w)]
        command = f'{_medpeft(opts, True)} tune {q_manifest} --group "$((INDEX / {w}))" --worker "$((INDEX % {w}))"'
        what = f"tune ({len(groups)} studies x {w} workers)"
        scripts["tune"] = _write(out / "tune.sbatch", _header(manifest.name, what, opts, compress(tune_indices), True, logs) + _task_body(command, "tune"))

    extra = f" --num-processes {opts.gpus_per_task}" if opts.gpus_per_task > 1 else ""
    command = f'{_medpeft(opts, True)} sweep run-one {q_manifest} --index "$INDEX"{extra}'
    what = f"runs ({len(run_indices)} of {len(manifest.entries)} runs)"
    scripts["runs"] = _write(out / "runs.sbatch", _header(manifest.name, what, opts, compress(run_indices), True, logs) + _task_body(command, "run"))

    if opts.report_site is not None:
        site = shlex.quote(str(Path(opts.report_site).resolve()))
        command = f"{_medpeft(opts, False)} report --out {site} --db {shlex.quote(str(manifest.db))}"
        scripts["report"] = _write(out / "report.sbatch", _header(manifest.name, "report after the runs", opts, None, False, logs) + [command, ""])

    submit = [
        "#!/bin/bash",
        f"# Submit sweep {manifest.name}: " + " -> ".join(k for k in ("tune", "runs", "report") if k in scripts) + ". Prints the job ids.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'jobid() { local out; out=$(sbatch --parsable "$@"); echo "${out%%;*}"; }',
    ]
    after = ""
    if "tune" in scripts:
        submit.append("tune=$(jobid tune.sbatch)")
        after = "--dependency=afterok:$tune "
    submit.append(f"runs=$(jobid {after}runs.sbatch)")
    ids = ["tune ${tune}"] if "tune" in scripts else []
    ids.append("runs ${runs}")
    if "report" in scripts:
        submit.append("report=$(jobid --dependency=afterany:$runs report.sbatch)")
        ids.append("report ${report}")
    submit.append(f'echo "medpeft: submitted {", ".join(ids)}"')
    scripts["submit"] = _write(out / "submit.sh", submit)
    return SlurmPlan(out, manifest_path, scripts, run_indices, tune_tasks, warnings)


def submit(plan: SlurmPlan) -> str:
    """Run submit.sh (on a Slurm login node); returns its output line with the job ids."""
    if shutil.which("sbatch") is None:
        raise UserError(f"sbatch not found: submit from a Slurm login node with `bash {plan.scripts['submit']}`")
    done = subprocess.run(["bash", str(plan.scripts["submit"])], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"sbatch failed ({last}); the scripts are in {plan.out_dir}")
    return done.stdout.strip()
