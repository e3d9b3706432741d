"""The method registry: `@register_method(...)` entries, keyed by (task, name).

A method is a function `(backbone, options) -> nn.Module` that returns the model with exactly the
intended parameters trainable, registered together with every fact about it (task, families, kind, size
knob, citation, options model, speed-only options, default learning rate, save format, merge). Those
facts are written once, here in the decorator beside the implementation; everything that lists methods
(the CLI, the site, the docs tables, the tests) reads them.

This is the bottom layer of the methods package: it imports neither torch nor any method module. Method
modules import torch only inside their functions, so reading the registry costs pydantic, not torch.
Finding the method modules is methods/catalog.py's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from medpeft_cli.errors import UserError
from medpeft_cli.numbers import bool_message, bool_number_fields

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
# Methods are registered per task: the classification families above, and the Stable Diffusion U-Net of
# the text-to-image track, whose only family is "unet". A task's methods live in the package
# medpeft_cli/methods/<task>/ (methods/catalog.py imports every module there).
TASK_FAMILIES = {"classification": FAMILIES, "t2i": ("unet",)}
TASKS = tuple(TASK_FAMILIES)
KINDS = ("baseline", "selective", "reparameterised", "additive")


class NoOptions(BaseModel):
    """A method without options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    apply: Callable[[Backbone, Any], nn.Module]
    options: type[BaseModel]
    families: frozenset[str]
    kind: str  # one of KINDS
    cite: str  # the full citation (authors: title, venue year); written nowhere else
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
    # Options that change only how the same function is computed (equal within float rounding): left out
    # of the run key (config.py), recorded on the result row.
    speed_only: tuple[str, ...] = ()
    in_study: bool = False  # one of the methods of the reference study (Dutt et al., MIDL 2024)
    identity_at_init: bool = True  # the adapted model computes exactly the backbone's function before training

    @property
    def summary(self) -> str:
        """What trains, in one line: the first line of the method function's docstring."""
        doc = (self.apply.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def mergeable(self) -> bool:
        return self.merge is not None


_REGISTRY: dict[tuple[str, str], MethodInfo] = {}  # (task, name) -> method, in registration order


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
    speed_only: tuple[str, ...] = (),
    in_study: bool = False,
    identity_at_init: bool = True,
) -> Callable:
    if task not in TASK_FAMILIES:
        raise ValueError(f"unknown task {task!r} for method {name}")
    unknown = set(families) - set(TASK_FAMILIES[task])
    if unknown:
        raise ValueError(f"unknown families {unknown} for method {name}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} for method {name}; one of {KINDS}")
    for option in (knob, *speed_only):
        if option is not None and option not in options.model_fields:
            raise ValueError(f"{option!r} of method {name} is not one of its options")

    def decorator(fn: Callable) -> Callable:
        if (task, name) in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice for task {task!r}")
        _REGISTRY[(task, name)] = MethodInfo(
            name, fn, options, frozenset(families), kind, cite, default_lr, peft_owned, url, knob, knob_values, merge, task,
            tuple(speed_only), in_study, identity_at_init,
        )  # fmt: skip
        return fn

    return decorator


def registered() -> list[MethodInfo]:
    """Every method registered so far, in registration order (methods/catalog.py loads them all first)."""
    return list(_REGISTRY.values())


def validate_options(info: MethodInfo, options: dict[str, Any]) -> BaseModel:
    """The method's options model filled with defaults; a bad option is one clear line."""
    known = ", ".join(info.options.model_fields) or "none"
    flags = bool_number_fields(info.options, options)
    if flags:  # pydantic would take True as 1 (rank: true -> rank 1)
        raise UserError(f"invalid options for method {info.name!r}: {flags[0]}: {bool_message(options[flags[0]])} (its options: {known})")
    try:
        return info.options.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {'unknown option' if e['type'] == 'extra_forbidden' else e['msg']}" for e in exc.errors()
        )
        raise UserError(f"invalid options for method {info.name!r}: {problems} (its options: {known})") from None


def check_supported(info: MethodInfo, family: str, backbone_name: str) -> None:
    if family not in info.families:
        supported = ", ".join(f for f in TASK_FAMILIES[info.task] if f in info.families)
        raise UserError(
            f"method {info.name!r} does not support backbone {backbone_name!r} (detected family {family!r}); "
            f"it supports: {supported}. `medpeft methods --matrix` shows what applies to each family"
        )
