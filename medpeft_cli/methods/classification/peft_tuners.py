"""Further methods implemented by Hugging Face peft: LoHa, LoKr, (IA)^3, OFT, BOFT, VeRA, LayerNorm tuning.

Each is peft's own layer, saved in peft's adapter format (loadable with `PeftModel.from_pretrained`).
They target Linear layers of transformer blocks (VeRA supports only Linear layers in peft).
"""

from __future__ import annotations

import logging
import math
import re
import warnings

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import norm_layers
from medpeft_cli.methods.peft_common import in_features, linear_targets, peft_merged_state, target_map, wrap
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    from torch import nn

TRANSFORMERS = {"vit", "hvit"}


def _targets_field(default: list[str]):
    return Field(default_factory=lambda: list(default), min_length=1, description="names (suffixes) of the Linear modules to adapt; q/k/v split a fused qkv; without such names qkv/q/k/v/proj/fc1/fc2 name their role in each block")


class LycorisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="rank of the factors")
    alpha: float = Field(8.0, gt=0, description="scaling numerator: the update is multiplied by alpha / rank")
    targets: list[str] = _targets_field(["qkv"])


@register_method(
    "loha",
    families=TRANSFORMERS,
    kind="reparameterised",
    cite="Hyeon-Woo, Ye-Bin, Oh: FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning, ICLR 2022 (LoHa as in LyCORIS)",
    url="https://arxiv.org/abs/2108.06098",
    default_lr=1e-3,
    options=LycorisOptions,
    peft_owned=True,
    knob="rank",
    merge=peft_merged_state,
)
def loha(backbone, options: LycorisOptions) -> nn.Module:
    """LoHa: the weight update is the Hadamard product of two rank-r products, (B1·A1) ⊙ (B2·A2); zero at init."""
    from peft import LoHaConfig

    targets = linear_targets(backbone, options.targets, "LoHa")
    return wrap(backbone, LoHaConfig(r=options.rank, alpha=options.alpha, target_modules=targets))


@register_method(
    "lokr",
    families=TRANSFORMERS,
    kind="reparameterised",
    cite="Yeh et al.: Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation, ICLR 2024 (LoKr)",
    url="https://arxiv.org/abs/2309.14859",
    default_lr=1e-3,
    options=LycorisOptions,
    peft_owned=True,
    merge=peft_merged_state,  # no size knob: peft factorises only one Kronecker factor, and only while r is small
)
def lokr(backbone, options: LycorisOptions) -> nn.Module:
    """LoKr: the weight update is a Kronecker product C ⊗ (B·A) of a small full matrix and a rank-r product; zero at init."""
    from peft import LoKrConfig

    targets = linear_targets(backbone, options.targets, "LoKr")
    return wrap(backbone, LoKrConfig(r=options.rank, alpha=options.alpha, target_modules=targets))


class IA3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # (IA)^3 rescales keys, values and the inner activations of the feed-forward block (the input of fc2).
    targets: list[str] = _targets_field(["k", "v", "fc2"])
    feedforward: list[str] = Field(default_factory=lambda: ["fc2"], description="targets whose input (not output) is scaled")


@register_method(
    "ia3",
    families=TRANSFORMERS,
    kind="reparameterised",
    cite="Liu et al.: Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning, NeurIPS 2022 ((IA)^3)",
    url="https://arxiv.org/abs/2205.05638",
    default_lr=3e-3,
    options=IA3Options,
    peft_owned=True,
    merge=peft_merged_state,
)
def ia3(backbone, options: IA3Options) -> nn.Module:
    """(IA)^3: learned vectors rescale the keys, the values and the MLP's inner activations (ones at init)."""
    from peft import IA3Config

    unknown = set(options.feedforward) - set(options.targets)
    if unknown:
        raise UserError(f"ia3 feedforward modules {sorted(unknown)} must also be in targets {options.targets}")
    found = target_map(backbone, options.targets, "IA3")
    targets = [name for names in found.values() for name in names]
    feedforward = [name for original, names in found.items() if original in options.feedforward for name in names]
    return wrap(backbone, IA3Config(target_modules=targets, feedforward_modules=feedforward))


class OFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(32, ge=2, description="size of the orthogonal blocks; must divide the input width of every target")
    targets: list[str] = _targets_field(["qkv"])


def _divisors(widths: list[int], keep) -> list[int]:
    if not widths:
        return []
    common = math.gcd(*widths)
    return [b for b in range(2, common + 1) if common % b == 0 and all(keep(w, b) for w in widths)]


def _check_block_size(backbone, targets: list[str], block: int, valid: list[int], method: str) -> None:
    if block not in valid:
        raise UserError(f"{method} block_size {block} does not fit the input widths of {backbone.name}'s {', '.join(targets)} layers; choose one of {valid}")


def _oft_block_sizes(backbone, options: OFTOptions) -> list[int]:
    targets = linear_targets(backbone, options.targets, "OFT")
    return _divisors(in_features(backbone, targets), lambda width, b: True)


@register_method(
    "oft",
    families=TRANSFORMERS,
    kind="reparameterised",
    cite="Qiu et al.: Controlling Text-to-Image Diffusion by Orthogonal Finetuning, NeurIPS 2023 (OFT)",
    url="https://arxiv.org/abs/2306.07280",
    default_lr=1e-3,
    options=OFTOptions,
    peft_owned=True,
    knob="block_size",
    knob_values=_oft_block_sizes,
    merge=peft_merged_state,
)
def oft(backbone, options: OFTOptions) -> nn.Module:
    """OFT: a trainable block-diagonal orthogonal matrix (Cayley parameterisation) rotates each frozen weight; the identity at init."""
    from peft import OFTConfig

    targets = linear_targets(backbone, options.targets, "OFT")
    _check_block_size(backbone, targets, options.block_size, _divisors(in_features(backbone, targets), lambda w, b: True), "oft")
    return wrap(backbone, OFTConfig(r=0, oft_block_size=options.block_size, target_modules=targets))


class BOFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(8, ge=2, description="size of the orthogonal blocks (even; must divide every target's input width)")
    butterfly_factor: int = Field(2, ge=1, description="number of butterfly factors (1 = OFT)")
    targets: list[str] = _targets_field(["qkv"])


def _boft_fits(factor: int):
    m = factor - 1  # peft's (and the paper's) exponent

    def fits(width: int, block: int) -> bool:
        if width % (block * 2**m):
            return False
        return m == 0 or (block % 2 == 0 and (width // block) % 2 == 0)

    return fits


def _boft_block_sizes(backbone, options: BOFTOptions) -> list[int]:
    targets = linear_targets(backbone, options.targets, "BOFT")
    return _divisors(in_features(backbone, targets), _boft_fits(options.butterfly_factor))


@register_method(
    "boft",
    families=TRANSFORMERS,
    kind="reparameterised",
    cite="Liu et al.: Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization, ICLR 2024 (BOFT)",
    url="https://arxiv.org/abs/2311.06243",
    default_lr=1e-3,
    options=BOFTOptions,
    peft_owned=True,
    knob="block_size",
    knob_values=_boft_block_sizes,
    merge=peft_merged_state,
)
def boft(backbone, options: BOFTOptions) -> nn.Module:
    """BOFT: the orthogonal rotation of OFT as a product of sparse butterfly factors; the identity at init."""
    from peft import BOFTConfig

    targets = linear_targets(backbone, options.targets, "BOFT")
    valid = _divisors(in_features(backbone, targets), _boft_fits(options.butterfly_factor))
    _check_block_size(backbone, targets, options.block_size, valid, "boft")
    config = BOFTConfig(boft_block_size=options.block_size, boft_n_butterfly_factor=options.butterfly_factor, target_modules=targets)
    # peft tries to build its CUDA extension; on a machine without CUDA torch logs that at WARNING, and
    # the outcome is reported below as one clear line instead.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(Failed to load the CUDA extension|Setting boft_n_butterfly_factor)", category=UserWarning)
        model = wrap(backbone, config)
    # Without its CUDA extension peft quietly trains with one butterfly factor (block-diagonal OFT).
    if options.butterfly_factor > 1 and not all(getattr(m, "fbd_cuda_available", True) for m in model.modules() if hasattr(m, "boft_R")):
        raise UserError(
            f"peft's BOFT needs its CUDA extension (fbd_cuda, built with ninja on a CUDA machine) for butterfly_factor={options.butterfly_factor} "
            "and would silently use 1 here; pass --set method.butterfly_factor=1 (block-diagonal orthogonal fine-tuning) or run where the extension builds"
        )
    return model


class VeRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(256, ge=1, description="rank of the shared frozen random matrices")
    d_initial: float = Field(0.1, gt=0, description="initial value of the scaling vector d")
    targets: list[str] = _targets_field(["qkv"])


@register_method(
    "vera",
    families=TRANSFORMERS,
    kind="reparameterised",
    cite="Kopiczko, Blankevoort, Asano: VeRA: Vector-based Random Matrix Adaptation, ICLR 2024",
    url="https://arxiv.org/abs/2310.11454",
    default_lr=3e-3,
    options=VeRAOptions,
    peft_owned=True,
    knob="rank",
    merge=peft_merged_state,
)
def vera(backbone, options: VeRAOptions) -> nn.Module:
    """VeRA: frozen random low-rank matrices shared by all layers, scaled by trained vectors d and b (b = 0 at init)."""
    from peft import VeraConfig

    targets = linear_targets(backbone, options.targets, "VeRA")
    return wrap(backbone, VeraConfig(r=options.rank, d_initial=options.d_initial, target_modules=targets, save_projection=True))


@register_method(
    "layernorm",
    families=TRANSFORMERS,
    kind="selective",
    cite="Basu et al.: Strong Baselines for Parameter Efficient Few-Shot Fine-tuning, AAAI 2024 (LayerNorm tuning)",
    url="https://arxiv.org/abs/2304.01917",
    default_lr=1e-3,
    peft_owned=True,
    merge=peft_merged_state,
    in_study=True,
)
def layernorm(backbone, options) -> nn.Module:
    """LayerNorm tuning: the scale and shift of every normalisation layer and the head train (peft's LN tuning)."""
    from peft import LNTuningConfig

    names = [name for name, _ in norm_layers(backbone.model, exclude=backbone.head_name)]
    if not names:
        raise UserError(f"{backbone.name} has no normalisation layers with affine parameters; method 'layernorm' needs LayerNorm layers")
    # A regex of the exact names: a suffix list would also catch the Identity placeholders timm names `norm`.
    config = LNTuningConfig(target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$")
    with warnings.catch_warnings():
        # peft asks every wrapped layer for in/out features, which norm layers do not have; harmless here.
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        return wrap(backbone, config)
