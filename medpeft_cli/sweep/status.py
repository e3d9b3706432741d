"""Where a sweep stands: the state of every run, from the run directories, the failure records, the
task logs and (where Slurm is reachable) the queue.

    done       runs/<key>/result.json with status ok
    diverged   runs/<key>/result.json with status diverged (stored; rerun with a lower lr and --force)
    running    its array task runs now
    requeued   its array task was requeued (pre-empted or near its time limit) and waits or runs again
    pending    its array task waits in the queue (dependency, resources, throttle)
    failed     its last attempt ended without a result: a crash (runs/.failed/<key>/status.json),
               a user error, a cancelled task; the reason is its record's error or its log's last error line
    waiting    not submitted yet, and its tuned lr is not known yet
    to run     not submitted yet (or submitted from another folder), nothing stored

`sweep slurm` submits the failed, waiting and to-run ones (`--resubmit-failed`: only the failed ones),
never a run whose task is still queued.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medpeft_cli.errors import UserError
from medpeft_cli.store import RESULT_FILE
from medpeft_cli.store.rundir import FAILED_DIR, STATUS_FILE
from medpeft_cli.sweep.manifest import Manifest, ReadyRun, Resolver
from medpeft_cli.sweep.queue import Submitted, TaskState, read_jobs, task_states

STATES = ("done", "diverged", "running", "requeued", "pending", "failed", "waiting", "to run")
SUBMITTABLE = ("failed", "waiting", "to run")
_ENDED = re.compile(r"ended with exit code (\d+)")
_ERROR_PREFIXES = ("medpeft: error: ", "medpeft: diverged: ", "medpeft: stopped: ")


@dataclass
class RunState:
    index: int
    run_key: str | None  # None while its tuned lr is not known
    state: str
    reason: str = ""
    log: str | None = None  # the log of its latest array task
    job: str | None = None  # JOBID_INDEX of its latest array task
    restarts: int = 0


@dataclass
class StudyState:
    study: str
    trials: int  # finished trials counted towards the answer
    of: int
    lr: float | None


@dataclass
class SweepStatus:
    name: str
    out_dir: str
    slurm: str  # where queue states came from: "scontrol", "no scontrol here", "nothing submitted"
    runs: list[RunState] = field(default_factory=list)
    studies: list[StudyState] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {state: sum(r.state == state for r in self.runs) for state in STATES}

    def indices(self, *states: str) -> list[int]:
        return [r.index for r in self.runs if r.state in states]

    def to_json(self) -> dict:
        return {"grid": self.name, "out": self.out_dir, "slurm": self.slurm, "counts": self.counts(),
                "studies": [asdict(s) for s in self.studies], "runs": [asdict(r) for r in self.runs]}  # fmt: skip


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _log_end(log: Path) -> tuple[int | None, str]:
    """(exit code of the task's last attempt or None while it has not ended, its last error line)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None, ""
    code = error = None
    for line in lines:  # the last attempt's lines come last (logs are appended to on requeue)
        ended = _ENDED.search(line)
        if ended and line.startswith("medpeft: "):
            code = int(ended.group(1))
        elif line.startswith("medpeft: ") and "task" in line and "started on" in line:
            code = None  # a new attempt started after the last end
        if line.startswith(_ERROR_PREFIXES):
            error = line.removeprefix("medpeft: ")
        elif line and not line[0].isspace() and re.match(r"^[A-Za-z_.]+(Error|Exception)\b", line):
            error = line  # the last line of a traceback
    return code, error or ""


def _stored(ready: ReadyRun | None) -> RunState | None:
    if ready is None:
        return None
    row = _read_json(Path(ready.spec.output.runs_dir) / ready.run_key / RESULT_FILE)
    if not row and not (Path(ready.spec.output.runs_dir) / ready.run_key / RESULT_FILE).is_file():
        return None
    if row.get("status") == "diverged":
        return RunState(ready.index, ready.run_key, "diverged", row.get("status_detail") or "training loss became NaN/Inf")
    return RunState(ready.index, ready.run_key, "done")


def _failure_record(ready: ReadyRun | None) -> str:
    if ready is None:
        return ""
    record = _read_json(Path(ready.spec.output.runs_dir) / FAILED_DIR / ready.run_key / STATUS_FILE)
    return str(record.get("error") or "")


def _attempt(run: RunState, ready: ReadyRun | None, task: TaskState | None, slurm: bool) -> None:
    """The state of a run whose latest array task is `run.job` (its log at `run.log`); `slurm`: whether the
    queue could be asked (then a task it does not list as queued has ended)."""
    if task is not None and task.queued:
        run.restarts = task.restarts
        running = task.state in ("RUNNING", "COMPLETING", "CONFIGURING")
        run.state = "requeued" if task.restarts else ("running" if running else "pending")
        run.reason = "" if running or task.reason in ("None", "") else task.reason
        return
    log = Path(run.log or "")
    code, error = _log_end(log)
    record = _failure_record(ready)
    if code is None and not record and not slurm:  # nobody to ask whether the task still runs
        run.state, run.reason = ("running", "its log has not ended") if log.is_file() else ("pending", "submitted, no log yet")
        run.reason += " (Slurm could not be asked)"
        return
    run.state = "failed"
    if code == 75:
        run.reason = "stopped with its checkpoint saved and not requeued: submit again to resume it"
    elif record:
        run.reason = record
    elif code is None:
        ended = f" ({task.state})" if task is not None else ""
        run.reason = f"the task ended without a word{ended}: cancelled, killed or never started"
    else:
        run.reason = error or f"ended with exit code {code}"


def _latest_runs_job(jobs: list[Submitted], index: int) -> Submitted | None:
    for job in reversed(jobs):
        if job.kind == "runs" and index in job.indices:
            return job
    return None


def sweep_status(manifest: Manifest, out_dir: Path, strict: bool = False) -> SweepStatus:
    """The state of every run of `manifest`, whose Slurm jobs (if any) were submitted from `out_dir`.

    An unreachable Slurm is a UserError with `strict` (before submitting: what is queued must be known),
    else the status says so and relies on the logs."""
    out_dir = Path(out_dir).resolve()
    jobs = read_jobs(out_dir)
    try:
        states = task_states(sorted({j.job_id for j in jobs}))
        slurm = "nothing submitted" if not jobs else ("scontrol" if states is not None else "no scontrol here")
    except UserError as exc:
        if strict:
            raise
        states, slurm = None, f"unreachable ({exc})"
    status = SweepStatus(manifest.name, str(out_dir), slurm)
    resolver = Resolver(manifest)
    for entry in manifest.entries:
        ready = resolver.ready(entry)
        stored = _stored(ready)
        if stored is not None:
            status.runs.append(stored)
            continue
        run = RunState(entry.index, ready.run_key if ready else None, "waiting" if ready is None else "to run")
        job = _latest_runs_job(jobs, entry.index)
        if job is not None:
            run.job = f"{job.job_id}_{entry.index}"
            run.log = str(out_dir / "logs" / f"runs-{run.job}.log")
            _attempt(run, ready, (states or {}).get((job.job_id, entry.index)), states is not None)
        elif _failure_record(ready):
            run.state, run.reason = "failed", _failure_record(ready)  # a local attempt crashed
        elif ready is None:
            run.reason = f"study {entry.study} has no answer yet"
        status.runs.append(run)
    for group in manifest.tune_groups:
        from medpeft_cli.sweep.tune import study_progress

        answer = resolver.tuned(group.study)
        done = answer.trials if answer else study_progress(manifest.tune_storage or "", group)
        status.studies.append(StudyState(group.study, done, group.trials, answer.lr if answer else None))
    return status
