"""One run from spec to stored result, the same life for every task (DESIGN.md, "One run, any task"):

    resolve the spec -> run key -> skip if finished -> prepare (task) -> take the key's lock
    -> fit with checkpoints (task; --resume; SIGTERM/SIGUSR1 -> checkpoint -> Preempted, exit 75)
    -> evaluate (task) -> the row (shared fields + the task's) -> run directory -> DuckDB row

On a crash `runs/.failed/<key>/status.json` says why (store/rundir.py `failure_recorded`); on a NaN/Inf
loss the run is stored with status 'diverged' and `RunDiverged` is raised after storing (exit code 3).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import Preempted, RunDiverged, RunInterrupted, UserError
from medpeft_cli.run.row import Clock, shared_fields
from medpeft_cli.run.spec import resolve_run
from medpeft_cli.run.task import Fitted, Prepared, Run
from medpeft_cli.store import RESULT_FILE, append, read_result, write_run_dir
from medpeft_cli.store.locks import run_lock
from medpeft_cli.store.results import check_database
from medpeft_cli.store.rundir import check_writable_dir, failure_recorded, write_json
from medpeft_cli.train.progress import Report
from medpeft_cli.train.resume import Checkpointer, Control, StopFlag, checkpoint_interval

FINISHED, SKIPPED = "finished", "skipped"


@dataclass
class RunOutcome:
    run_key: str
    status: str  # "finished", or "skipped" (the key was already finished)
    run_dir: Path
    row: dict[str, Any]  # the stored row; {} on the non-main processes of a multi-process launch


def diverged(outcome: RunOutcome) -> RunDiverged:
    """The error for a run stored as diverged (now, or by an earlier attempt)."""
    detail = outcome.row.get("status_detail") or "training loss became NaN/Inf"
    return RunDiverged(f"{detail}; stored as run {outcome.run_key} with status diverged; lower the learning rate", outcome)


def settled(outcome: RunOutcome) -> RunOutcome:
    """The outcome, or `RunDiverged` when the run is stored as diverged (whenever that was)."""
    if outcome.row.get("status") == "diverged":
        raise diverged(outcome)
    return outcome


def stored_outcome(spec: RunSpec, key: str) -> RunOutcome:
    """A finished key: its stored row, appended to the database again (a no-op when present; restores
    the row when an earlier database write gave up). Raises `RunDiverged` for a run stored as diverged."""
    run_dir = Path(spec.output.runs_dir) / key
    row = read_result(run_dir)
    append(spec.output.db, row)
    return settled(RunOutcome(key, SKIPPED, run_dir, row))


def train(spec: RunSpec, force: bool = False, progress=None, lr_origin: dict[str, Any] | None = None, resume: bool = True) -> RunOutcome:
    """Run `spec` unless its key is already finished (then return the stored row).

    `resume`: continue from the key's checkpoint (`runs/.partial/<key>/`) when there is one; with False
    (`medpeft train` without --resume) an existing checkpoint is an error, never silently discarded.
    `force` starts over (discarding a checkpoint). `progress`: an EpochProgress (or a tuning trial's
    reporter). `lr_origin`: see `resolve_run`. Raises `Preempted` after checkpointing when SIGTERM or
    SIGUSR1 arrives, and `RunDiverged` (a FloatingPointError; `.outcome` holds the stored row) when the
    run's loss became NaN/Inf: after storing it, or when its key is already stored as diverged.
    """
    checkpoint_interval()  # a bad $MEDPEFT_CHECKPOINT_INTERVAL_S fails now, not after the model is loaded
    run = resolve_run(spec, lr_origin)
    if not force and (run.run_dir / RESULT_FILE).is_file():
        return stored_outcome(run.spec, run.key)
    check_writable_dir(run.runs_dir, "--runs-dir")  # before training: fail now, not after hours
    check_database(run.spec.output.db)
    with ExitStack() as held:  # the key's lock, signal handlers, failure record: released however the run ends
        return _execute(run, force, resume, Report(progress), held)


def _execute(run: Run, force: bool, resume: bool, report: Report, held: ExitStack) -> RunOutcome:
    clock = Clock()
    prepared = run.task.prepare(run, report)  # bad input fails here, before the lock and any training
    main = prepared.accelerator.is_main_process
    held.enter_context(run_lock(run.runs_dir, run.key, enabled=main))
    if not force and (run.run_dir / RESULT_FILE).is_file():  # another process stored it while this one was loading
        return stored_outcome(run.spec, run.key)
    checkpoint = Checkpointer(run.runs_dir, run.key, write=main)
    state = _resume_state(checkpoint, resume, force)
    if state is not None:
        checkpoint.check_matches(state, prepared.model)  # a mismatch is a user error, not a failed run
    control = Control(checkpoint, state, held.enter_context(StopFlag().on_signals()))
    held.enter_context(failure_recorded(run.runs_dir, run.key, run.spec.key_fields(), passthrough=(Preempted, RunDiverged), checkpoint=checkpoint.path))
    try:
        fitted = run.task.fit(prepared, control)
        metrics = None if fitted.diverged else run.task.evaluate(prepared, fitted)
    except KeyboardInterrupt as exc:  # Ctrl-C: the CLI's line names the checkpoint to continue from, if any
        raise RunInterrupted(checkpoint.path) from exc
    if not main:
        return RunOutcome(run.key, FINISHED, run.run_dir, {})
    row = shared_fields(prepared, fitted, clock) | run.task.row_fields(prepared, fitted, metrics)
    _store(prepared, fitted, metrics, row, force)
    checkpoint.discard()  # the run is stored: nothing left to resume
    return settled(RunOutcome(run.key, FINISHED, run.run_dir, row))


def _resume_state(checkpoint: Checkpointer, resume: bool, force: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None to start from the first step."""
    if force:
        checkpoint.discard()
        return None
    if not checkpoint.exists():
        return None
    if resume:
        return checkpoint.load()
    raise UserError(
        f"run {checkpoint.run_key} was interrupted and has a checkpoint ({checkpoint.path}); "
        "pass --resume to continue it or --force to start over"
    )


def _store(prepared: Prepared, fitted: Fitted, metrics: dict[str, Any] | None, row: dict[str, Any], force: bool) -> None:
    """The run directory (written whole or not at all), then the database row."""
    run = prepared.run

    def fill(tmp: Path) -> dict[str, Any]:
        write_json(tmp / "spec.json", run.spec.model_dump(mode="json"))
        run.task.save(prepared, fitted, metrics, tmp)
        (tmp / "train.log").write_text("\n".join(prepared.log_lines) + "\n", encoding="utf-8")
        return row

    write_run_dir(run.runs_dir, run.key, fill, replace=force)
    append(run.spec.output.db, row, replace=force)
