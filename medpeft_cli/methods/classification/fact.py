"""FacT: factor-tuning, tensor-train (FacT-TT) and Tucker (FacT-TK) formats.

All weight increments of a ViT are one tensor of d x d slices: every adapted Linear (qkv, proj, fc1,
fc2) is cut into d x d blocks, 12 per block for an MLP ratio of 4. FacT factorises that tensor with
factors shared across the whole network:

    ΔW_slice = s · V Σ_slice U,   U: r x d (input side), V: d x r (output side, zero at init)
    FacT-TT: every slice has its own r x r core Σ             (2dr + 12L·r² parameters)
    FacT-TK: Σ_slice = C ×₃ p_slice, one r x r x r core C and an r-vector p per slice (2dr + r³ + 12L·r)

V = 0 at init, so the adapted model equals the backbone; ΔW is linear, so it folds into W.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import expose_fused_qkv, freeze, train_head, transformer_blocks
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

SHARED = "fact"  # the model-level module holding U, V (and C for FacT-TK)
SLOT = "fact"  # the per-Linear module holding its cores (TT) or core weights (TK)


class FacTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="rank r of the shared factors (the paper searches r <= 16 for TT, <= 32 for TK)")
    scale: float = Field(1.0, gt=0, description="s, the factor on the increment (searched per dataset in the paper)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after the input-side factor U")


def _add_increment(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output + getattr(module, SLOT)(args[0])


def _block_linears(backbone) -> list[tuple[str, nn.Linear]]:
    """Every Linear of the blocks' attention and feed-forward networks (the weights FacT adapts)."""
    from torch import nn

    found = []
    for block in transformer_blocks(backbone.model):
        found += [(f"{block.attn_name}.{n}", m) for n, m in block.attn.named_modules() if isinstance(m, nn.Linear)]
        found += block.mlp_linears
    return found


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    import torch
    from torch import nn

    from medpeft_cli.methods.layers.fact import Slot

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for name, module in model.named_modules():
            slot = getattr(module, SLOT, None)
            if isinstance(slot, Slot) and isinstance(module, nn.Linear):
                state[f"{name}.weight"] += slot.delta_weight()
    return {k: v for k, v in state.items() if not (k.startswith(SHARED + ".") or f".{SLOT}." in k)}


def _fact(backbone, options: FacTOptions, tucker: bool) -> nn.Module:
    from medpeft_cli.methods.layers.fact import SharedFactors, Slot

    model = backbone.model
    freeze(model)
    expose_fused_qkv(model)  # EVA computes qkv with F.linear unless told otherwise
    linears = _block_linears(backbone)
    # the token width d: timm's embed_dim, else the input width of the first attention projection
    width = getattr(model, "embed_dim", None) or linears[0][1].in_features
    odd = [n for n, m in linears if m.in_features % width or m.out_features % width]
    if odd:
        raise UserError(f"FacT needs every block Linear to be a multiple of the width {width} (d x d slices); {backbone.name}'s {odd[0]} is not (e.g. a SwiGLU MLP)")
    like = linears[0][1].weight
    shared = SharedFactors(width, options.rank, tucker, options.dropout, like)
    model.add_module(SHARED, shared)
    for _, linear in linears:
        slot = Slot(shared, linear.out_features // width, linear.in_features // width, options.scale, tucker, like)
        linear.add_module(SLOT, slot)
        linear.register_forward_hook(_add_increment)
    for param in shared.parameters():
        param.requires_grad_(True)
    train_head(model, backbone.head_name)
    return model


@register_method(
    "fact-tt",
    families={"vit"},
    kind="reparameterised",
    cite="Jie, Deng: FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer, AAAI 2023 (tensor-train format)",
    url="https://arxiv.org/abs/2212.03145",
    default_lr=1e-3,
    options=FacTOptions,
    knob="rank",
    merge=merged_state,
)
def fact_tt(backbone, options: FacTOptions) -> nn.Module:
    """FacT-TT: all weight increments as d x d slices V·Σ_i·U with U, V shared by the whole ViT and an r x r core per slice (V = 0 at init)."""
    return _fact(backbone, options, tucker=False)


@register_method(
    "fact-tk",
    families={"vit"},
    kind="reparameterised",
    cite="Jie, Deng: FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer, AAAI 2023 (Tucker format)",
    url="https://arxiv.org/abs/2212.03145",
    default_lr=1e-3,
    options=FacTOptions,
    knob="rank",
    merge=merged_state,
)
def fact_tk(backbone, options: FacTOptions) -> nn.Module:
    """FacT-TK: all weight increments as slices V·(C ×₃ p_i)·U with U, V and the r x r x r core C shared, an r-vector p_i per slice (V = 0 at init)."""
    return _fact(backbone, options, tucker=True)
