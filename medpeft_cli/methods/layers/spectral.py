"""SV-Diff spectral shifts (the t2i method `svdiff`, methods/t2i/unet.py).

Each weight W = U diag(s) V^T (a conv kernel is read as a c_out x (c_in*kh*kw) matrix) is replaced by
W_d = U diag(ReLU(s + d)) V^T with a learnable shift d of its singular values, d = 0 at initialisation.
We compute it as W + U diag(ReLU(s + d) - s) V^T: the same function of d, but at d = 0 the correction
is exactly zero (ReLU(s) = s for singular values s >= 0), so the U-Net's outputs are bitwise unchanged
at init instead of differing by the rounding of an SVD reconstruction.

U, s and V are non-persistent buffers: they are recomputed from the frozen weights when the method is
applied again (e.g. to re-score a saved run), and only the shifts d are saved. Singular vectors can flip
sign between SVD implementations; U diag(f(s)) V^T does not depend on those signs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class SpectralShift(nn.Module):
    """Parametrization of one weight tensor: W -> W + U diag(ReLU(s + delta) - s) V^T."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        matrix = weight.detach().reshape(weight.shape[0], -1).float()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        self.register_buffer("u", u, persistent=False)
        self.register_buffer("s", s, persistent=False)
        self.register_buffer("vh", vh, persistent=False)
        self.delta = nn.Parameter(torch.zeros_like(s))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shift = torch.relu(self.s + self.delta) - self.s
        correction = (self.u * shift) @ self.vh
        return weight + correction.reshape(weight.shape).to(weight.dtype)


def add_spectral_shifts(model: nn.Module) -> int:
    """Parametrize the weight of every Linear and Conv2d in `model`; returns how many were shifted.
    The shifts are the only new trainable parameters (the caller freezes the rest)."""
    targets = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and not parametrize.is_parametrized(m, "weight")]
    for module in targets:
        parametrize.register_parametrization(module, "weight", SpectralShift(module.weight), unsafe=True)
        module.parametrizations.weight.original.requires_grad_(False)
    return len(targets)
