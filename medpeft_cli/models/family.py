"""The backbone family, detected from the module tree: it decides which methods apply and their defaults."""

from __future__ import annotations

from torch import nn

from medpeft_cli.models.tree import patch_embedding, single_sequence, transformer_blocks


def detect_family(model: nn.Module) -> str:
    """'vit' for a plain ViT (attention blocks over one token sequence: ViT, DeiT, EVA, CLIP, DINOv2),
    'hvit' for hierarchical/windowed transformers (Swin, ...), 'cnn' if built from convolutions, else
    'other' (including conv-attention hybrids such as MaxViT and CoAtNet).
    """
    names = {type(m).__name__.lower() for m in model.modules()}
    blocks = transformer_blocks(model)
    if blocks or any("attention" in n or n == "attn" for n in names):
        # timm's plain ViTs: one `blocks` sequence after a patch embedding
        if isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)) and hasattr(model, "patch_embed"):
            return "vit"
        # Conv-attention hybrids mix BatchNorm conv blocks with attention; transformer methods do not fit them.
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return "other"
        # any other architecture: its blocks form one sequence after a patchifying convolution
        if single_sequence(blocks) and patch_embedding(model) is not None:
            return "vit"
        return "hvit"
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return "cnn" if convs > 1 else "other"
