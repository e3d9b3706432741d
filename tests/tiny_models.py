"""Tiny backbones of every family for method tests: random init, 32 px, bitwise reproducible per seed.

`tiny_backbone(name, seed)` builds one (BACKBONES names them, FAMILY_OF gives their families,
REPRESENTATIVE the one each family is tested on); `adapted(method, backbone)` applies a method to one;
`images()`, `perturb_trainable()`, `rel_diff()`, `method_params()` are what the method tests check with.
"""

from __future__ import annotations

import torch

from medpeft_cli.methods import check_supported, get_method, validate_options
from medpeft_cli.models.backbones import Backbone, detect_family
from medpeft_cli.models.timm_source import head_name as timm_head

NUM_CLASSES = 3
SIZE = 32


def _timm(name: str, **kw):
    import timm

    return timm.create_model(name, num_classes=NUM_CLASSES, **kw)


def _eva():
    from timm.models.eva import Eva

    # EVA-02 style: rotary position embeddings and q/v biases beside a fused qkv (computed with F.linear).
    return Eva(img_size=SIZE, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=NUM_CLASSES, use_rot_pos_emb=True, ref_feat_shape=(4, 4))


def _mixer():
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=NUM_CLASSES, img_size=SIZE, patch_size=8, num_blocks=2, embed_dim=32)


# Tiny stand-ins, random init, 32 px: timm's test models and small configs of the real architectures.
BACKBONES = {
    "test_vit": lambda: _timm("test_vit", img_size=SIZE),
    "deit": lambda: _timm("deit_tiny_patch16_224", depth=2, embed_dim=64, num_heads=2, img_size=SIZE, patch_size=8),
    "clip_vit": lambda: _timm("vit_base_patch16_clip_224", depth=2, embed_dim=64, num_heads=2, img_size=SIZE, patch_size=8),
    "eva": _eva,
    "swin": lambda: _timm("swin_tiny_patch4_window7_224", embed_dim=32, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=SIZE),
    "test_resnet": lambda: _timm("test_resnet"),
    "test_convnext": lambda: _timm("test_convnext"),
    "mixer": _mixer,
}
FAMILY_OF = {"test_vit": "vit", "deit": "vit", "clip_vit": "vit", "eva": "vit", "swin": "hvit", "test_resnet": "cnn", "test_convnext": "cnn", "mixer": "other"}
# The backbone each family is tested on for every method; ViT variants get the study's ViT methods too.
REPRESENTATIVE = {"vit": "test_vit", "hvit": "swin", "cnn": "test_resnet", "other": "mixer"}
# Options the invariants run with where a default cannot run on a CPU-only machine.
TEST_OPTIONS = {"boft": {"butterfly_factor": 1}}  # >1 needs peft's CUDA extension (see test_methods_peft.py)


def tiny_backbone(name: str, seed: int = 0) -> Backbone:
    """A fresh tiny backbone; the same (name, seed) gives bitwise the same weights."""
    torch.manual_seed(seed)
    model = BACKBONES[name]().eval()
    # timm zero-initialises the last BatchNorm scale of each residual block, which would cut the gradient
    # to the rest of that branch at random init (pretrained weights have non-zero scales): mimic those.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    head = model.get_submodule(timm_head(model))
    torch.nn.init.normal_(head.weight, std=0.5)  # some timm heads start at zero (MLP-Mixer, EVA): logits would be 0
    family = detect_family(model)
    assert family == FAMILY_OF[name], f"{name} detected as {family}"
    return Backbone(model, name, family, timm_head(model), f"random-init (seed {seed})", sum(p.numel() for p in model.parameters()), "")


def adapted(method: str, backbone: str, seed: int = 0, **options):
    bb = tiny_backbone(backbone, seed)
    info = get_method(method)
    check_supported(info, bb.family, backbone)
    return bb, info.apply(bb, validate_options(info, {**TEST_OPTIONS.get(method, {}), **options}))


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def n_trainable(model) -> int:
    from medpeft_cli.methods.common import counted_parameters

    return sum(p.numel() for _, p in counted_parameters(model) if p.requires_grad)


def method_params(method: str, backbone: str, **options) -> int:
    bb, model = adapted(method, backbone, **options)
    head = sum(p.numel() for p in bb.model.get_submodule(bb.head_name).parameters()) if not get_method(method).peft_owned else None
    if head is None:  # peft wraps the model; the head is its modules_to_save copy
        head = sum(p.numel() for n, p in model.named_parameters() if ".modules_to_save." in n)
    return n_trainable(model) - head


def perturb_trainable(model, scale: float = 0.1, seed: int = 2) -> None:
    """Move trainable tensors off their init, so zero-initialised factors do not make checks trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * scale)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())
