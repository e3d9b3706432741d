"""Every registered method, found by importing the modules of the method packages.

A task's methods are the modules of medpeft_cli/methods/<task>/ (`classification/`, `t2i/`): each
module registers its methods with `@register_method`, so adding a method is adding a module there (and
its test); nothing keeps a list of modules or methods. Method modules import torch only inside their
functions, so the catalogue (and `medpeft methods`, `medpeft report`) costs pydantic, not torch.

Listing order, per task: the baselines, then the methods of the reference study, then the others;
within each group, modules in alphabetical order and methods in the order their module registers them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.methods.registry import FAMILIES, TASK_FAMILIES, MethodInfo, registered

PACKAGE = "medpeft_cli.methods"

_loaded: list[MethodInfo] = []


def _load() -> list[MethodInfo]:
    if not _loaded:
        for task in TASK_FAMILIES:
            package = importlib.import_module(f"{PACKAGE}.{task}")
            for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
                importlib.import_module(module.name)
        found = registered()
        for info in found:  # a method registered under a task lives in that task's package
            if not info.apply.__module__.startswith(f"{PACKAGE}.{info.task}."):
                raise ValueError(f"method {info.name!r} of task {info.task!r} is registered in {info.apply.__module__}, outside {PACKAGE}.{info.task}")
        tasks = list(TASK_FAMILIES)
        found.sort(key=lambda m: (tasks.index(m.task), m.kind != "baseline", not m.in_study))  # stable: module order within groups
        _loaded.extend(found)
    return _loaded


def list_methods(task: str | None = None) -> list[MethodInfo]:
    """Registered methods of `task` (every task when None), in listing order."""
    return [info for info in _load() if task is None or info.task == task]


def get_method(name: str, task: str = "classification") -> MethodInfo:
    found = next((info for info in _load() if info.task == task and info.name == name), None)
    if found is None:
        available = ", ".join(sorted(m.name for m in list_methods(task)))
        where, listing = ("", "`medpeft methods`") if task == "classification" else (f" for task {task}", f"`medpeft methods --task {task}`")
        raise UserError(f"unknown method {name!r}{where}; available: {available} ({listing} describes them)")
    return found


def speed_only_options(name: str, task: str = "classification") -> tuple[str, ...]:
    """The method's options that change only speed (left out of the run key); () for an unknown method."""
    found = next((info for info in _load() if info.task == task and info.name == name), None)
    return found.speed_only if found else ()


def capability_matrix() -> list[dict[str, Any]]:
    """Method x backbone family, read from the registry (for `medpeft methods --matrix` and the site)."""
    return [
        {
            "method": info.name,
            "kind": info.kind,
            "families": {family: family in info.families for family in FAMILIES},
            "size_knob": info.knob,
            "mergeable": info.mergeable,
            "peft": info.peft_owned,
            "cite": info.cite,
        }
        for info in list_methods("classification")
    ]


def method_catalog() -> list[dict[str, Any]]:
    """Every method of every task as plain data, for the leaderboard site (`build_site(methods=...)`)."""
    return [
        {"name": m.name, "task": m.task, "kind": m.kind, "families": [f for f in TASK_FAMILIES[m.task] if f in m.families],
         "cite": m.cite, "summary": m.summary, "default_lr": m.default_lr, "url": m.url, "knob": m.knob,
         "mergeable": m.mergeable, "peft": m.peft_owned}
        for m in list_methods()
    ]  # fmt: skip
