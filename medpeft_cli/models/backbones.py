"""Create a classification backbone from any source and say exactly what it holds.

The backbone string names a builtin (the CIFAR ResNets), a timm model, a transformers vision model or a
custom factory (models/sources.py); each kind is built by its own module (builtin_source, timm_source,
transformers_source, custom_source). Whatever the source, the rest of medpeft sees one shape:
forward(images) -> logits, with a named head for this dataset's classes. `weights` is 'random' (seeded),
'pretrained' (the source's own weights: the packaged/published file of a builtin, timm's pretrained tag,
the transformers checkpoint) or, any other value, the path of a weights file (models/weights.py).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.models.builtin_models import BUILTINS
from medpeft_cli.models.family import detect_family
from medpeft_cli.models.input_size import check_input_size
from medpeft_cli.models.sources import BUILTIN, CUSTOM, TIMM, TRANSFORMERS, parse_backbone

__all__ = ["Backbone", "create_backbone", "describe_source", "detect_family", "shape_backbone"]

# the module that builds each kind of source: build(...) -> (model, HeadInfo, weights source); shape(...) -> (model, HeadInfo)
SOURCE_MODULES = {
    BUILTIN: "medpeft_cli.models.builtin_source",
    TIMM: "medpeft_cli.models.timm_source",
    TRANSFORMERS: "medpeft_cli.models.transformers_source",
    CUSTOM: "medpeft_cli.models.custom_source",
}


@dataclass
class Backbone:
    model: nn.Module
    name: str
    family: str  # "vit", "hvit", "cnn" or "other": decides which methods apply and their defaults
    head_name: str  # dotted module name of the classifier, trained by every method
    weights_source: str  # exactly what was loaded: "random-init (seed N)", "hf-hub:<id>", "file:<path> sha256:<hex>", ...
    num_params: int
    checksum: str  # sha256 of the initial state dict, checked again when a saved run is re-scored
    source_kind: str = TIMM  # builtin, timm, transformers or custom
    provenance: dict = field(default_factory=dict)  # extra row fields of the source (e.g. transformers_version)
    head_summary: str = ""  # e.g. "linear (64 -> 10, replaced by 64 -> 2)"


def _state_checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _module_of(kind: str):
    return importlib.import_module(SOURCE_MODULES[kind])


def create_backbone(
    name: str, weights: str, num_classes: int, image_size: int, seed: int, weights_prefix: str | None = None,
    *, weights_key: str | None = None, head: str | None = None,
) -> Backbone:  # fmt: skip
    """Build the backbone with a fresh `num_classes` head; random init is seeded by `seed`.

    `weights_prefix`: take only the weights file's keys under this prefix (without it). `weights_key`: the
    dotted key path of the state dict in the file (e.g. an EMA copy). `head`: the name of the classifier
    Linear to replace (default: the Linear whose output is the model's output, models/heads.py).
    """
    from_file = weights not in ("random", "pretrained")
    for option, value in (("weights_prefix", weights_prefix), ("weights_key", weights_key)):
        if value and not from_file:
            raise UserError(f"{option} {value!r} applies to a weights file; pass --weights FILE or drop --{option.replace('_', '-')}")
    source = parse_backbone(name)
    torch.manual_seed(seed)
    module = _module_of(source.kind)
    model, info, described = module.build(source, weights, num_classes, image_size, seed, weights_prefix, key=weights_key, head=head)
    extra = module.provenance() if hasattr(module, "provenance") else {}
    model.eval()
    family = detect_family(model)
    check_input_size(model, family, image_size, name)
    return Backbone(
        model=model,
        name=name,
        family=family,
        head_name=info.name,
        weights_source=described,
        num_params=sum(p.numel() for p in model.parameters()),
        checksum=_state_checksum(model),
        source_kind=source.kind,
        provenance=extra,
        head_summary=info.summary(),
    )


def shape_backbone(name: str, image_size: int, num_classes: int = 2, head: str | None = None) -> Backbone:
    """The backbone with shapes only (torch's meta device: no memory, no weights, a second for ViT-B).

    Enough to detect its family and count parameters; hub models still need their config (cache or hub).
    """
    source = parse_backbone(name)
    module = _module_of(source.kind)
    if source.kind == CUSTOM:  # builds on the meta device itself, with a fallback for factories that cannot
        model, info = module.shape(source, num_classes, image_size, head=head)
    else:
        with torch.device("meta"):
            model, info = module.shape(source, num_classes, image_size, head=head)
    count = sum(p.numel() for p in model.parameters())
    family = detect_family(model)
    check_input_size(model, family, image_size, name)
    return Backbone(model, name, family, info.name, "meta", count, "", source.kind, head_summary=info.summary())


def describe_source(name: str) -> str:
    """A few words on what kind of source `name` is, for listings."""
    source = parse_backbone(name)
    if source.kind == BUILTIN:
        return f"medpeft builtin ({BUILTINS[source.target].summary})"
    return {TIMM: "timm model", TRANSFORMERS: "transformers model", CUSTOM: "custom factory"}[source.kind] + (
        f" ({Path(source.target).name if source.local else source.target})" if source.kind != TIMM else ""
    )
