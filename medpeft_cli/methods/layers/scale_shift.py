"""A per-channel affine y = scale ⊙ x + shift (SSF's layer)."""

from __future__ import annotations

import torch
from torch import nn


class ScaleShift(nn.Module):
    """y = scale ⊙ x + shift along the channel dimension `dim`; scale = 1, shift = 0 at init (the identity)."""

    def __init__(self, channels: int, dim: int, like: torch.Tensor):
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.ones(channels, device=like.device, dtype=like.dtype))
        self.shift = nn.Parameter(torch.zeros(channels, device=like.device, dtype=like.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.dim] = -1
        return x * self.scale.view(shape) + self.shift.view(shape)
