"""LoRA and DoRA through Hugging Face peft (saved in peft's adapter format)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from medpeft_cli.methods.peft_common import linear_targets, peft_merged_state, wrap
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    from torch import nn


class LoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="rank r of the update B·A")
    alpha: float = Field(8.0, gt=0, description="scaling numerator: the update is multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    # timm ViTs fuse q, k and v into one `qkv` Linear; LoRA on it adapts all three projections with one
    # shared A. `[q, v]` splits the fused layer and adapts q and v only (the study's and Hu et al.'s setting).
    targets: list[str] = Field(default_factory=lambda: ["qkv"], min_length=1, description="names (suffixes) of the Linear modules to adapt; q/k/v split a fused qkv")


class LoRAImplOptions(LoRAOptions):
    """LoRA's options plus how its layers compute (speed only: `speed_only` keeps it out of the run key)."""

    impl: Literal["auto", "fused", "peft"] = Field(
        "auto",
        description="fused: one matmul with W + s·B·A per step and rank-r gradients (methods/fast_lora.py); "
        "peft: peft's own layer; auto: fused unless dropout > 0. Same function within float rounding",
    )

    @field_validator("impl")
    @classmethod
    def _fused_needs_no_dropout(cls, impl: str, info: ValidationInfo) -> str:
        if impl == "fused" and info.data.get("dropout", 0) > 0:
            raise PydanticCustomError("fused_dropout", "'fused' folds the update into one matmul, which dropout on the LoRA branch rules out; use impl=peft (or auto) with dropout > 0")
        return impl

    @model_validator(mode="after")
    def _resolve_auto(self) -> LoRAImplOptions:
        # resolved here so the stored spec and result row name the layer that actually computed the run
        if self.impl == "auto":
            self.impl = "fused" if self.dropout == 0 else "peft"
        return self


def _lora(backbone, options: LoRAOptions, use_dora: bool, fused: bool = False) -> nn.Module:
    from peft import LoraConfig

    targets = linear_targets(backbone, options.targets, "DoRA" if use_dora else "LoRA")
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=targets, use_dora=use_dora)
    if fused:
        from medpeft_cli.methods.fast_lora import use_fused_layers

        use_fused_layers(config)
    return wrap(backbone, config)


@register_method(
    "lora",
    families={"vit", "hvit"},
    kind="reparameterised",
    cite="Hu et al.: LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022",
    url="https://arxiv.org/abs/2106.09685",
    default_lr=1e-3,
    options=LoRAImplOptions,
    peft_owned=True,
    knob="rank",
    merge=peft_merged_state,
    speed_only=("impl",),
    in_study=True,
)
def lora(backbone, options: LoRAImplOptions) -> nn.Module:
    """LoRA: a trainable low-rank update W + (alpha/r)·B·A beside frozen Linear weights (B = 0 at init)."""
    return _lora(backbone, options, use_dora=False, fused=options.impl == "fused")


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
    """DoRA: the weight split into magnitude and direction; the magnitude vector and a LoRA update of the direction train."""
    return _lora(backbone, options, use_dora=True)
