"""Input sizes a transformer backbone can take whole: a multiple of its patch size.

A ViT cuts the image into patches with a convolution whose kernel equals its stride; at a size that is
not a multiple of the patch, the remainder is dropped silently (28 px with 16 px patches: one patch, 12
pixel rows and columns never seen) or the model fails deep inside a forward pass. Either way the run
would not be what was asked, so such a size is refused before any work, naming the nearest sizes.
"""

from __future__ import annotations

import math

from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.models.tree import patch_embedding

MIN_SIZE = 8  # RunSpec.image_size's lower bound


def patch_size(model: nn.Module) -> tuple[int, int] | None:
    """(height, width) of the model's patches, or None (no patch embedding, or one that pads any size)."""
    found = patch_embedding(model)
    if found is None:
        return None
    name, conv = found
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    if getattr(parent, "dynamic_img_pad", False):  # timm pads the image to a multiple of the patch itself
        return None
    return int(conv.stride[0]), int(conv.stride[1])


def nearest_multiples(size: int, patch: int) -> list[int]:
    """The multiples of `patch` just below and above `size` (at least MIN_SIZE)."""
    below, above = (size // patch) * patch, (size // patch + 1) * patch
    return [s for s in (below, above) if s >= max(MIN_SIZE, patch)]


def check_input_size(model: nn.Module, family: str, image_size: int, name: str) -> None:
    """Refuse an image size the transformer's patches do not divide (one line naming valid sizes)."""
    if family not in ("vit", "hvit"):
        return
    patch = patch_size(model)
    if patch is None:
        return
    bad = sorted({p for p in patch if image_size % p})
    if not bad:
        return
    step = math.lcm(*patch)
    valid = " or ".join(str(s) for s in nearest_multiples(image_size, step))
    raise UserError(
        f"image size {image_size} is not a multiple of the {patch[0]}x{patch[1]} px patches of {name} "
        f"(the last {image_size % bad[0]} rows or columns of pixels would be dropped); use --image-size {valid} (any multiple of {step})"
    )
