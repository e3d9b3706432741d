"""Methods of the text-to-image track: which parameters of the Stable Diffusion U-Net train.

Each method takes the U-Net (a diffusers `UNet2DConditionModel`) and its options and returns it with
exactly the intended parameters trainable. The text encoder and the VAE are never touched: the study
fine-tuned the U-Net only. Registered with `task="t2i"`, so `medpeft methods --task t2i` lists them
and the names may repeat classification methods (`full`, `lora`) without clashing.

SV-Diff and DiffFit add parameters of their own (spectral shifts, scale factors; methods/layers/) built
so that the U-Net computes exactly what it computed before at initialisation (tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import freeze
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    from torch import nn

UNET = {"unet"}
# diffusers' own LoRA recipe for Stable Diffusion (examples/text_to_image/train_text_to_image_lora.py).
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def is_norm(module: nn.Module) -> bool:
    """GroupNorm / LayerNorm and diffusers' own normalisation layers (AdaGroupNorm, RMSNorm, ...)."""
    return "norm" in type(module).__name__.lower() and any(True for _ in module.parameters(recurse=False))


def attention_modules(unet: nn.Module) -> list[nn.Module]:
    """Every diffusers `Attention` of the U-Net: self- (attn1) and cross-attention (attn2) of each transformer block."""
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention)]


def _train_biases(unet: nn.Module) -> None:
    for name, param in unet.named_parameters():
        if name.endswith("bias"):
            param.requires_grad_(True)


def _train_norms(unet: nn.Module) -> None:
    for module in unet.modules():
        if is_norm(module):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)


def _train_attention(unet: nn.Module) -> None:
    for module in attention_modules(unet):
        module.requires_grad_(True)


@register_method("full", task="t2i", families=UNET, kind="baseline", cite="baseline (full fine-tuning of the U-Net)", default_lr=1e-5, in_study=True)
def full(unet: nn.Module, opts) -> nn.Module:
    """Every U-Net parameter trains (text encoder and VAE stay frozen)."""
    unet.requires_grad_(True)
    return unet


@register_method(
    "attention", task="t2i", families=UNET, kind="selective", default_lr=1e-5, in_study=True,
    cite="attention fine-tuning of the U-Net (Xie et al., ICCV 2023, DiffFit baselines; Dutt et al., MIDL 2024)",
)
def attention(unet: nn.Module, opts) -> nn.Module:
    """The attention layers train: q/k/v/out projections of every self- and cross-attention."""
    freeze(unet)
    _train_attention(unet)
    return unet


@register_method(
    "bias", task="t2i", families=UNET, kind="selective", default_lr=1e-4, in_study=True,
    cite="Ben Zaken et al., ACL 2022 (BitFit)", url="https://arxiv.org/abs/2106.10199",
)
def bias(unet: nn.Module, opts) -> nn.Module:
    """All bias terms of the U-Net train (BitFit)."""
    freeze(unet)
    _train_biases(unet)
    return unet


@register_method(
    "norm", task="t2i", families=UNET, kind="selective", default_lr=1e-4, in_study=True,
    cite="normalisation-layer tuning (Xie et al., ICCV 2023; Dutt et al., MIDL 2024)",
)
def norm(unet: nn.Module, opts) -> nn.Module:
    """The scale and shift of every normalisation layer (GroupNorm, LayerNorm) train."""
    freeze(unet)
    _train_norms(unet)
    return unet


@register_method(
    "bias-norm-attention", task="t2i", families=UNET, kind="selective", default_lr=1e-5, in_study=True,
    cite="union of BitFit (Ben Zaken et al., ACL 2022), norm and attention tuning (Dutt et al., MIDL 2024)",
)
def bias_norm_attention(unet: nn.Module, opts) -> nn.Module:
    """Bias terms, normalisation layers and attention layers train."""
    freeze(unet)
    _train_biases(unet)
    _train_norms(unet)
    _train_attention(unet)
    return unet


class T2ILoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(4, ge=1, description="LoRA rank r (diffusers' default for SD: 4)")
    alpha: float | None = Field(None, gt=0, description="scaling alpha (None: equal to the rank, scale 1)")
    targets: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1, description="attention projections that get a LoRA update")
    dropout: float = Field(0.0, ge=0, lt=1)


@register_method(
    "lora", task="t2i", families=UNET, kind="reparameterised", default_lr=1e-4, options=T2ILoRAOptions, peft_owned=True, in_study=True,
    cite="Hu et al., ICLR 2022 (LoRA), via HF peft as in diffusers' SD LoRA training", url="https://arxiv.org/abs/2106.09685", knob="rank",
)
def lora(unet: nn.Module, opts: T2ILoRAOptions) -> nn.Module:
    """Rank-r updates of the attention projections (to_q/to_k/to_v/to_out.0) via HF peft; B = 0 at init."""
    from peft import LoraConfig

    freeze(unet)
    config = LoraConfig(
        r=opts.rank, lora_alpha=opts.alpha or opts.rank, lora_dropout=opts.dropout,
        init_lora_weights="gaussian", target_modules=list(opts.targets),
    )
    try:
        unet.add_adapter(config)  # diffusers' PeftAdapterMixin: peft layers injected into the U-Net itself
    except ValueError as exc:
        raise UserError(f"LoRA targets {opts.targets} do not match U-Net modules ({str(exc).splitlines()[0][:160]}); use names like {LORA_TARGETS}") from None
    return unet


@register_method(
    "svdiff", task="t2i", families=UNET, kind="reparameterised", default_lr=1e-3, in_study=True,
    cite="Han et al., ICCV 2023 (SVDiff: compact parameter space for diffusion fine-tuning)", url="https://arxiv.org/abs/2303.11305",
)
def svdiff(unet: nn.Module, opts) -> nn.Module:
    """Spectral shifts: W = U diag(ReLU(s + d)) V^T for every linear/conv weight, only d trains (d = 0 at init)."""
    from medpeft_cli.methods.layers.spectral import add_spectral_shifts

    freeze(unet)
    add_spectral_shifts(unet)
    return unet


@register_method(
    "difffit", task="t2i", families=UNET, kind="additive", default_lr=1e-3, in_study=True,
    cite="Xie et al., ICCV 2023 (DiffFit: simple parameter-efficient fine-tuning of diffusion models)", url="https://arxiv.org/abs/2304.06648",
)
def difffit(unet: nn.Module, opts) -> nn.Module:
    """Bias terms, normalisation layers and new per-channel scale factors (gamma = 1 at init) on every residual branch."""
    from medpeft_cli.methods.layers.difffit import add_scale_factors

    freeze(unet)
    _train_biases(unet)
    _train_norms(unet)
    add_scale_factors(unet)
    return unet
