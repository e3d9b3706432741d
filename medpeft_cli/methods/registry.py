"""The method registry: `@register_method(...)` entries, looked up by name.

A method is a function `(backbone, options) -> nn.Module` that returns the model with exactly the
intended parameters trainable. Listing methods, checking a method/backbone pair and the capability
matrix all read this registry; nothing keeps a separate list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from medpeft_cli.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from medpeft_cli.models import Backbone

FAMILIES = ("vit", "cnn", "other")


class NoOptions(BaseModel):
    """A method without options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    apply: Callable[[Backbone, Any], nn.Module]
    options: type[BaseModel]
    families: frozenset[str]
    kind: str  # "baseline", "selective", "reparameterised" or "additive"
    cite: str
    default_lr: float
    peft_owned: bool  # saved in HF peft's adapter format

    @property
    def summary(self) -> str:
        doc = (self.apply.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    *,
    families: set[str],
    kind: str,
    cite: str,
    default_lr: float,
    options: type[BaseModel] = NoOptions,
    peft_owned: bool = False,
) -> Callable:
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {unknown} for method {name}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodInfo(name, fn, options, frozenset(families), kind, cite, default_lr, peft_owned)
        return fn

    return decorator


def list_methods() -> list[MethodInfo]:
    _load_builtin_methods()
    return list(_REGISTRY.values())


def get_method(name: str) -> MethodInfo:
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))} (`medpeft methods` describes them)")
    return _REGISTRY[name]


def validate_options(info: MethodInfo, options: dict[str, Any]) -> BaseModel:
    """The method's options model filled with defaults; a bad option is one clear line."""
    try:
        return info.options.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {'unknown option' if e['type'] == 'extra_forbidden' else e['msg']}" for e in exc.errors()
        )
        known = ", ".join(info.options.model_fields) or "none"
        raise UserError(f"invalid options for method {info.name!r}: {problems} (its options: {known})") from None


def check_supported(info: MethodInfo, family: str, backbone_name: str) -> None:
    if family not in info.families:
        raise UserError(
            f"method {info.name!r} does not support backbone {backbone_name!r} (detected family {family!r}); "
            f"it supports: {', '.join(sorted(info.families))}. `medpeft methods` shows what applies to each family"
        )


def _load_builtin_methods() -> None:
    # Importing the family modules runs their @register_method decorators.
    from medpeft_cli.methods import baselines, lora, selective  # noqa: F401
