"""Booleans are not numbers: `epochs: true` or `rank: false` in a config is a mistake, not 1 or 0.

Pydantic (lax mode) and Python both accept True where an int or float is expected; every model the
user's files and flags fill (RunSpec and its parts, the grid's tune settings, each method's options)
refuses it instead, through `NoBoolNumbers` or `bool_number_fields`.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator

NUMBER_TYPES = (int, float)


def numeric_annotation(annotation: Any) -> bool:
    """Whether a field of this type takes a number and no boolean (int, float, `int | None`, ...)."""
    if annotation in NUMBER_TYPES:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return numeric_annotation(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        return bool not in members and any(numeric_annotation(m) for m in members)
    return False


def bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether `value` gives a boolean where a field of this type wants a number (or a list of numbers)."""
    if isinstance(value, bool):
        return numeric_annotation(annotation)
    if isinstance(value, (list, tuple)) and typing.get_origin(annotation) in (list, tuple):
        args = typing.get_args(annotation)
        return bool(args) and numeric_annotation(args[0]) and any(isinstance(v, bool) for v in value)
    return False


def bool_message(value: Any) -> str:
    """What is wrong with a boolean given for a number (or a list holding one)."""
    if isinstance(value, bool):
        return f"expected a number, not the boolean {str(value).lower()}"
    return "expected numbers, not booleans"


def bool_number_fields(model: type[BaseModel], data: Any) -> list[str]:
    """The keys of `data` (a mapping for `model`) that give a boolean to a numeric field."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    return [k for k, v in data.items() if k in fields and bool_for_number(fields[k].annotation, v)]


class NoBoolNumbers(BaseModel):
    """Base of the models users fill: a boolean given to a numeric field is a validation error."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name and bool_for_number(cls.model_fields[info.field_name].annotation, value):
            raise ValueError(bool_message(value))
        return value
