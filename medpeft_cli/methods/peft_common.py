"""What every method implemented by Hugging Face peft shares: target checks, wrapping, merging.

torch, peft and the q/k/v helpers are imported inside the functions (method modules import this one
to register their methods without importing torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import expose_fused_qkv

if TYPE_CHECKING:
    from torch import nn


def target_map(backbone, targets: list[str], method: str) -> dict[str, list[str]]:
    """Each target -> the peft `target_modules` entries it stands for.

    A target is a suffix of Linear module names (timm: qkv, proj, fc1, fc2); q/k/v split a fused qkv. When no
    Linear has that name, qkv/q/k/v/proj/fc1/fc2 name a role found by layer kind in every transformer block
    (methods/qkv.py role_targets), given as full module names.
    """
    from torch import nn

    from medpeft_cli.methods.qkv import resolve_qkv_targets, role_targets

    model = backbone.model
    expose_fused_qkv(model)  # EVA: route qkv through the module so peft's layer is used
    resolved = resolve_qkv_targets(model, targets)
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]
    linear_names = [n for n in linear_names if not (n == backbone.head_name or n.startswith(backbone.head_name + "."))]
    found: dict[str, list[str]] = {}
    for target, wanted in zip(targets, resolved):
        if any(name == wanted or name.endswith("." + wanted) for name in linear_names):
            found[target] = [wanted]
            continue
        found[target] = role_targets(model, target)
        if not found[target]:
            suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
            raise UserError(f"{method} target {target!r} matches no Linear module of {backbone.name}; Linear module names include: {', '.join(suffixes)}")
    return found


def linear_targets(backbone, targets: list[str], method: str) -> list[str]:
    """peft `target_modules` for `targets` (see target_map)."""
    return [name for names in target_map(backbone, targets, method).values() for name in names]


def wrap(backbone, config) -> nn.Module:
    """Apply a peft config; the new classification head trains as a `modules_to_save` copy."""
    from peft import get_peft_model

    config.modules_to_save = [backbone.head_name]
    return get_peft_model(backbone.model, config)


def in_features(backbone, targets: list[str]) -> list[int]:
    """Input widths of the Linear modules `targets` names (for block-size knobs that must divide them)."""
    from torch import nn

    model = backbone.model if hasattr(backbone, "model") else backbone
    return [m.in_features for name, m in model.named_modules() if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]


def peft_merged_state(model: nn.Module) -> dict:
    """Fold the adapter into the base weights (peft's merge_and_unload) and return timm's own state-dict layout."""
    from peft.utils import ModulesToSaveWrapper

    from medpeft_cli.methods.qkv import fuse_split_qkv_state

    merged = model.merge_and_unload()
    # peft's LN tuning leaves the trained `modules_to_save` head wrapped; put the trained copy in its place.
    for name, module in list(merged.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name), child, module.modules_to_save[module.active_adapter])
    return fuse_split_qkv_state(dict(merged.state_dict()))
