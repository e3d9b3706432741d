"""Prompt tokens joining a ViT's token sequence (VPT's layers)."""

from __future__ import annotations

import torch
from torch import nn


class Prompts(nn.Module):
    """Prompt tokens for one block: inserted after the prefix tokens, or replacing the previous block's."""

    def __init__(self, length: int, width: int, prefix: int, insert: bool, init_bound: float, dropout: float, like: torch.Tensor):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(length, width, device=like.device, dtype=like.dtype))
        nn.init.uniform_(self.tokens, -init_bound, init_bound)  # Xavier-uniform over patch fan-in, as in the paper
        self.dropout = nn.Dropout(dropout)
        self.prefix, self.insert = prefix, insert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.dropout(self.tokens).unsqueeze(0).expand(x.shape[0], -1, -1)
        keep = self.prefix if self.insert else self.prefix + self.tokens.shape[0]
        return torch.cat([x[:, : self.prefix], tokens, x[:, keep:]], dim=1)


class DropPrompts(nn.Module):
    """Removes the prompt tokens after the last block (no parameters)."""

    def __init__(self, length: int, prefix: int):
        super().__init__()
        self.length, self.prefix = length, prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, : self.prefix], x[:, self.prefix + self.length :]], dim=1)
