"""The defaults `medpeft train --help` shows, read from the models that define them (config.py,
t2i/options.py), so a changed default shows in the help without anyone retyping it.

`train`'s options default to None on the command line (a flag left out must not override the config
file), so Typer cannot show the real default by itself; each option's help is
`with_default("Epochs of training.", "train.epochs")` instead, which appends "[default: 30]".
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medpeft_cli.config import DEFAULT_METHOD, T2I_DEFAULTS, MethodSpec, RunSpec
from medpeft_cli.t2i.options import SMOKE_PROFILE, STUDY_PROFILE, TINY_SD


def with_default(help_text: str, path: str, none: str | None = None) -> str:
    """`help_text` followed by the default of RunSpec field `path`, as Click shows defaults."""
    return f"{help_text}  [default: {spec_default(path, none)}]"


def spec_default(path: str, none: str | None = None) -> str:
    """The default of RunSpec field `path` (dotted: `train.epochs`) as help text, with the text-to-image
    default when it differs. `none` says what a None default means (required for such fields)."""
    value = _default(path)
    if value is None:
        option = path.removeprefix("t2i.")
        if path.startswith("t2i.") and option in STUDY_PROFILE:  # filled from the pipeline (t2i/options.py)
            return f"{_shown(STUDY_PROFILE[option])}; {TINY_SD} {_shown(SMOKE_PROFILE[option])}"
        if none is None:
            raise ValueError(f"{path} defaults to None: pass none= to say what that means")
        return none
    text = _shown(value)
    t2i = DEFAULT_METHOD["t2i"] if path == "method" else T2I_DEFAULTS.get(path)
    if t2i is not None and _shown(t2i) != text:
        text += f" (t2i: {_shown(t2i)})"
    return text


def _default(path: str) -> Any:
    model: type[BaseModel] = RunSpec
    *parents, name = path.split(".")
    for part in parents:
        model = _model_of(model.model_fields[part].annotation)
    return model.model_fields[name].get_default(call_default_factory=True)


def _model_of(annotation: Any) -> type[BaseModel]:
    """The pydantic model in a field's type (`TrainOptions`, `T2IOptions | None`)."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return next(m for m in members if isinstance(m, type) and issubclass(m, BaseModel))


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, MethodSpec):
        return value.name
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)
