"""What a task (classification, text-to-image, later segmentation) supplies to the run orchestrator
(run/lifecycle.py), and how the orchestrator finds tasks.

A task is a module `medpeft_cli/<package>/task.py` holding `TASK`, an object with the `Task` interface
below. Tasks are found by scanning for such modules, so a new task is one new package; the orchestrator
never imports a task package by name (train/ never imports t2i/). Task modules import torch only inside
their functions: resolving a spec (`sweep plan`, the run key) must not load it.

The orchestrator owns everything a run has in common: the run key, skip-if-finished, the per-key lock,
checkpoint and --resume, stop signals, the failure record, the 'diverged' status, the shared row fields,
the run directory and the store. A task supplies only what differs:

    resolve_options(spec, info)   the method's options (validated; a task may fill a size knob)
    fill_defaults(spec_data)      task defaults that enter the run key (e.g. t2i sampling settings)
    prepare(run, report)          data, model with the method applied, Accelerator -> Prepared
    fit(prepared, control)        train to completion: checkpoints, resume, stop flag (train/loop.py) -> Fitted
    evaluate(prepared, fitted)    test metrics of a finished fit; called on every process (gathers),
                                  returns None on the others
    row_fields(prepared, fitted, metrics)   the task's own columns of the result row
    save(prepared, fitted, metrics, folder) its files in the run directory (metrics.json, weights, ...)
    headline(row)                 one short summary of a stored row ("test macro-F1 0.8123")
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError


@dataclass(frozen=True)
class Run:
    """A resolved run: the spec with every default filled in, its method, options and key."""

    spec: RunSpec
    info: Any  # methods.registry.MethodInfo
    options: Any  # the method's validated options model
    key: str
    lr_origin: dict[str, Any]  # where the lr came from: lr_source, tuned_lr_trials, tune_study (row fields)
    task: Task

    @property
    def runs_dir(self) -> Path:
        return Path(self.spec.output.runs_dir)

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.key


@dataclass(kw_only=True)
class Prepared:
    """What `prepare` returns; tasks subclass it with their own fields (loaders, pipeline, ...)."""

    run: Run
    report: Any  # train.progress.Report: log lines and progress, silent on non-main processes
    accelerator: Any
    model: Any  # the model with the method applied (its trainable state is what checkpoints hold)
    data: Any  # the loaded dataset: name, checksum, source, split_checksum
    train_images: int
    params: dict[str, Any]  # trainable_params, head_params, method_params, total_params, trainable_pct, ...
    weights_source: str
    backbone_checksum: str
    provenance: dict[str, Any] = field(default_factory=dict)  # further provenance columns (library versions, ...)
    log_lines: list[str] = field(default_factory=list)  # the run directory's train.log


@dataclass(kw_only=True)
class Fitted:
    """What `fit` returns: the shared outcome of training and the task's own result (`result`)."""

    result: Any
    history: list[dict]
    diverged: str = ""  # why training stopped early (the loss became NaN/Inf); "" when it did not
    train_images_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = ""


class Task(Protocol):
    name: str

    def resolve_options(self, spec: RunSpec, info: Any) -> Any: ...

    def fill_defaults(self, spec_data: dict[str, Any]) -> dict[str, Any]: ...

    def prepare(self, run: Run, report: Any) -> Prepared: ...

    def fit(self, prepared: Prepared, control: Any) -> Fitted: ...

    def evaluate(self, prepared: Prepared, fitted: Fitted) -> dict[str, Any] | None: ...

    def row_fields(self, prepared: Prepared, fitted: Fitted, metrics: dict[str, Any] | None) -> dict[str, Any]: ...

    def save(self, prepared: Prepared, fitted: Fitted, metrics: dict[str, Any] | None, folder: Path) -> None: ...

    def headline(self, row: dict[str, Any]) -> str: ...


@lru_cache(maxsize=1)
def _task_modules() -> tuple[str, ...]:
    package = Path(__file__).resolve().parents[1]  # medpeft_cli/
    return tuple(sorted(f"{package.name}.{path.parent.name}.task" for path in package.glob("*/task.py") if path.parent.name != "run"))


def tasks() -> dict[str, Task]:
    """Every task, by name."""
    found = {}
    for name in _task_modules():
        task = importlib.import_module(name).TASK
        found[task.name] = task
    return found


def get_task(name: str) -> Task:
    found = tasks()
    if name not in found:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(sorted(found))}")
    return found[name]


def headline(row: dict[str, Any]) -> str:
    """One short summary of a stored row, as its task words it ("test macro-F1 0.8123", "FID 66.589")."""
    return get_task(row.get("task") or "classification").headline(row)  # rows older than tasks: classification
