"""SSF: scaling and shifting the features.

After each operation a per-channel affine y = γ ⊙ x + β is inserted (γ = 1, β = 0 at init, so the
model is unchanged); only γ, β and the head train. Because it is affine it folds exactly into the
preceding layer: W' = γ ⊙ W, b' = γ ⊙ b + β. We insert it after every Linear/Conv2d layer that has a bias
and every normalisation layer with a scale and shift, so that it always folds into existing weights
and the merged model is a plain timm state dict. timm CNNs have bias-free convolutions, each followed
by BatchNorm (which would cancel a scale/shift in training through its batch statistics); there SSF
sits after the BatchNorm. Normalisation layers that apply an activation inside (timm's BatchNormAct2d)
are skipped: an affine after the activation would not fold into them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import channel_dim, freeze, is_norm_layer, train_head
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

CHILD = "ssf"


def _after(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, CHILD)(output)


def _foldable(module: nn.Module) -> bool:
    from torch import nn

    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return module.bias is not None
    if not is_norm_layer(module):
        return False
    has_affine = isinstance(getattr(module, "weight", None), nn.Parameter) and isinstance(getattr(module, "bias", None), nn.Parameter)
    act = getattr(module, "act", None)
    return has_affine and (act is None or isinstance(act, nn.Identity))


def ssf_targets(model: nn.Module, head_name: str) -> list[tuple[str, nn.Module]]:
    return [
        (name, m) for name, m in model.named_modules()
        if name and _foldable(m) and not (name == head_name or name.startswith(head_name + "."))
    ]  # fmt: skip


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fold every γ, β into the weight and bias of the layer before it; the SSF tensors disappear."""
    from medpeft_cli.methods.layers.scale_shift import ScaleShift

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        ssf = getattr(module, CHILD, None)
        if not isinstance(ssf, ScaleShift):
            continue
        scale, shift = ssf.scale.detach(), ssf.shift.detach()
        weight = state[f"{name}.weight"]
        state[f"{name}.weight"] = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
        state[f"{name}.bias"] = state[f"{name}.bias"] * scale + shift
        del state[f"{name}.{CHILD}.scale"], state[f"{name}.{CHILD}.shift"]
    return state


def _channels(module: nn.Module) -> int:
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return module.weight.numel()


@register_method(
    "ssf",
    families={"vit", "hvit", "cnn"},
    kind="reparameterised",
    cite="Lian, Zhou, Feng, Wang: Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning, NeurIPS 2022",
    url="https://arxiv.org/abs/2210.08823",
    default_lr=1e-3,
    merge=merged_state,
    in_study=True,
)
def ssf(backbone, options) -> nn.Module:
    """SSF: a per-channel scale γ (=1) and shift β (=0) after every Linear/conv/norm layer; folds into the weights after training."""
    from medpeft_cli.methods.layers.scale_shift import ScaleShift

    model = backbone.model
    freeze(model)
    targets = ssf_targets(model, backbone.head_name)
    if not targets:
        raise UserError(f"{backbone.name} has no layers with a bias or normalisation layers to attach SSF to")
    for _, module in targets:
        module.add_module(CHILD, ScaleShift(_channels(module), channel_dim(module), module.weight))
        module.register_forward_hook(_after)
    train_head(model, backbone.head_name)
    return model
