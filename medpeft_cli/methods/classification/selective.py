"""Selective methods: train an existing subset of the backbone's parameters (nothing is added).

Their trained model already is a plain timm model, so "merging" is its state dict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import freeze, norm_layers, plain_state, train_head, transformer_blocks
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    from torch import nn


def _is_bias(name: str) -> bool:
    # `.bias` of Linear/Conv/norm layers, and EVA's separate `q_bias`/`v_bias` of the fused qkv projection.
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


def _train_biases(backbone) -> nn.Module:
    model = backbone.model
    freeze(model)
    for name, param in model.named_parameters():
        if _is_bias(name):
            param.requires_grad_(True)
    train_head(model, backbone.head_name)
    return model


@register_method(
    "bitfit",
    families={"vit", "hvit", "cnn"},
    kind="selective",
    cite="Ben Zaken, Ravfogel, Goldberg: BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models, ACL 2022",
    url="https://arxiv.org/abs/2106.10199",
    default_lr=1e-3,
    merge=plain_state,
    in_study=True,
)
def bitfit(backbone, options) -> nn.Module:
    """BitFit: only the bias terms (of linear, convolution and normalisation layers) and the head train."""
    return _train_biases(backbone)


@register_method(
    "bias",
    families={"cnn"},
    kind="selective",
    cite="Cai, Gan, Zhu, Han: TinyTL: Reduce Memory, Not Parameters for Efficient On-Device Learning, NeurIPS 2020",
    url="https://arxiv.org/abs/2007.11622",
    default_lr=1e-3,
    merge=plain_state,
    in_study=True,
)
def bias(backbone, options) -> nn.Module:
    """Bias tuning (TinyTL): the weights are frozen, every bias and the head train (timm CNN convs are bias-free, so these are the normalisation biases)."""
    return _train_biases(backbone)


@register_method(
    "bn",
    families={"cnn"},
    kind="selective",
    cite="Frankle, Schwab, Morcos: Training BatchNorm and Only BatchNorm: On the Expressive Power of Random Features in CNNs, arXiv 2020 (ICLR 2021)",
    url="https://arxiv.org/abs/2003.00152",
    # A few thousand affine parameters need a larger step than the adapters' 1e-3: on the packaged ResNet-20 /
    # BreastMNIST default, 30 epochs at batch 32 reach test macro-F1 .69 at 1e-3 and .75 at 1e-2 (benchmarks/RESULTS.md).
    default_lr=1e-2,
    merge=plain_state,
    in_study=True,
)
def bn(backbone, options) -> nn.Module:
    """BatchNorm tuning: only the affine scale and shift of the normalisation layers and the head train (LayerNorm in ConvNeXt)."""
    model = backbone.model
    freeze(model)
    layers = norm_layers(model, exclude=backbone.head_name)
    if not layers:
        raise UserError(f"{backbone.name} has no normalisation layers with affine parameters; method 'bn' needs BatchNorm/LayerNorm layers")
    for _, layer in layers:
        for param in layer.parameters(recurse=False):
            param.requires_grad_(True)
    train_head(model, backbone.head_name)
    return model


@register_method(
    "attention",
    families={"vit", "hvit"},
    kind="selective",
    cite="Touvron, Cord, El-Nouby, Verbeek, Jégou: Three things everyone should know about Vision Transformers, ECCV 2022",
    url="https://arxiv.org/abs/2203.09795",
    default_lr=1e-4,
    merge=plain_state,
    in_study=True,
)
def attention(backbone, options) -> nn.Module:
    """Attention tuning: every parameter of the attention layers (qkv, projection, relative position tables), the position embedding and the head train."""
    from medpeft_cli.models.tree import position_embeddings

    model = backbone.model
    freeze(model)
    for block in transformer_blocks(model):
        for param in block.attn.parameters():
            param.requires_grad_(True)
    for _, param in position_embeddings(model):  # timm pos_embed, transformers position_embeddings, ...
        param.requires_grad_(True)
    train_head(model, backbone.head_name)
    return model
