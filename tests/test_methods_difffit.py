"""DiffFit on ViTs: exactly biases, norms, head and one γ per residual branch train; γ scales exactly the
branches; the count on ViT-B/16 is PETL_Vision's. (Identity at init, frozen weights, save/load and merge on
every family: test_methods_zoo.py.)"""

from __future__ import annotations

import torch

from medpeft_cli.methods import get_method, validate_options
from medpeft_cli.methods.common import counted_parameters, trainable_names
from medpeft_cli.models import create_backbone

NUM_CLASSES = 4


def adapted(backbone: str = "test_vit"):
    bb = create_backbone(backbone, "random", NUM_CLASSES, 32, seed=0)
    info = get_method("difffit")
    return bb, info.apply(bb, validate_options(info, {}))


def test_trains_biases_norms_head_and_one_gamma_per_branch():
    bb, model = adapted()
    names = set(trainable_names(model))
    gammas = {n for n in names if n.endswith("difffit_gamma")}
    assert gammas == {f"blocks.{i}.{m}.difffit_gamma" for i in range(len(model.blocks)) for m in ("attn.proj", "mlp.fc2")}
    norms = {n for n, _ in model.named_parameters() if ".norm" in n or n.startswith("norm.")}
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert names == gammas | norms | biases | {"head.weight", "head.bias"}
    assert "blocks.0.attn.qkv.weight" not in names and "pos_embed" not in names and "cls_token" not in names
    width = model.embed_dim
    assert all(p.shape == (width,) for n, p in model.named_parameters() if n in gammas)


def test_gamma_scales_exactly_the_residual_branches():
    _, model = adapted()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("in", args[0]))
    model.blocks[-1].register_forward_hook(lambda m, args, out: seen.setdefault("out", out))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("difffit_gamma"):
                param.zero_()
        model.eval()(x)
    # with every γ = 0 each block adds nothing to its residual stream: the token sequence passes unchanged
    assert torch.equal(seen["in"], seen["out"])


def test_count_on_vit_b16_is_the_published_one():
    from medpeft_cli.methods.accounting import parameter_counts
    from medpeft_cli.models import shape_backbone

    counts = parameter_counts(get_method("difffit"), shape_backbone("vit_base_patch16_224", 224, NUM_CLASSES))
    # PETL_Vision (OSU-MLB), ViT-B/16, head excluded: biases 102,912 + LayerNorm scales 19,200 + 24 x 768 γ
    assert counts["method_params"] == 140_544
    assert counts["method_params"] == parameter_counts(get_method("bitfit"), shape_backbone("vit_base_patch16_224", 224, NUM_CLASSES))["method_params"] + 19_200 + 24 * 768


def test_multihead_attention_is_scaled_at_its_output_and_merges():
    """torch's nn.MultiheadAttention computes out_proj without calling it: γ sits on the attention module."""
    from torch import nn

    from medpeft_cli.models.backbones import Backbone

    class Block(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, 2, batch_first=True)
            self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.norm2(x))

    class TinyViT(nn.Module):
        def __init__(self, dim: int = 16):
            super().__init__()
            self.embed = nn.Linear(12, dim)
            self.blocks = nn.Sequential(Block(dim), Block(dim))
            self.head = nn.Linear(dim, NUM_CLASSES)

        def forward(self, x):
            return self.head(self.blocks(self.embed(x)).mean(1))

    torch.manual_seed(0)
    model = TinyViT()
    bb = Backbone(model, "tiny-mha-vit", "vit", "head", "random", sum(p.numel() for p in model.parameters()), "")
    info = get_method("difffit")
    adapted_model = info.apply(bb, validate_options(info, {}))
    assert {n for n in trainable_names(adapted_model) if "gamma" in n} == {f"blocks.{i}.{m}.difffit_gamma" for i in (0, 1) for m in ("attn", "mlp.2")}
    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in counted_parameters(adapted_model):
            if p.requires_grad:  # off their init, so that merging γ and the biases is not trivially exact
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
        expected = adapted_model(x)
        plain = TinyViT()
        plain.load_state_dict(info.merge(adapted_model), strict=True)
        assert torch.allclose(plain(x), expected, atol=1e-5)
        adapted_model.blocks[0].attn.difffit_gamma.zero_()
        assert not torch.allclose(adapted_model(x), expected, atol=1e-3)  # γ is applied (out_proj is not called as a module)
