"""DiffFit scale factors on the Stable Diffusion U-Net (the t2i method `difffit`, methods/t2i/unet.py).

DiffFit multiplies the residual branches of a diffusion transformer's blocks by learnable per-channel
factors gamma, initialised to 1, and trains them together with the bias and normalisation parameters.
On the Stable Diffusion U-Net we put one gamma on each residual branch: the self-attention (attn1),
cross-attention (attn2) and feed-forward (ff) outputs of every transformer block, and the second
convolution of every ResNet block (its branch before the skip connection is added). gamma = 1 leaves
every output bitwise unchanged at initialisation.

gamma is registered as a parameter `difffit_gamma` of the module it scales (so it is saved and loaded
with the module's state) and applied by a forward hook.
"""

from __future__ import annotations

import torch
from torch import nn

GAMMA = "difffit_gamma"


def _scale(module: nn.Module, args, output):
    gamma = getattr(module, GAMMA)
    if isinstance(output, torch.Tensor):
        shape = (-1, 1, 1) if output.dim() == 4 else (-1,)  # (B, C, H, W) conv maps, (B, L, C) token sequences
        return output * gamma.view(shape).to(output.dtype)
    raise TypeError(f"DiffFit cannot scale a {type(module).__name__} output of type {type(output).__name__}")


def residual_branches(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """(module, channels) of every residual branch DiffFit scales."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    branches = []
    for block in unet.modules():
        if isinstance(block, BasicTransformerBlock):
            for name in ("attn1", "attn2", "ff"):
                sub = getattr(block, name, None)
                if sub is not None:
                    branches.append((sub, block.dim))  # attention and feed-forward map back to the block width
        elif isinstance(block, ResnetBlock2D):
            branches.append((block.conv2, block.conv2.out_channels))
    return branches


def add_scale_factors(unet: nn.Module) -> int:
    """Add a trainable gamma (ones) to every residual branch; returns how many were added."""
    branches = residual_branches(unet)
    for module, channels in branches:
        if hasattr(module, GAMMA):
            continue
        param = next(module.parameters())
        module.register_parameter(GAMMA, nn.Parameter(torch.ones(channels, device=param.device, dtype=param.dtype)))
        module.register_forward_hook(_scale)
    return len(branches)
