"""Selective methods: train an existing subset of the backbone's parameters."""

from __future__ import annotations

from torch import nn

from medpeft_cli.methods.common import freeze, train_head
from medpeft_cli.methods.registry import register_method


@register_method(
    "bitfit",
    families={"vit", "cnn"},
    kind="selective",
    cite="Ben Zaken, Ravfogel, Goldberg: BitFit, ACL 2022",
    default_lr=1e-3,
)
def bitfit(backbone, options) -> nn.Module:
    """BitFit: only the bias terms (of linear, convolution and normalisation layers) and the head train."""
    model = backbone.model
    freeze(model)
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias":
            param.requires_grad_(True)
    train_head(model, backbone.head_name)
    return model
