"""Helpers shared by methods: freezing and trainable-parameter bookkeeping."""

from __future__ import annotations

from torch import nn


def freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def train_head(model: nn.Module, head_name: str) -> None:
    """Every method trains the new classification head (the dataset's classes are new)."""
    for param in model.get_submodule(head_name).parameters():
        param.requires_grad_(True)


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]
