"""TSA: task-specific adapters, the parallel residual adapter variant.

Beside each convolution of the residual stages a 1x1 convolution r (a matrix over channels, same
stride and groups) is added: f(h) = conv(h) + r(h), r = 0 at init, so the model is unchanged. The
backbone is frozen; r and the head train. (The paper's pre-classifier alignment is not added: every
medpeft method trains a new linear head.) r reads the input pixel at the kernel's centre tap, so it
folds exactly into the convolution's kernel: W[:, :, p_h/d_h, p_w/d_w] += r.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import freeze, stage_convs, train_head
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

CHILD = "tsa"


class TSAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    convs: Literal["all", "spatial"] = Field(
        "all", description="'all': every conv of the residual stages (the paper); 'spatial': only k x k convs with k > 1 (a 1x1 conv's parallel adapter is as large as the conv)"
    )


def _parallel(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    residual = getattr(module, CHILD)(args[0])
    # For odd input sizes a strided 1x1 conv yields one more row/column than a k x k conv without padding.
    return output + residual[..., : output.shape[-2], : output.shape[-1]]


def _adapter_for(conv: nn.Conv2d) -> nn.Conv2d:
    from torch import nn

    adapter = nn.Conv2d(
        conv.in_channels, conv.out_channels, kernel_size=1, stride=conv.stride, groups=conv.groups, bias=False,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )  # fmt: skip
    nn.init.zeros_(adapter.weight)
    return adapter


def _tap(conv: nn.Conv2d, name: str) -> tuple[int, int]:
    """Kernel position whose input pixel the strided 1x1 adapter reads (where it folds in)."""
    from torch import nn

    if type(conv) is not nn.Conv2d or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise UserError(f"cannot fold the TSA adapter of {name} ({type(conv).__name__}, padding {conv.padding!r}) into its kernel; keep the unmerged run instead")
    tap = []
    for pad, dil, size in zip(conv.padding, conv.dilation, conv.kernel_size):
        if pad % dil or pad // dil >= size:
            raise UserError(f"cannot fold the TSA adapter of {name}: padding {conv.padding} is not on a kernel tap of its {conv.kernel_size} kernel")
        tap.append(pad // dil)
    return tap[0], tap[1]


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch import nn

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        adapter = getattr(module, CHILD, None)
        if not isinstance(adapter, nn.Conv2d) or not isinstance(module, nn.Conv2d):
            continue
        row, col = _tap(module, name)
        state[f"{name}.weight"][:, :, row, col] += adapter.weight.detach()[:, :, 0, 0]
        del state[f"{name}.{CHILD}.weight"]
    return state


@register_method(
    "tsa",
    families={"cnn"},
    kind="additive",
    cite="Li, Liu, Bilen: Cross-domain Few-shot Learning with Task-specific Adapters, CVPR 2022",
    url="https://arxiv.org/abs/2107.00358",
    default_lr=1e-3,
    options=TSAOptions,
    merge=merged_state,
    in_study=True,
)
def tsa(backbone, options: TSAOptions) -> nn.Module:
    """TSA: a zero-initialised 1x1 conv in parallel with each conv of the residual stages, f(h) = conv(h) + r(h); backbone frozen."""
    model = backbone.model
    freeze(model)
    convs = [(n, c) for n, c in stage_convs(model) if options.convs == "all" or max(c.kernel_size) > 1]
    if not convs:
        raise UserError(f"{backbone.name} has no convolutions in its residual stages for TSA (convs={options.convs!r})")
    for _, conv in convs:
        conv.add_module(CHILD, _adapter_for(conv))
        conv.register_forward_hook(_parallel)
    train_head(model, backbone.head_name)
    return model
