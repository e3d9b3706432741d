"""A faster LoRA Linear for training: peft's layer and parameters, one matmul per training forward.

peft's `lora.Linear` computes `base(x) + B(A(dropout(x))) * s`: five kernels per layer, an fp32 copy of
the input under autocast, and the small rank-r activations kept for the backward pass. This layer computes
the same function as one matmul with the merged weight, `x · (W + s·B·A)ᵀ + b`, merged afresh on every
forward (a rank-r product, cheap next to the activations). Its backward never forms the full weight
gradient: it computes `grad_x = g · W_eff` and the rank-r gradients

    grad_A = s · (g·B)ᵀ · x        grad_B = s · gᵀ · (x·Aᵀ)

directly, the same arithmetic peft's graph does. Evaluation (eval mode or no grad) runs peft's own forward. Measured on an H200 (../shared/ENV.md): ViT-B/16 with
LoRA on every block Linear ran 1.07x full fine-tuning with this scheme, peft's own path 0.75x.

The class subclasses peft's `lora.Linear` (registered through `LoraConfig._register_custom_module`), so
module and parameter names, `save_pretrained`, merging and unloading are peft's own, and a saved adapter
loads with `PeftModel.from_pretrained` into stock peft layers. It needs `lora_dropout == 0` (dropout on the
LoRA branch only cannot be folded into one matmul); the method refuses other values before building it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a Linear in, or None outside autocast (then: the input's own dtype)."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and torch.is_floating_point(x):
        return torch.get_autocast_dtype(device)
    return None


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Skips the dispatch of a no-op .to(): this layer runs dozens of times per step.
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _merge(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, dtype: torch.dtype) -> torch.Tensor:
    """W + s·B·A in the higher of the parameters' precisions, rounded once to the compute dtype."""
    acc = torch.promote_types(weight.dtype, lora_a.dtype)
    return _as(torch.addmm(_as(weight, acc), _as(lora_b, acc), _as(lora_a, acc), alpha=scaling), dtype)


class _MergedLoRALinear(torch.autograd.Function):
    """y = x · (W + s·B·A)ᵀ + b, with rank-r gradients for A and B (and W's only if W trains).

    Only the input and the parameters themselves are kept for backward, which merges the weight again
    (r/N of the layer's matmul work for N input rows) instead of holding a weight-sized copy per layer.
    The arithmetic runs in the autocast dtype where autocast is on (autocast itself switched off inside,
    so nothing is cast twice) and in the input's dtype otherwise.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        dtype = _compute_dtype(x)
        if dtype is None:
            out = F.linear(x, _merge(weight, lora_a, lora_b, scaling, x.dtype), None if bias is None else _as(bias, x.dtype))
        else:
            with torch.autocast(x.device.type, enabled=False):
                x = _as(x, dtype)
                out = F.linear(x, _merge(weight, lora_a, lora_b, scaling, dtype), None if bias is None else _as(bias, dtype))
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        ctx.scaling = scaling
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_autocast_enabled(grad_out.device.type):  # backward called inside autocast (CPU): keep forward's dtypes
            with torch.autocast(grad_out.device.type, enabled=False):
                return _MergedLoRALinear._grads(ctx, grad_out)
        return _MergedLoRALinear._grads(ctx, grad_out)

    @staticmethod
    def _grads(ctx, grad_out):
        x, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        g = _as(grad_out.reshape(-1, grad_out.shape[-1]), x.dtype)
        x2 = x.reshape(-1, x.shape[-1])
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if need_x:
            grad_x = (g @ _merge(weight, lora_a, lora_b, s, x.dtype)).reshape(x.shape)
        if need_a:
            grad_a = _as(((g @ _as(lora_b, g.dtype)) * s).t() @ x2, lora_a.dtype)  # (r, in), from the (N, r) product
        if need_b:
            grad_b = _as(g.t() @ ((x2 @ _as(lora_a, x2.dtype).t()) * s), lora_b.dtype)  # (out, r)
        if need_w:  # only when the frozen weight was made trainable by someone else
            grad_w = _as(g.t() @ x2, weight.dtype)
        if need_bias:
            grad_bias = _as(g.sum(0), ctx.bias_dtype)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


def merged_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """`F.linear(x, weight + scaling * lora_b @ lora_a, bias)` with the rank-r backward of `_MergedLoRALinear`."""
    return _MergedLoRALinear.apply(x, weight, bias, lora_a, lora_b, scaling)


class FusedLoraLinear(LoraLinear):
    """peft's LoRA Linear whose training forward is one matmul with the merged weight (see the module doc)."""

    def _fusable_adapter(self, args: tuple, kwargs: dict) -> str | None:
        """The one plain LoRA adapter this training forward can fold, or None where peft's own forward applies:
        evaluation (so predictions equal those of the saved adapter reloaded into stock peft layers, bit for
        bit), adapters disabled or merged, several active adapters, per-sample adapter names, LoRA variants."""
        if not (self.training and torch.is_grad_enabled()):
            return None
        if args or kwargs or self.disable_adapters or self.merged or self.fan_in_fan_out:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if name in self.lora_variant or self.lora_bias[name] or not isinstance(self.lora_dropout[name], nn.Identity):
            return None
        return name

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._fusable_adapter(args, kwargs)
        base = self.get_base_layer()
        if name is None or type(base) is not nn.Linear:
            return super().forward(x, *args, **kwargs)
        return merged_lora_linear(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name])

    def __repr__(self) -> str:
        return "fused_" + super().__repr__()


def use_fused_layers(config) -> None:
    """Make peft build `FusedLoraLinear` for every nn.Linear a LoraConfig targets (peft's custom-module hook)."""
    config._register_custom_module({nn.Linear: FusedLoraLinear})
