"""VPT: visual prompt tuning, shallow and deep.

Learnable prompt tokens are inserted after the class (and register) tokens: VPT-shallow once, before
the first block; VPT-deep replaces them with new ones before every block. They are removed again
after the last block, so pooling and the head see the usual tokens. Prompts change attention from
the first step (VPT is not the identity at init) and add tokens, so they cannot be merged.

Needs a plain ViT with absolute position embeddings: prompts carry no position, which relative
position biases and rotary embeddings (EVA-02) cannot accommodate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import freeze, train_head
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn


class VPTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    length: int = Field(10, ge=1, description="number of prompt tokens (per layer for vpt-deep)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the prompt tokens")


def _before_block(block: nn.Module, args, kwargs):
    return (block.vpt(args[0]), *args[1:]), kwargs


def _after_last_block(block: nn.Module, args, kwargs, output: torch.Tensor) -> torch.Tensor:
    return block.vpt_drop(output)


def _prompt(backbone, options: VPTOptions, deep: bool) -> nn.Module:
    from torch import nn

    from medpeft_cli.methods.layers.prompts import DropPrompts, Prompts

    model = backbone.model
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed"):
        raise UserError(
            f"VPT inserts prompt tokens after the class token of a timm-style ViT (`patch_embed`, `pos_embed`, `blocks`); "
            f"{backbone.name} has no such layout, so where its prompts go is unknown (use lora/ssf/adaptformer)"
        )
    if getattr(model, "rope", None) is not None or not isinstance(getattr(model, "pos_embed", None), nn.Parameter):
        raise UserError(f"VPT needs a ViT with absolute position embeddings; {backbone.name} uses relative/rotary positions, which prompts cannot join (use lora/ssf/adaptformer)")
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise UserError(f"VPT needs a ViT whose blocks form one token sequence (`blocks`); {backbone.name} has none")
    freeze(model)
    width = model.embed_dim
    patch = getattr(model.patch_embed, "patch_size", (16, 16))
    bound = math.sqrt(6.0 / float(3 * patch[0] * patch[1] + width))
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    like = model.pos_embed
    for index, block in enumerate(blocks if deep else blocks[:1]):
        block.add_module("vpt", Prompts(options.length, width, prefix, index == 0, bound, options.dropout, like))
        block.register_forward_pre_hook(_before_block, with_kwargs=True)
    last = blocks[-1]
    last.add_module("vpt_drop", DropPrompts(options.length, prefix))
    last.register_forward_hook(_after_last_block, with_kwargs=True)
    train_head(model, backbone.head_name)
    return model


@register_method(
    "vpt-shallow",
    families={"vit"},
    kind="additive",
    cite="Jia et al.: Visual Prompt Tuning, ECCV 2022 (VPT-shallow)",
    url="https://arxiv.org/abs/2203.12119",
    default_lr=1e-3,
    options=VPTOptions,
    knob="length",
    identity_at_init=False,  # prompts join attention from the first step
)
def vpt_shallow(backbone, options: VPTOptions) -> nn.Module:
    """VPT-shallow: learnable prompt tokens join the token sequence before the first transformer block; backbone frozen."""
    return _prompt(backbone, options, deep=False)


@register_method(
    "vpt-deep",
    families={"vit"},
    kind="additive",
    cite="Jia et al.: Visual Prompt Tuning, ECCV 2022 (VPT-deep)",
    url="https://arxiv.org/abs/2203.12119",
    default_lr=1e-3,
    options=VPTOptions,
    knob="length",
    identity_at_init=False,  # prompts join attention from the first step
)
def vpt_deep(backbone, options: VPTOptions) -> nn.Module:
    """VPT-deep: new learnable prompt tokens at the input of every transformer block; backbone frozen."""
    return _prompt(backbone, options, deep=True)
