"""Counting a method's parameters on any backbone without its weights (torch's `meta` device).

Used by `--param-budget` (to choose a size knob) and by `medpeft methods --count BACKBONE`. Counting
follows the run's own accounting (methods.common.counted_parameters), so the numbers are the ones a
run records.
"""

from __future__ import annotations

import copy
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.methods.catalog import list_methods
from medpeft_cli.methods.common import counted_parameters
from medpeft_cli.methods.registry import TASK_FAMILIES, MethodInfo, validate_options


def meta_backbone(name: str, image_size: int, num_classes: int = 2, head: str | None = None):
    """The backbone with shapes only (no memory, no weights, a second for ViT-B); any source (models/sources.py)."""
    from medpeft_cli.models.backbones import shape_backbone

    return shape_backbone(name, image_size, num_classes, head=head)


def copy_backbone(backbone):
    copied = copy.copy(backbone)
    copied.model = copy.deepcopy(backbone.model)
    return copied


def head_params(backbone) -> int:
    return sum(p.numel() for p in backbone.model.get_submodule(backbone.head_name).parameters())


def parameter_counts(info: MethodInfo, backbone, options: dict[str, Any] | None = None) -> dict[str, int]:
    """Method/head/trainable/total parameters of `info` applied to a copy of `backbone`."""
    model = info.apply(copy_backbone(backbone), validate_options(info, options or {}))
    used = list(counted_parameters(model))
    trainable = sum(p.numel() for _, p in used if p.requires_grad)
    head = head_params(backbone)
    return {"method_params": trainable - head, "head_params": head, "trainable_params": trainable, "total_params": sum(p.numel() for _, p in used)}


def method_params(info: MethodInfo, backbone, options: dict[str, Any]) -> int:
    return parameter_counts(info, backbone, options)["method_params"]


def backbone_table(backbone, every_method: bool = False) -> list[dict[str, Any]]:
    """One row per method that supports the (shape-only) backbone: its default-size counts and % of the backbone.

    With `every_method`, methods of other families get a row too ({"method", "error", "families"}). A method
    that supports the family but cannot find what it needs in this model has an "error" row either way.
    """
    base = backbone.num_params - head_params(backbone)
    rows = []
    for info in list_methods("classification"):
        if backbone.family not in info.families:
            if every_method:
                supported = ", ".join(f for f in TASK_FAMILIES["classification"] if f in info.families)
                rows.append({"method": info.name, "error": f"for {supported} backbones (this one is {backbone.family})", "families": supported})
            continue
        try:
            counts = parameter_counts(info, backbone)
        except UserError as exc:  # e.g. VPT on a backbone without absolute position embeddings
            rows.append({"method": info.name, "error": str(exc)})
            continue
        rows.append({"method": info.name, **counts, "backbone_params": base, "method_pct": 100.0 * counts["method_params"] / base})
    return rows
