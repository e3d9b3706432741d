"""Helpers shared by methods: freezing, finding layers by kind in any backbone, and parameter bookkeeping.

Importing this module does not import torch (method modules import it to register their methods, and
the registry must stay torch-free): torch and the module-tree helpers are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from medpeft_cli.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from medpeft_cli.models.tree import Block


def freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def train_head(model: nn.Module, head_name: str) -> None:
    """Every method trains the new classification head (the dataset's classes are new)."""
    for param in model.get_submodule(head_name).parameters():
        param.requires_grad_(True)


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The merged state of a method that adds no modules: the model's own state dict."""
    return dict(model.state_dict())


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def counted_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The parameters the forward pass uses.

    peft keeps frozen originals it never calls beside its trainable copies: the `original_module` of a
    `modules_to_save` head and the `base_layer` of an LN-tuning layer. Counting them would inflate totals.
    """
    skipped: set[str] = set()
    for name, module in model.named_modules():
        if type(module).__name__ == "LNTuningLayer":
            skipped.add(f"{name}.base_layer.")
    for name, param in model.named_parameters():
        if ".original_module." in name or any(name.startswith(prefix) for prefix in skipped):
            continue
        yield name, param


def is_norm_layer(module: nn.Module) -> bool:
    """BatchNorm/LayerNorm/GroupNorm/RMSNorm layers of torch and timm (LayerNorm2d, RmsNorm, ...)."""
    from torch import nn

    torch_norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    if isinstance(module, torch_norms) or (hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm)):
        return True
    return type(module).__module__.startswith("timm.layers.norm") and "norm" in type(module).__name__.lower()


def norm_layers(model: nn.Module, exclude: str) -> list[tuple[str, nn.Module]]:
    """Normalisation layers with learnable affine parameters, outside the module `exclude` (the head)."""
    return [
        (name, m) for name, m in model.named_modules()
        if is_norm_layer(m) and any(True for _ in m.parameters(recurse=False)) and not _inside(name, exclude)
    ]  # fmt: skip


def channel_dim(module: nn.Module) -> int:
    """Which output dimension holds the channels: 1 for NCHW layers, -1 for channels-last ones."""
    from torch import nn

    if isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        return 1
    if type(module).__name__.endswith("2d"):  # timm's LayerNorm2d, RmsNorm2d, BatchNormAct2d, ...
        return 1
    return -1


def transformer_blocks(model: nn.Module) -> list[Block]:
    """The transformer blocks, found by layer kind (an attention module beside a feed-forward network), in order.

    Each has `.name`, `.attn` and `.mlp` (None when the feed-forward network is split over several modules);
    see models/tree.py. Works for timm (ViT, DeiT, EVA, CLIP, Swin), transformers and custom models.
    """
    from medpeft_cli.models.tree import transformer_blocks as find_blocks

    blocks = find_blocks(model)
    if not blocks:
        raise UserError(
            f"{type(model).__name__} has no transformer blocks (a module holding an attention module and a feed-forward "
            "network of Linear layers); use a ViT-like backbone"
        )
    return blocks


def stage_modules(model: nn.Module) -> list[str]:
    """Names of the convolutional (residual) stages of a CNN: timm's feature_info modules that hold
    convolutions, else the convolution-holding children after the stem (models/tree.py conv_stages)."""
    from torch import nn

    from medpeft_cli.models.tree import conv_stages

    names = [info["module"] for info in getattr(model, "feature_info", [])]
    stages = [n for n in names if n and any(isinstance(m, nn.Conv2d) for m in model.get_submodule(n).modules())]
    if not stages:
        stages = conv_stages(model)
    if not stages:
        raise UserError(f"cannot find the convolutional stages of {type(model).__name__} (after its stem); use a CNN backbone")
    return stages


def stage_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d inside the residual stages (the stem and the head excluded)."""
    from torch import nn

    stages = stage_modules(model)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and any(_inside(name, s) for s in stages)]


def expose_fused_qkv(model: nn.Module) -> None:
    """Make EVA attention call its `qkv` Linear as a module.

    timm's EVA attention with q/v biases computes `F.linear(x, self.qkv.weight, bias)`, bypassing the
    module, so a LoRA layer or forward hook on `qkv` would silently do nothing. Its `qkv_bias_separate`
    mode computes the same function through `self.qkv(x) + bias`.
    """
    for module in model.modules():
        if getattr(module, "qkv", None) is not None and getattr(module, "q_bias", None) is not None and hasattr(module, "qkv_bias_separate"):
            module.qkv_bias_separate = True


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
