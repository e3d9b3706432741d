"""FacT's factors: U, V (and the Tucker core C) shared by the whole ViT, and each Linear's slice cores."""

from __future__ import annotations

import math

import torch
from torch import nn


def _uniform(shape: tuple[int, ...], fan_in: int, like: torch.Tensor) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)  # torch's default bound for a Linear layer with this fan-in
    return nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(-bound, bound))


class SharedFactors(nn.Module):
    def __init__(self, width: int, rank: int, tucker: bool, dropout: float, like: torch.Tensor):
        super().__init__()
        self.u = _uniform((rank, width), width, like)
        self.v = nn.Parameter(torch.zeros(width, rank, device=like.device, dtype=like.dtype))
        self.core = _uniform((rank, rank, rank), rank, like) if tucker else None
        self.dropout = nn.Dropout(dropout)


class Slot(nn.Module):
    """The slices of one Linear of width (blocks_in·d -> blocks_out·d)."""

    def __init__(self, shared: SharedFactors, blocks_out: int, blocks_in: int, scale: float, tucker: bool, like: torch.Tensor):
        super().__init__()
        rank = shared.u.shape[0]
        object.__setattr__(self, "shared", shared)  # a reference, not a child: U, V, C are saved once
        self.blocks_out, self.blocks_in, self.scale = blocks_out, blocks_in, scale
        if tucker:
            self.weights = _uniform((blocks_out, blocks_in, rank), rank, like)
        else:
            self.cores = _uniform((blocks_out, blocks_in, rank, rank), rank, like)

    def slice_cores(self) -> torch.Tensor:
        """Σ for every (output block, input block): shape (blocks_out, blocks_in, r, r)."""
        if self.shared.core is None:
            return self.cores
        return torch.einsum("ijk,bak->baij", self.shared.core, self.weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        width = shared.u.shape[1]
        xs = shared.dropout(x.reshape(*x.shape[:-1], self.blocks_in, width) @ shared.u.t())  # (..., a, r)
        ys = torch.einsum("...ar,bars->...bs", xs, self.slice_cores())  # (..., b, r)
        return (ys @ shared.v.t()).reshape(*x.shape[:-1], self.blocks_out * width) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The dense increment (blocks_out·d, blocks_in·d) this slot adds to its Linear's weight."""
        shared = self.shared
        blocks = torch.einsum("dr,basr,se->bdae", shared.v, self.slice_cores(), shared.u)
        b, d, a, e = blocks.shape
        return blocks.reshape(b * d, a * e) * self.scale
