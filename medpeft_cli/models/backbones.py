"""Create a classification backbone from any source and say exactly what it holds.

The backbone string names a timm model, a transformers vision model or a custom factory
(models/sources.py); each kind is built by its own module (timm_source, transformers_source,
custom_source). Whatever the source, the rest of medpeft sees one shape: forward(images) -> logits, with a
named head for this dataset's classes. `weights` is 'random' (seeded), 'pretrained' (the source's own
weights: timm's pretrained tag, the transformers checkpoint) or a local weights file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.models.family import detect_family
from medpeft_cli.models.sources import CUSTOM, TIMM, TRANSFORMERS, parse_backbone
from medpeft_cli.models.timm_source import head_name as _head_name
from medpeft_cli.models.weights import WEIGHT_SUFFIXES, is_weights_file, load_state_dict_file

__all__ = ["Backbone", "create_backbone", "shape_backbone", "detect_family", "load_state_dict_file", "WEIGHT_SUFFIXES", "_head_name"]


@dataclass
class Backbone:
    model: nn.Module
    name: str
    family: str  # "vit", "hvit", "cnn" or "other": decides which methods apply and their defaults
    head_name: str  # dotted module name of the classifier, trained by every method
    weights_source: str  # exactly what was loaded: "random-init (seed N)", "hf-hub:<id>", "file:<path> sha256:<hex>", ...
    num_params: int
    checksum: str  # sha256 of the initial state dict, checked again when a saved run is re-scored
    source_kind: str = TIMM  # timm, transformers or custom
    provenance: dict = field(default_factory=dict)  # extra row fields of the source (e.g. transformers_version)


def _state_checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _module_of(kind: str):
    from medpeft_cli.models import custom_source, timm_source, transformers_source

    return {TIMM: timm_source, TRANSFORMERS: transformers_source, CUSTOM: custom_source}[kind]


def create_backbone(name: str, weights: str, num_classes: int, image_size: int, seed: int, weights_prefix: str | None = None) -> Backbone:
    """Build the backbone with a fresh `num_classes` head; random init is seeded by `seed`.

    `weights_prefix`: take only the weights file's keys under this prefix (without it).
    """
    if weights not in ("random", "pretrained") and not is_weights_file(weights):
        raise UserError(f"weights {weights!r} not understood; use 'random', 'pretrained' or a path to a {'/'.join(WEIGHT_SUFFIXES)} file")
    if weights_prefix and not is_weights_file(weights):
        raise UserError(f"weights_prefix {weights_prefix!r} applies to a local weights file; pass --weights FILE or drop --weights-prefix")
    source = parse_backbone(name)
    torch.manual_seed(seed)
    module = _module_of(source.kind)
    model, head, described = module.build(source, weights, num_classes, image_size, seed, weights_prefix)
    extra = module.provenance() if hasattr(module, "provenance") else {}
    model.eval()
    return Backbone(
        model=model,
        name=name,
        family=detect_family(model),
        head_name=head,
        weights_source=described,
        num_params=sum(p.numel() for p in model.parameters()),
        checksum=_state_checksum(model),
        source_kind=source.kind,
        provenance=extra,
    )


def shape_backbone(name: str, image_size: int, num_classes: int = 2) -> Backbone:
    """The backbone with shapes only (torch's meta device: no memory, no weights, a second for ViT-B).

    Enough to detect its family and count parameters; hub models still need their config (cache or hub).
    """
    source = parse_backbone(name)
    module = _module_of(source.kind)
    if source.kind == CUSTOM:  # builds on the meta device itself, with a fallback for factories that cannot
        model, head = module.shape(source, num_classes, image_size)
    else:
        with torch.device("meta"):
            model, head = module.shape(source, num_classes, image_size)
    return Backbone(model, name, detect_family(model), head, "meta", sum(p.numel() for p in model.parameters()), "", source.kind)


def describe_source(name: str) -> str:
    """A few words on what kind of source `name` is, for listings."""
    source = parse_backbone(name)
    return {TIMM: "timm model", TRANSFORMERS: "transformers model", CUSTOM: "custom factory"}[source.kind] + (
        f" ({Path(source.target).name if source.local else source.target})" if source.kind != TIMM else ""
    )
