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

# Backbone families, detected from the module tree (models/backbones.py detect_family):
FAMILIES = ("vit", "hvit", "cnn", "other")
FAMILY_DESCRIPTIONS = {
    "vit": "plain ViT over one token sequence (ViT, DeiT, EVA, CLIP-style, BEiT)",
    "hvit": "hierarchical/windowed vision transformer (Swin, ...)",
    "cnn": "convolutional network (ResNet, ConvNeXt, EfficientNet, ...)",
    "other": "anything else (MLP-Mixer, conv-attention hybrids such as MaxViT and CoAtNet)",
}
# Methods are registered per task: the classification families above, and the Stable Diffusion
# U-Net of the text-to-image track (medpeft_cli/t2i/), whose only family is "unet".
TASKS = ("classification", "t2i")
TASK_FAMILIES = {"classification": FAMILIES, "t2i": ("unet",)}


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
    url: str = ""  # where the original paper is
    # The integer option that sets the method's size (rank, bottleneck, prompt length), which
    # `--param-budget` chooses; None: the method has a fixed size.
    knob: str | None = None
    # Allowed knob values for a (backbone, options) pair, e.g. block sizes that divide every layer width;
    # None: any positive integer.
    knob_values: Callable[[Backbone, Any], list[int]] | None = None
    # Folds the trained method into the backbone weights: adapted model -> plain timm state dict
    # (same keys as the unadapted backbone). None: the method cannot be merged (it adds a non-linear
    # module or tokens).
    merge: Callable[[nn.Module], dict[str, Any]] | None = None
    task: str = "classification"  # one of TASKS; the registry is keyed by (task, name)

    @property
    def summary(self) -> str:
        doc = (self.apply.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[tuple[str, str], MethodInfo] = {}  # (task, name) -> method


def register_method(
    name: str,
    *,
    families: set[str],
    kind: str,
    cite: str,
    default_lr: float,
    options: type[BaseModel] = NoOptions,
    peft_owned: bool = False,
    url: str = "",
    knob: str | None = None,
    knob_values: Callable[[Backbone, Any], list[int]] | None = None,
    merge: Callable[[nn.Module], dict[str, Any]] | None = None,
    task: str = "classification",
) -> Callable:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} for method {name}")
    unknown = set(families) - set(TASK_FAMILIES[task])
    if unknown:
        raise ValueError(f"unknown families {unknown} for method {name}")
    if knob is not None and knob not in options.model_fields:
        raise ValueError(f"size knob {knob!r} of method {name} is not one of its options")

    def decorator(fn: Callable) -> Callable:
        if (task, name) in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice for task {task!r}")
        _REGISTRY[(task, name)] = MethodInfo(
            name, fn, options, frozenset(families), kind, cite, default_lr, peft_owned, url, knob, knob_values, merge, task
        )
        return fn

    return decorator


def list_methods(task: str | None = None) -> list[MethodInfo]:
    """Registered methods of `task` (every task when None), in registration order."""
    _load_builtin_methods()
    return [info for (t, _), info in _REGISTRY.items() if task is None or t == task]


def get_method(name: str, task: str = "classification") -> MethodInfo:
    _load_builtin_methods()
    if (task, name) not in _REGISTRY:
        available = ", ".join(sorted(n for t, n in _REGISTRY if t == task))
        where, listing = ("", "`medpeft methods`") if task == "classification" else (f" for task {task}", f"`medpeft methods --task {task}`")
        raise UserError(f"unknown method {name!r}{where}; available: {available} ({listing} describes them)")
    return _REGISTRY[(task, name)]


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
        supported = ", ".join(f for f in TASK_FAMILIES[info.task] if f in info.families)
        raise UserError(
            f"method {info.name!r} does not support backbone {backbone_name!r} (detected family {family!r}); "
            f"it supports: {supported}. `medpeft methods --matrix` shows what applies to each family"
        )


def capability_matrix() -> list[dict[str, Any]]:
    """Method x backbone family, read from the registry (for `medpeft methods --matrix` and the site)."""
    return [
        {
            "method": info.name,
            "kind": info.kind,
            "families": {family: family in info.families for family in FAMILIES},
            "size_knob": info.knob,
            "mergeable": info.merge is not None,
            "peft": info.peft_owned,
            "cite": info.cite,
        }
        for info in list_methods("classification")
    ]


def _load_builtin_methods() -> None:
    # Importing the family modules runs their @register_method decorators; the import order is the
    # listing order: baselines, the study's methods, then the ones beyond it.
    import importlib

    for module in ("baselines", "selective", "ssf", "tsa", "lora", "adapters", "peft_tuners", "vpt", "fact"):
        importlib.import_module(f"medpeft_cli.methods.{module}")
    from medpeft_cli.t2i import methods as _t2i_methods  # noqa: F401  (task "t2i")
