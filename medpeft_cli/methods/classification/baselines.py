"""Baselines of every PEFT study: full fine-tuning and linear probing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medpeft_cli.methods.common import freeze, plain_state, train_head
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    from torch import nn

ALL = {"vit", "hvit", "cnn", "other"}


@register_method("full", families=ALL, kind="baseline", cite="full fine-tuning (baseline)", default_lr=1e-4, merge=plain_state, in_study=True)
def full(backbone, options) -> nn.Module:
    """Full fine-tuning: every parameter of the backbone and the head trains."""
    for param in backbone.model.parameters():
        param.requires_grad_(True)
    return backbone.model


@register_method("linear", families=ALL, kind="baseline", cite="linear probing (baseline)", default_lr=1e-3, merge=plain_state, in_study=True)
def linear(backbone, options) -> nn.Module:
    """Linear probing: the backbone is frozen, only the classification head trains."""
    freeze(backbone.model)
    train_head(backbone.model, backbone.head_name)
    return backbone.model
