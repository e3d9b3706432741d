"""Bottleneck adapters for transformer blocks: AdaptFormer (parallel to the MLP) and Houlsby adapters
(sequential, after attention and after the MLP). Both are zero at init (the up projection starts at
0), so the adapted model equals the backbone; both add a non-linearity, so they cannot be merged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import freeze, norm_layers, train_head, transformer_blocks
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn


def _width(module: nn.Module) -> int:
    """Input width of a transformer block's attention/MLP (the first Linear's input features)."""
    from torch import nn

    linear = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        raise UserError(f"bottleneck adapters need Linear layers in each block's attention and MLP; {type(module).__name__} has none (a convolutional block)")
    return linear.in_features


def _parallel(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output + module.adaptmlp(args[0])


def _sequential(module: nn.Module, args, output):
    if isinstance(output, tuple):  # transformers attention modules return (output, attention weights)
        return (output[0] + module.adapter(output[0]), *output[1:])
    return output + module.adapter(output)


def _mlp(block, method: str) -> nn.Module:
    """The block's feed-forward network as one module (the adapter's hook point)."""
    if block.mlp is None:
        raise UserError(
            f"{method} needs each transformer block's feed-forward network as one module (timm/DINOv2 `mlp`); "
            f"block {block.name} splits it over several modules ({', '.join(n for n, _ in block.mlp_linears)})"
        )
    return block.mlp


class AdaptFormerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bottleneck: int = Field(64, ge=1, description="hidden width of the AdaptMLP (the paper uses 64 for ViT-B)")
    scale: float = Field(0.1, gt=0, description="s, the factor on the AdaptMLP's output (the paper's 0.1)")
    dropout: float = Field(0.0, ge=0, lt=1)


@register_method(
    "adaptformer",
    families={"vit", "hvit"},
    kind="additive",
    cite="Chen et al.: AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition, NeurIPS 2022",
    url="https://arxiv.org/abs/2205.13535",
    default_lr=1e-3,
    options=AdaptFormerOptions,
    knob="bottleneck",
    in_study=True,
)
def adaptformer(backbone, options: AdaptFormerOptions) -> nn.Module:
    """AdaptFormer: an AdaptMLP s·ReLU(LN(x)·W_down)·W_up parallel to each block's MLP (LN = the block's frozen pre-MLP norm; W_up = 0 at init)."""
    from torch import nn

    from medpeft_cli.methods.layers.bottleneck import Bottleneck

    model = backbone.model
    freeze(model)
    for block in transformer_blocks(model):
        mlp = _mlp(block, "adaptformer")
        like = next(mlp.parameters())
        mlp.add_module("adaptmlp", Bottleneck(_width(mlp), options.bottleneck, nn.ReLU(), options.scale, options.dropout, like))
        mlp.register_forward_hook(_parallel)
    train_head(model, backbone.head_name)
    return model


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bottleneck: int = Field(8, ge=1, description="adapter size m (the paper sweeps 8-256)")
    train_norms: bool = Field(True, description="also train the layer-norm parameters (as Houlsby et al. do)")


@register_method(
    "adapter",
    families={"vit", "hvit"},
    kind="additive",
    cite="Houlsby et al.: Parameter-Efficient Transfer Learning for NLP, ICML 2019",
    url="https://arxiv.org/abs/1902.00751",
    default_lr=1e-3,
    options=AdapterOptions,
    knob="bottleneck",
)
def adapter(backbone, options: AdapterOptions) -> nn.Module:
    """Houlsby adapter: a residual bottleneck h + up(GELU(down(h))) after each block's attention and after its MLP (up = 0 at init); the layer norms train too."""
    from torch import nn

    from medpeft_cli.methods.layers.bottleneck import Bottleneck

    model = backbone.model
    freeze(model)
    for block in transformer_blocks(model):
        for part in (block.attn, _mlp(block, "adapter")):
            like = next(part.parameters())
            part.add_module("adapter", Bottleneck(_width(part), options.bottleneck, nn.GELU(), 1.0, 0.0, like))
            part.register_forward_hook(_sequential)
    if options.train_norms:
        for _, layer in norm_layers(model, exclude=backbone.head_name):
            for param in layer.parameters(recurse=False):
                param.requires_grad_(True)
    train_head(model, backbone.head_name)
    return model
