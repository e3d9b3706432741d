"""Learning-rate search, the study's protocol: one Optuna study per (method, backbone, dataset[, fraction]).

Each trial is an ordinary medpeft run (same code path as `medpeft train`, so the same protocol) with
an lr drawn log-uniformly from [lr_min, lr_max], trained on the training split and scored on the
validation split: the objective is the best validation macro-F1 over the epochs. The shared run code
also scores the test split at the end of a trial; the tuner never reads it. A trial whose validation
F1 falls below the median of earlier trials at the same epoch is pruned (Optuna's MedianPruner), and
a trial whose loss diverges counts as pruned too.

Storage is an Optuna journal file (safe when many Slurm tasks share a study on a shared filesystem:
Optuna locks it) or an RDB URL. Several workers may run trials of one study at once; the study's
answer is fixed once its first `trials` finished trials (by trial number) are known, so every run
that reads it gets the same lr, whatever workers add later.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from medpeft_cli.config import PROTOCOL_VERSION, RunSpec
from medpeft_cli.errors import Preempted, RunDiverged, UserError
from medpeft_cli.sweep.grid import TuneSettings

# Epochs are reported as steps 1, 2, ...; MedianPruner prunes from step n_warmup_steps on, so 2
# keeps the first epoch (the lr is still warming up there) out of pruning decisions.
PRUNER_WARMUP_STEPS = 2
PRUNER_STARTUP_TRIALS = 5


class TuneGroup(BaseModel):
    """One Optuna study: the runs that share a tuned lr (method, backbone, dataset[, fraction], ...)."""

    model_config = ConfigDict(extra="forbid")

    study: str
    spec: dict[str, Any]  # the trials' RunSpec (train.lr is what each trial samples)
    trials: int
    lr_min: float
    lr_max: float
    pruner: str
    seed: int


@dataclass(frozen=True)
class TunedLR:
    lr: float
    trials: int  # finished trials the choice was made from
    value: float  # best validation macro-F1
    study: str


def tune_group_for(spec: RunSpec, settings: TuneSettings) -> TuneGroup:
    """The study that tunes `spec`'s lr: same spec with the tuning seed/fraction/epochs and no lr.

    The study name holds a hash of everything that changes which lr is best (so changing the lr range
    or the tuning epochs starts a new study), but not the number of trials: asking for more trials
    extends the study.
    """
    fraction = spec.data_fraction if settings.data_fraction == "per-run" else settings.data_fraction
    if settings.epochs is not None and spec.train.steps is not None:
        raise UserError(f"tune.epochs does not apply to runs whose length is train.steps ({spec.train.steps}); drop tune.epochs (trials then train the runs' steps)")
    train = spec.train.model_copy(update={"lr": None, "epochs": settings.epochs or spec.train.epochs})
    trial_spec = spec.model_copy(update={"seed": settings.seed, "data_fraction": fraction, "train": train})
    identity = {
        "protocol_version": PROTOCOL_VERSION,
        "spec": trial_spec.key_fields(),
        "lr_range": [settings.lr_min, settings.lr_max],
        "pruner": settings.pruner,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    part = f".f{fraction:g}" if settings.data_fraction == "per-run" else ""
    name = f"{spec.dataset}.{spec.backbone}.{spec.method.name}{part}.{digest}"
    return TuneGroup(
        study=name, spec=trial_spec.model_dump(mode="json"), trials=settings.trials, lr_min=settings.lr_min,
        lr_max=settings.lr_max, pruner=settings.pruner, seed=settings.seed,
    )  # fmt: skip


def _storage_exists(storage: str) -> bool:
    return "://" in storage or Path(storage).is_file()


def open_storage(storage: str):
    """Journal file storage for a path (created if needed), RDB storage for a URL."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not storage:
        raise UserError("no tuning storage given; set `tune: {storage: PATH or URL}` in the grid file")
    if "://" in storage:
        try:
            # The heartbeat marks trials of killed workers as failed, so a study never waits on them.
            return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=300)
        except Exception as exc:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            raise UserError(f"cannot open tuning storage {storage} ({type(exc).__name__}: {str(exc).splitlines()[0]}); check the URL") from None
    path = Path(storage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise UserError(f"cannot open tuning journal {path}: {exc.strerror or exc}; choose a writable tune.storage path") from None


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _load_study(storage: str, group: TuneGroup):
    if not _storage_exists(storage):
        return None
    import optuna

    _quiet_optuna()
    try:
        return optuna.load_study(study_name=group.study, storage=open_storage(storage))
    except KeyError:  # no such study yet
        return None


def _decision_trials(study, wanted: int) -> tuple[list, bool]:
    """The first `wanted` finished trials by number, and whether they are all known.

    Failed trials (errors, killed workers) are skipped; a trial still running before the cut-off
    means the answer is not fixed yet.
    """
    from optuna.trial import TrialState

    chosen = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            chosen.append(trial)
            if len(chosen) == wanted:
                return chosen, True
        elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
            return chosen, False
    return chosen, False


def study_progress(storage: str, group: TuneGroup) -> int:
    """Number of finished trials counted towards the study's answer."""
    study = _load_study(storage, group)
    return 0 if study is None else len(_decision_trials(study, group.trials)[0])


def best_lr(storage: str, group: TuneGroup) -> TunedLR | None:
    """The study's answer, or None while fewer than `group.trials` trials have finished."""
    from optuna.trial import TrialState

    study = _load_study(storage, group)
    if study is None:
        return None
    trials, complete = _decision_trials(study, group.trials)
    if not complete:
        return None
    scored = [t for t in trials if t.state == TrialState.COMPLETE]
    if not scored:
        raise UserError(
            f"all {len(trials)} trials of study {group.study} were pruned or diverged; widen or lower the lr range "
            f"(tune.lr_min/lr_max, now {group.lr_min:g}-{group.lr_max:g}) so a new study starts"
        )
    best = max(scored, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    return TunedLR(lr=float(best.params["lr"]), trials=len(trials), value=float(best.value), study=group.study)


class _TrialReporter:
    """The run's progress hook: reports each epoch's validation F1 to Optuna and prunes bad trials."""

    def __init__(self, trial, echo: Callable[[str], None]):
        self.trial = trial
        self.echo = echo
        self.evaluations = 0  # Optuna's step: the evaluation's number (= the epoch under protocol 1's per-epoch evaluation)

    def start(self, epochs: int, images_per_epoch: int) -> None:
        pass

    def step(self, n_images: int) -> None:
        pass

    def epoch_done(self, record: dict, line: str) -> None:
        self.echo(f"  trial {self.trial.number}: {line}")
        if "val_macro_f1" in record:  # an epoch without an evaluation (train.eval_every_steps / evals_per_run) reports nothing
            self._report(record)

    def evaluated(self, record: dict, line: str) -> None:
        self.echo(f"  trial {self.trial.number}: {line}")
        self._report(record)

    def _report(self, record: dict) -> None:
        import optuna

        self.evaluations += 1
        self.trial.report(record["val_macro_f1"], step=self.evaluations)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation macro-F1 {record['val_macro_f1']:.4f} below the median after evaluation {self.evaluations} (epoch {record['epoch']})")

    def stop(self) -> None:
        pass


def _objective(group: TuneGroup, echo: Callable[[str], None]):
    import optuna

    from medpeft_cli.run import train

    def objective(trial) -> float:
        lr = trial.suggest_float("lr", group.lr_min, group.lr_max, log=True)
        echo(f"study {group.study}: trial {trial.number}, lr {lr:.3g}")
        scratch = Path(tempfile.mkdtemp(prefix="medpeft-trial-"))
        spec = RunSpec.model_validate(group.spec)
        # Trials are throw-away runs: their files and rows go to a scratch store that is deleted.
        spec = spec.model_copy(update={
            "train": spec.train.model_copy(update={"lr": lr}),
            "output": spec.output.model_copy(update={"runs_dir": scratch / "runs", "db": scratch / "trial.duckdb"}),
        })  # fmt: skip
        try:
            outcome = train(spec, force=True, progress=_TrialReporter(trial, echo))
        except RunDiverged as exc:
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except Preempted as exc:  # Optuna marks the trial failed; its scratch run is deleted below
            exc.hint = "the trial is marked failed; run the same `medpeft tune` command again to continue the study"
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        value = float(outcome.row["val_macro_f1"])
        echo(f"  trial {trial.number}: best validation macro-F1 {value:.4f}")
        return value

    return objective


def run_study(storage: str, group: TuneGroup, worker: int = 0, echo: Callable[[str], None] = print) -> TunedLR | None:
    """Run trials until the study has `group.trials` finished ones; returns its answer when fixed.

    Any number of workers (processes, Slurm tasks) may run this for the same study at once.
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("medpeft tune runs as one process per worker; start several workers (--worker N) instead of a multi-process launch")
    _quiet_optuna()
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS)
        if group.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=group.study,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=group.seed + worker),  # workers draw different lrs
        pruner=pruner,
        load_if_exists=True,
    )
    study.set_user_attr("spec", group.spec)
    study.set_user_attr("lr_range", [group.lr_min, group.lr_max])
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=finished)) < group.trials:
        study.optimize(_objective(group, echo), callbacks=[MaxTrialsCallback(group.trials, states=finished)], gc_after_trial=True)
    return best_lr(storage, group)


def fail_running_trials(storage: str, group: TuneGroup) -> int:
    """Mark the study's RUNNING trials as FAIL (their workers were killed); returns how many.

    Journal storage has no heartbeat, so only the user knows that no worker is alive any more.
    """
    from optuna.trial import TrialState

    study = _load_study(storage, group)
    if study is None:
        return 0
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


def describe(answer: TunedLR | None, group: TuneGroup, storage: str) -> dict[str, Any]:
    if answer is None:
        return {"study": group.study, "lr": None, "trials": study_progress(storage, group), "of": group.trials}
    return {"study": group.study, "lr": answer.lr, "trials": answer.trials, "of": group.trials, "val_macro_f1": answer.value}
