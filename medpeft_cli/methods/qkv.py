"""Separate q, k and v projections for timm attention layers that fuse them into one `qkv` Linear.

The reference study puts LoRA on q and v only (as Hu et al. did), and (IA)^3 scales k and v. timm
ViTs/Swin/EVA compute q, k and v with one fused `qkv` Linear, so a method targeting `q` needs them as
separate modules. `SplitQKV` holds three Linear layers with exactly the fused layer's weights and
returns their concatenation, so the backbone computes the same function and the frozen weights keep
their values; `fuse_split_qkv` turns merged weights back into timm's fused layout.
"""

from __future__ import annotations

import torch
from torch import nn

from medpeft_cli.models.tree import attention_projections, transformer_blocks

SPLIT_NAMES = ("q", "k", "v")


class SplitQKV(nn.Module):
    """q, k and v projections as three Linear layers; forward = their concatenation (the fused layout)."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        width = fused.out_features // 3
        for index, name in enumerate(SPLIT_NAMES):
            part = nn.Linear(fused.in_features, width, bias=fused.bias is not None, device=fused.weight.device, dtype=fused.weight.dtype)
            with torch.no_grad():
                part.weight.copy_(fused.weight[index * width : (index + 1) * width])
                if fused.bias is not None:
                    part.bias.copy_(fused.bias[index * width : (index + 1) * width])
            part.weight.requires_grad_(fused.weight.requires_grad)
            if fused.bias is not None:
                part.bias.requires_grad_(fused.bias.requires_grad)
            self.add_module(name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def _fused_qkv_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Linear]]:
    return [(m, m.qkv) for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear) and m.qkv.out_features % 3 == 0]


def split_fused_qkv(model: nn.Module) -> int:
    """Replace every fused `qkv` Linear by a `SplitQKV`; returns how many were split."""
    layers = _fused_qkv_layers(model)
    for parent, fused in layers:
        parent.qkv = SplitQKV(fused)
    return len(layers)


def has_split_qkv(model: nn.Module) -> bool:
    return any(isinstance(m, SplitQKV) for m in model.modules())


def fuse_split_qkv_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State-dict keys `...qkv.q.weight`, `...qkv.k.weight`, `...qkv.v.weight` -> `...qkv.weight` (same for bias)."""
    fused: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        owner, _, part = prefix.rpartition(".")
        if part in SPLIT_NAMES and owner.endswith("qkv") and f"{owner}.q.{leaf}" in state:
            if part == "q":
                fused[f"{owner}.{leaf}"] = torch.cat([state[f"{owner}.{p}.{leaf}"] for p in SPLIT_NAMES], dim=0)
            continue
        fused[key] = value
    return fused


def resolve_qkv_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Map the names q/k/v to modules: split a fused `qkv` Linear, or use EVA's separate q_proj/k_proj/v_proj."""
    wanted = [t for t in targets if t in SPLIT_NAMES]
    if not wanted:
        return list(targets)
    if _fused_qkv_layers(model):
        split_fused_qkv(model)
        return list(targets)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [f"{t}_proj" if t in SPLIT_NAMES and f"{t}_proj" in names else t for t in targets]


# Target names that stand for a role in every transformer block when no Linear has that name (see models/tree.py):
# a ViT from transformers (q_proj/k_proj/v_proj) or a custom one (to_q/to_k/to_v, expand/reduce) gets LoRA on
# `qkv` = its separate q, k and v projections; `fc1`/`fc2` are the first/last Linear of the feed-forward network.
ROLE_TARGETS = {"qkv": ("q", "k", "v"), "q": ("q",), "k": ("k",), "v": ("v",), "proj": ("out",)}
FEEDFORWARD_TARGETS = ("fc1", "fc2")


def role_targets(model: nn.Module, target: str) -> list[str]:
    """Full names of the Linear layers playing `target`'s role in every transformer block ([] when some block has none)."""
    if target not in ROLE_TARGETS and target not in FEEDFORWARD_TARGETS:
        return []
    names: list[str] = []
    for block in transformer_blocks(model):
        if target in FEEDFORWARD_TARGETS:
            if len(block.mlp_linears) < 2:
                return []
            names.append(block.mlp_linears[0 if target == "fc1" else -1][0])
            continue
        roles = attention_projections(block.attn)
        wanted = ("qkv",) if target == "qkv" and "qkv" in roles else ROLE_TARGETS[target]
        if not all(r in roles for r in wanted):
            return []
        names += [f"{block.attn_name}.{roles[r]}" for r in wanted]
    return names
