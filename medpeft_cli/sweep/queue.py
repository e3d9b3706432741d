"""What Slurm knows about a sweep's jobs: the job ids `submit.sh` recorded, and the state of each task.

`submit.sh` appends one line per submitted job to `<out>/jobs.log`: `KIND JOBID ARRAY UTC-TIME` (kind:
tune | runs | report; ARRAY: the array indices in Slurm's syntax, `-` for the report job). The task
states come from `scontrol -o show job` (pending, running, and finished tasks for `MinJobAge`
seconds after they end; the same record `squeue` reads), so no accounting database (`sacct`) is needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from medpeft_cli.errors import UserError

JOBS_FILE = "jobs.log"
QUEUED = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING")


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


def expand(array: str) -> list[int]:
    """'0-2,5,7-9:2%4' -> [0, 1, 2, 5, 7, 9] (a throttle %K is ignored); '-' or '' -> []."""
    indices: list[int] = []
    for part in array.split("%")[0].split(","):
        if part in ("", "-"):
            continue
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        indices += range(int(first), int(last or first) + 1, int(step or 1))
    return indices


@dataclass(frozen=True)
class Submitted:
    kind: str  # tune | runs | report
    job_id: str
    indices: tuple[int, ...]
    at: str


def read_jobs(out_dir: Path) -> list[Submitted]:
    """The jobs submitted from `out_dir`, oldest first ([] when nothing was submitted from there)."""
    path = Path(out_dir) / JOBS_FILE
    if not path.is_file():
        return []
    jobs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4 or not fields[1].isdigit():
            raise UserError(f"{path} line {number} is not `KIND JOBID ARRAY TIME` ({line!r}); remove the line or the file")
        jobs.append(Submitted(fields[0], fields[1], tuple(expand(fields[2])), fields[3]))
    return jobs


@dataclass(frozen=True)
class TaskState:
    job_id: str  # the array job's id (what jobs.log records)
    index: int | None  # the array task id; None for a job that is not an array
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, ...
    reason: str
    restarts: int
    exit_code: str  # "0:0": exit code:signal

    @property
    def queued(self) -> bool:
        return self.state in QUEUED


_FIELD = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|Restarts|ExitCode)=(\S*)")


def parse_scontrol(text: str) -> list[TaskState]:
    """Task states from `scontrol -o show job` output (one job record per line); a pending array
    record such as `ArrayTaskId=3-5%2` stands for each of its tasks."""
    states = []
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobId" not in fields:
            continue
        job = fields.get("ArrayJobId") or fields["JobId"]
        indices: list[int | None] = expand(fields["ArrayTaskId"]) if fields.get("ArrayTaskId") else [None]
        restarts = int(fields.get("Restarts", "0") or 0)
        for index in indices:
            states.append(TaskState(job, index, fields.get("JobState", ""), fields.get("Reason", ""), restarts, fields.get("ExitCode", "")))
    return states


def task_states(job_ids: list[str]) -> dict[tuple[str, int | None], TaskState] | None:
    """(job id, array index) -> state of every task Slurm still knows of those jobs; None where there
    is no `scontrol` (not a Slurm login node)."""
    if shutil.which("scontrol") is None:
        return None
    if not job_ids:
        return {}
    done = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "No jobs in the system" in done.stdout + done.stderr:
            return {}
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"cannot read the Slurm queue (`scontrol -o show job`: {last}); check that slurmctld is reachable")
    wanted = set(job_ids)
    return {(s.job_id, s.index): s for s in parse_scontrol(done.stdout) if s.job_id in wanted}
