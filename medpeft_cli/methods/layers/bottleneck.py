"""The bottleneck of adapter methods (AdaptFormer's AdaptMLP, Houlsby adapters)."""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """x -> scale · up(act(down(x))), with up = 0 at init."""

    def __init__(self, width: int, bottleneck: int, act: nn.Module, scale: float, dropout: float, like: torch.Tensor):
        super().__init__()
        kw = {"device": like.device, "dtype": like.dtype}
        self.down = nn.Linear(width, bottleneck, **kw)  # torch's default (Kaiming-uniform) init
        self.act = act
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, width, **kw)
        self.scale = scale
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x)))) * self.scale
