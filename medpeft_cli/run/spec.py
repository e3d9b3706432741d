"""Resolving a spec: every default filled in (method options, learning rate, the task's own defaults),
so equal runs get equal run keys (`config.run_key`). No torch here: sweeps resolve whole grids."""

from __future__ import annotations

from typing import Any

from medpeft_cli.config import RunSpec, run_key
from medpeft_cli.methods import get_method
from medpeft_cli.run.task import Run, get_task


def resolve(spec: RunSpec) -> tuple[RunSpec, Any, Any]:
    """(spec with defaults filled in, method info, method options)."""
    info = get_method(spec.method.name, task=spec.task)
    task = get_task(spec.task)
    options = task.resolve_options(spec, info)
    data = spec.model_dump(mode="python")
    data["method"] = {"name": info.name, **options.model_dump(mode="json")}
    if data["train"]["lr"] is None:
        data["train"]["lr"] = info.default_lr
    return RunSpec.model_validate(task.fill_defaults(data)), info, options


def resolve_run(spec: RunSpec, lr_origin: dict[str, Any] | None = None) -> Run:
    """The resolved run of `spec`. `lr_origin` is the provenance of a tuned lr (lr_source, tuned_lr_trials,
    tune_study, from `medpeft sweep`); without it the row says whether the lr was given or the method's default."""
    lr_origin = lr_origin or {"lr_source": "given" if spec.train.lr is not None else "method-default"}
    resolved, info, options = resolve(spec)
    return Run(resolved, info, options, run_key(resolved), lr_origin, get_task(resolved.task))
