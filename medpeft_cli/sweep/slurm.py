"""Slurm job arrays for a sweep: sbatch scripts that run manifest entries inside a container.

`write_scripts` writes, into one directory:

    manifest.json   the plan the tasks read (entry I = array task I)
    tune.sbatch     (when runs wait for a tuned lr) one task per study and worker: `medpeft tune`
    runs.sbatch     one task per run to submit: `apptainer exec [--nv] IMAGE medpeft sweep run-one ...`
    report.sbatch   (with a site directory) `medpeft report` once every run task has ended
    submit.sh       sbatch the scripts above, chained with --dependency; prints the job ids and
                    appends them to jobs.log (what `medpeft sweep status` reads)
    logs/           one log per task (%A_%a), appended to when a task is requeued

Every job asks for the same partition, account, QoS, memory and time limit (the options given); the
report job takes one CPU and no GPU. Dependencies are `afterany`: a run task that fails for good (or
a tuning task) does not keep the other runs or the report from starting; a run whose study has no
answer fails at once with one line saying so.

Time limits and pre-emption: Slurm sends SIGUSR1 to the task's batch shell `signal_lead_s` seconds
before the time limit (`--signal=B:USR1@...`). The shell sends SIGTERM to medpeft, whose run code
checkpoints at the next optimizer step and exits with code 75 (train/resume.py); the shell then
requeues the task with `scontrol requeue` (`--requeue`), and the requeued task's `run-one` resumes
the run from that checkpoint. A task stopped by SIGTERM from Slurm (pre-emption by the scheduler,
scancel) forwards it to medpeft and waits for the checkpoint; pre-empted tasks are requeued by Slurm
itself. A finished run key is always skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import medpeft_cli
from medpeft_cli.errors import UserError
from medpeft_cli.sweep.manifest import Manifest, write_manifest
from medpeft_cli.sweep.queue import JOBS_FILE, compress

# Environment variables copied into the scripts when set where the scripts are written.
PASSED_ENV = ("MEDPEFT_DATA_DIR", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME")
# Slurm's default MaxArraySize is 1001: array indices above 1000 need a cluster that allows them.
SLURM_DEFAULT_MAX_INDEX = 1000
# Exit codes after which a stopped task is requeued: 75 (medpeft checkpointed, errors.py), or a stop
# before training began (130: interrupted while loading, 143: SIGTERM before medpeft's handler was set).
REQUEUE_CODES = (75, 130, 143)


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


def check_options(opts: SlurmOptions) -> None:
    """Refuse options no job could use, before anything is written."""
    if opts.max_parallel is not None and opts.max_parallel < 1:
        raise UserError("--max-parallel must be at least 1")
    if opts.gpus_per_task < 0:
        raise UserError(f"--gpus-per-task must be 0 (CPU tasks) or more, got {opts.gpus_per_task}")
    if opts.cpus_per_task < 1:
        raise UserError(f"--cpus-per-task must be at least 1, got {opts.cpus_per_task}")
    if opts.signal_lead_s < 1:
        raise UserError(f"--signal-lead must be at least 1 second, got {opts.signal_lead_s}")
    if opts.tune_workers < 1:
        raise UserError(f"--tune-workers must be at least 1, got {opts.tune_workers}")
    if opts.mem is not None and not re.fullmatch(r"\d+[KMGT]?", opts.mem):
        raise UserError(f"--mem {opts.mem!r} is not a Slurm memory size; write e.g. 1500M or 32G")
    if opts.image is not None and opts.image.endswith(".sif") and not Path(opts.image).exists():
        raise UserError(f"image {opts.image} does not exist; build it with `apptainer build {opts.image} containers/medpeft.def` (see containers/README.md)")


def _medpeft(opts: SlurmOptions, gpus: bool) -> str:
    if opts.image is None:
        return f"{shlex.quote(sys.executable)} -m medpeft_cli"
    binds = "".join(f" --bind {shlex.quote(b)}" for b in opts.binds)
    return f"apptainer exec{' --nv' if gpus else ''}{binds} {shlex.quote(opts.image)} medpeft"


def _header(name: str, what: str, opts: SlurmOptions, array: str | None, logs: Path) -> list[str]:
    """The #SBATCH lines of one job; every job gets the partition, account, QoS, memory and time given.
    Array jobs (tune, runs) get the CPUs and GPUs per task; the report job one CPU and no GPU."""
    kind = what.split()[0]
    lines = [
        "#!/bin/bash",
        f"# medpeft sweep {name}: {what}",
        f"# Written by `medpeft sweep slurm` (medpeft {medpeft_cli.__version__}); write it again rather than editing it.",
        f"#SBATCH --job-name=medpeft-{name}-{kind}",
    ]
    if array is not None:
        throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
        lines.append(f"#SBATCH --array={array}{throttle}")
    lines += ["#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={opts.cpus_per_task if array is not None else 1}"]
    if array is not None and opts.gpus_per_task > 0:
        lines.append(f"#SBATCH --gpus-per-task={opts.gpus_per_task}")
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos), ("mem", opts.mem), ("time", opts.time)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    log_name = f"{kind}-%A_%a.log" if array is not None else f"{kind}-%j.log"
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
    """Run `command` in the background so the signal traps fire at once. USR1 (the time limit is
    near): stop it (SIGTERM: medpeft checkpoints and exits 75) and requeue the task. TERM (scancel,
    pre-emption): pass it on and wait for the checkpoint; Slurm requeues pre-empted tasks itself."""
    codes = "|".join(map(str, REQUEUE_CODES))
    return [
        'INDEX="${SLURM_ARRAY_TASK_ID:?not a Slurm array task: submit with sbatch (or set SLURM_ARRAY_TASK_ID to run one index by hand)}"',
        '# torch starts one thread per core of the node, not of the task: give it the cores Slurm allotted',
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        'child=""',
        f'say() {{ echo "medpeft: $(date -u +%FT%TZ) {what} task ${{INDEX}} $*" >&2; }}',
        "finish() {  # how the task ended, in the exit codes of medpeft_cli/errors.py (docs/reliability.md)",
        '  local meaning="crashed, see runs/.failed/"',
        '  case "$1" in 0) meaning="done";; 2) meaning="user error";; 3) meaning="stored as diverged";;',
        '    75) meaning="stopped, checkpoint saved";; 130|143) meaning="stopped before training";; esac',
        '  say "ended with exit code $1 (${meaning})"',
        '  exit "$1"',
        "}",
        "stop_child() {  # SIGTERM to medpeft, then its exit code in $status",
        "  status=75",
        '  if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null; wait "$child"; status=$?; fi',
        "}",
        "on_usr1() {",
        '  say "time limit near: stopping it"',
        "  stop_child",
        f'  case "$status" in {codes})',
        '    say "stopped with exit code ${status}: requeueing it (it resumes from its checkpoint)"',
        '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || say "could not be requeued: submit the sweep again to resume it";;',
        "  esac",
        '  finish "$status"',
        "}",
        'on_term() { say "got SIGTERM (cancelled or pre-empted): stopping it"; stop_child; finish "$status"; }',
        "trap on_usr1 USR1",
        "trap on_term TERM",
        'say "started on $(hostname) (job ${SLURM_ARRAY_JOB_ID:-?}, restart ${SLURM_RESTART_COUNT:-0})"',
        f"{command} &",
        "child=$!",
        'wait "$child"',
        'finish "$?"',
        "",
    ]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def _submit_script(name: str, steps: list[tuple[str, str, str]]) -> list[str]:
    """submit.sh: sbatch each (kind, array, dependency) in order. A refused sbatch cancels the jobs
    this script submitted before it and ends it with one `medpeft: error:` line and exit code 2."""
    lines = [
        "#!/bin/bash",
        f"# Submit sweep {name}: {' -> '.join(kind for kind, _, _ in steps)}. Prints the job ids and appends them to {JOBS_FILE}.",
        "set -uo pipefail",
        'cd "$(dirname "$0")"',
        "submitted=()",
        "record=\"\"",
        "submit() {  # submit KIND ARRAY [sbatch options]: the job id in $id, or the whole submission stops",
        '  local kind=$1 array=$2 err out; shift 2',
        '  err=$(mktemp)',
        '  out=$(sbatch --parsable "$@" "${kind}.sbatch" 2>"$err")',
        "  local code=$? reason",
        '  reason=$(grep -v "^[[:space:]]*$" "$err" | tail -n 1); cat "$err" >&2; rm -f "$err"',
        '  id=${out%%;*}',
        '  if [[ $code -ne 0 || ! "$id" =~ ^[0-9]+$ ]]; then',
        '    [[ ${#submitted[@]} -gt 0 ]] && scancel "${submitted[@]}"',
        '    echo "medpeft: error: sbatch ${kind}.sbatch failed (exit ${code}): ${reason:-no job id in its output: ${out}}${submitted[*]:+; cancelled the jobs submitted before it (${submitted[*]})}" >&2',
        "    exit 2",
        "  fi",
        '  submitted+=("$id")',
        '  record+="$kind $id $array $(date -u +%FT%TZ)"$\'\\n\'',
        "}",
    ]
    for kind, array, dependency in steps:
        lines.append(f"submit {kind} {array}{f' --dependency={dependency}' if dependency else ''}; {kind}=$id")
    ids = ", ".join(f"{kind} ${{{kind}}}" for kind, _, _ in steps)
    lines.append(f'printf "%s" "$record" >> {JOBS_FILE}  # only a whole chain is recorded')
    lines.append(f'echo "medpeft: submitted {ids}"')
    return lines


def write_scripts(manifest: Manifest, opts: SlurmOptions, run_indices: list[int]) -> SlurmPlan:
    """Write the scripts that run the entries `run_indices` (and the tuning studies they wait for)."""
    check_options(opts)
    if not run_indices:
        raise ValueError("write_scripts needs at least one run")
    if opts.image is not None and Path(opts.image).is_file():
        opts = replace(opts, image=str(Path(opts.image).resolve()))  # tasks may start in another directory
    run_indices = sorted(run_indices)
    out = Path(opts.out_dir).resolve()
    logs = out / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {logs}: {exc.strerror or exc}; pass a writable --out directory") from None
    manifest_path = write_manifest(manifest, out / "manifest.json")
    q_manifest = shlex.quote(str(manifest_path))
    scripts: dict[str, Path] = {}
    steps: list[tuple[str, str, str]] = []
    warnings = []
    if run_indices[-1] > SLURM_DEFAULT_MAX_INDEX:
        warnings.append(
            f"the array uses indices up to {run_indices[-1]}; Slurm's default MaxArraySize allows 0-{SLURM_DEFAULT_MAX_INDEX} "
            "(check `scontrol show config | grep MaxArraySize`, or split the grid)"
        )
    gpus = opts.gpus_per_task > 0

    from medpeft_cli.sweep.manifest import Resolver

    resolver = Resolver(manifest)
    chosen = [manifest.entries[i] for i in run_indices]
    studies = {e.study for e in chosen if e.study is not None and resolver.tuned(e.study) is None}
    groups = [i for i, g in enumerate(manifest.tune_groups) if g.study in studies]
    tune_tasks = len(groups) * opts.tune_workers
    if groups:
        w = opts.tune_workers
        tune_array = compress([g * w + k for g in groups for k in range(w)])
        command = f'{_medpeft(opts, gpus)} tune {q_manifest} --group "$((INDEX / {w}))" --worker "$((INDEX % {w}))"'
        what = f"tune ({len(groups)} studies x {w} workers)"
        scripts["tune"] = _write(out / "tune.sbatch", _header(manifest.name, what, opts, tune_array, logs) + _task_body(command, "tune"))
        steps.append(("tune", tune_array, ""))

    extra = f" --num-processes {opts.gpus_per_task}" if opts.gpus_per_task > 1 else ""
    command = f'{_medpeft(opts, gpus)} sweep run-one {q_manifest} --index "$INDEX"{extra}'
    what = f"runs ({len(run_indices)} of {len(manifest.entries)} runs)"
    runs_array = compress(run_indices)
    scripts["runs"] = _write(out / "runs.sbatch", _header(manifest.name, what, opts, runs_array, logs) + _task_body(command, "run"))
    steps.append(("runs", runs_array, "afterany:$tune" if groups else ""))

    if opts.report_site is not None:
        site = shlex.quote(str(Path(opts.report_site).resolve()))
        command = f"{_medpeft(opts, False)} report --out {site} --db {shlex.quote(str(manifest.db))}"
        scripts["report"] = _write(out / "report.sbatch", _header(manifest.name, "report after the runs", opts, None, logs) + [command, ""])
        steps.append(("report", "-", "afterany:$runs"))

    scripts["submit"] = _write(out / "submit.sh", _submit_script(manifest.name, steps))
    return SlurmPlan(out, manifest_path, scripts, run_indices, tune_tasks, warnings)


def submit(plan: SlurmPlan) -> tuple[str, list[str]]:
    """Run submit.sh (on a Slurm login node): (its line with the job ids, sbatch's warnings). A refused
    sbatch raises UserError with its reason (submit.sh has cancelled what it had submitted)."""
    if shutil.which("sbatch") is None:
        raise UserError(f"sbatch not found: submit from a Slurm login node with `bash {plan.scripts['submit']}`")
    done = subprocess.run(["bash", str(plan.scripts["submit"])], capture_output=True, text=True, check=False)
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 0:
        said = [line.removeprefix("medpeft: error: ") for line in lines if line.startswith("medpeft: error: ")]
        reason = said[-1] if said else f"submit.sh exited with code {done.returncode} ({(lines or ['no output'])[-1]})"
        raise UserError(f"{reason}; the scripts are in {plan.out_dir}")
    return done.stdout.strip(), lines
