"""DiffFit for classification: bias terms, normalisation layers and a scale factor γ per residual branch.

DiffFit trains the bias terms and normalisation layers of a pretrained transformer and multiplies the
output of each block's attention and feed-forward branch, before it joins the residual stream, by a new
per-channel factor γ (= 1 at init, so the model is unchanged). On ViT-B/16 that is every bias
(102,912), the 25 LayerNorm scales (19,200) and 12 × 2 × 768 γ: 140,544 parameters, the count
PETL_Vision reports for DiffFit on ViT-B/16 (../shared/reference/README.md).

γ is a parameter `difffit_gamma` of the module whose output it scales, applied by a forward hook: the
branch's last Linear (attention output projection, last feed-forward Linear), or a torch
`nn.MultiheadAttention`, which computes its output projection without calling it as a module. γ scales
that Linear's output rows, so it folds into its weight and bias (W' = γ ⊙ W, b' = γ ⊙ b).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import freeze, norm_layers, train_head, transformer_blocks
from medpeft_cli.methods.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

GAMMA = "difffit_gamma"


def _scale(module: nn.Module, args, output):
    gamma = getattr(module, GAMMA)
    if isinstance(output, tuple):  # nn.MultiheadAttention: (output, attention weights)
        return (output[0] * gamma.to(output[0].dtype), *output[1:])
    return output * gamma.to(output.dtype)  # channels last: Linear outputs, (batch, tokens, width) sequences


def _out_linear(module: nn.Module) -> nn.Linear:
    """The Linear whose output rows γ scales: the module itself or an nn.MultiheadAttention's out_proj."""
    from torch import nn

    return module.out_proj if isinstance(module, nn.MultiheadAttention) else module


def _branch_ends(backbone) -> list[nn.Module]:
    """Per transformer block: the module ending its attention branch and the one ending its feed-forward branch."""
    from torch import nn

    from medpeft_cli.models.tree import attention_projections

    ends = []
    for block in transformer_blocks(backbone.model):
        out = attention_projections(block.attn).get("out")
        if isinstance(block.attn, nn.MultiheadAttention):
            ends.append(block.attn)
        elif out is not None:
            ends.append(block.attn.get_submodule(out))
        else:
            raise UserError(f"DiffFit needs the output projection (a Linear) of each attention; block {block.name} of {backbone.name} has none")
        ends.append(block.mlp_linears[-1][1])
    return ends


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fold each γ into the rows of the Linear whose output it scales; the γ tensors disappear."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if GAMMA not in dict(module.named_parameters(recurse=False)):
            continue
        gamma = getattr(module, GAMMA).detach()
        linear = f"{name}.out_proj" if _out_linear(module) is not module else name
        state[f"{linear}.weight"] = state[f"{linear}.weight"] * gamma.view(-1, 1)
        if f"{linear}.bias" in state:
            state[f"{linear}.bias"] = state[f"{linear}.bias"] * gamma
        del state[f"{name}.{GAMMA}"]
    return state


def _is_bias(name: str) -> bool:
    # `.bias` of Linear/Conv/norm layers, and EVA's separate `q_bias`/`v_bias` of the fused qkv projection.
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


@register_method(
    "difffit",
    families={"vit", "hvit"},
    kind="reparameterised",
    cite="Xie, Yao, Shi, Liu, Zhou, Liu, Li, Li: DiffFit: Unlocking Transferability of Large Diffusion Models via Simple Parameter-Efficient Fine-Tuning, ICCV 2023",
    url="https://arxiv.org/abs/2304.06648",
    default_lr=1e-3,
    merge=merged_state,
)
def difffit(backbone, options) -> nn.Module:
    """DiffFit: every bias, every normalisation layer and a per-channel scale γ (= 1 at init) on each block's attention and feed-forward branch train."""
    import torch
    from torch import nn

    model = backbone.model
    freeze(model)
    ends = _branch_ends(backbone)
    for name, param in model.named_parameters():
        if _is_bias(name):
            param.requires_grad_(True)
    for _, layer in norm_layers(model, exclude=backbone.head_name):
        for param in layer.parameters(recurse=False):
            param.requires_grad_(True)
    for module in ends:
        linear = _out_linear(module)
        module.register_parameter(GAMMA, nn.Parameter(torch.ones(linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype)))
        module.register_forward_hook(_scale)
    train_head(model, backbone.head_name)
    return model
