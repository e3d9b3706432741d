"""LoRA through Hugging Face peft (saved in peft's adapter format)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.methods.registry import register_method


class LoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="rank r of the update B·A")
    alpha: float = Field(8.0, gt=0, description="scaling numerator: the update is multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    # timm ViTs fuse q, k and v into one `qkv` Linear; LoRA on it adapts all three projections.
    targets: list[str] = Field(default_factory=lambda: ["qkv"], min_length=1, description="names (suffixes) of the Linear modules to adapt")


@register_method(
    "lora",
    families={"vit"},
    kind="reparameterised",
    cite="Hu et al.: LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022",
    default_lr=1e-3,
    options=LoRAOptions,
    peft_owned=True,
)
def lora(backbone, options: LoRAOptions) -> nn.Module:
    """LoRA: a trainable low-rank update W + (alpha/r)·B·A beside frozen Linear weights (B = 0 at init)."""
    from peft import LoraConfig, get_peft_model

    model = backbone.model
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]
    for target in options.targets:
        if not any(name == target or name.endswith("." + target) for name in linear_names):
            suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
            raise UserError(f"LoRA target {target!r} matches no Linear module of {backbone.name}; Linear module names include: {', '.join(suffixes)}")
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.targets),
        modules_to_save=[backbone.head_name],
    )
    return get_peft_model(model, config)
