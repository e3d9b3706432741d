"""LoRA and DoRA through Hugging Face peft (saved in peft's adapter format)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from medpeft_cli.methods.peft_common import linear_targets, peft_merged_state, wrap
from medpeft_cli.methods.registry import register_method


class LoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="rank r of the update B·A")
    alpha: float = Field(8.0, gt=0, description="scaling numerator: the update is multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    # timm ViTs fuse q, k and v into one `qkv` Linear; LoRA on it adapts all three projections with one
    # shared A. `[q, v]` splits the fused layer and adapts q and v only (the study's and Hu et al.'s setting).
    targets: list[str] = Field(default_factory=lambda: ["qkv"], min_length=1, description="names (suffixes) of the Linear modules to adapt; q/k/v split a fused qkv")


def _lora(backbone, options: LoRAOptions, use_dora: bool) -> nn.Module:
    from peft import LoraConfig

    targets = linear_targets(backbone, options.targets, "DoRA" if use_dora else "LoRA")
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=targets, use_dora=use_dora)
    return wrap(backbone, config)


@register_method(
    "lora",
    families={"vit", "hvit"},
    kind="reparameterised",
    cite="Hu et al.: LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022",
    url="https://arxiv.org/abs/2106.09685",
    default_lr=1e-3,
    options=LoRAOptions,
    peft_owned=True,
    knob="rank",
    merge=peft_merged_state,
)
def lora(backbone, options: LoRAOptions) -> nn.Module:
    """LoRA: a trainable low-rank update W + (alpha/r)·B·A beside frozen Linear weights (B = 0 at init).

    Hu et al.: LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022 (https://arxiv.org/abs/2106.09685)
    """
    return _lora(backbone, options, use_dora=False)


@register_method(
    "dora",
    families={"vit", "hvit"},
    kind="reparameterised",
    cite="Liu et al.: DoRA: Weight-Decomposed Low-Rank Adaptation, ICML 2024",
    url="https://arxiv.org/abs/2402.09353",
    default_lr=1e-3,
    options=LoRAOptions,
    peft_owned=True,
    knob="rank",
    merge=peft_merged_state,
)
def dora(backbone, options: LoRAOptions) -> nn.Module:
    """DoRA: the weight split into magnitude and direction; the magnitude vector and a LoRA update of the direction train.

    Liu et al.: DoRA: Weight-Decomposed Low-Rank Adaptation, ICML 2024 (https://arxiv.org/abs/2402.09353)
    """
    return _lora(backbone, options, use_dora=True)
