"""Selective methods train an existing subset of the backbone: exactly which parameters, and how many."""

import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import adapted, method_params

from medpeft_cli.methods.common import counted_parameters, trainable_names


def _head(bb) -> set[str]:
    return {f"{bb.head_name}.{n}" for n, _ in bb.model.get_submodule(bb.head_name).named_parameters()}


def test_bitfit_on_eva_includes_the_separate_q_and_v_biases():
    bb, model = adapted("bitfit", "eva")
    names = set(trainable_names(model))
    assert {"blocks.0.attn.q_bias", "blocks.0.attn.v_bias"} <= names
    assert "blocks.0.attn.qkv.weight" not in names
    expected = {n for n, _ in bb.model.named_parameters() if n.endswith(".bias") or n.endswith("_bias")} | _head(bb)
    assert names == expected


def test_bias_tuning_on_resnet_trains_the_batchnorm_biases_and_head():
    bb, model = adapted("bias", "test_resnet")
    bn_biases = {f"{n}.bias" for n, m in bb.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert set(trainable_names(model)) == bn_biases | _head(bb)  # timm ResNet convs have no bias
    assert method_params("bias", "test_resnet") == sum(m.num_features for m in bb.model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_bn_tuning_trains_norm_scales_and_shifts_only():
    bb, model = adapted("bn", "test_resnet")
    bns = [m for m in bb.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert method_params("bn", "test_resnet") == sum(2 * m.num_features for m in bns)
    assert all(n.endswith((".weight", ".bias")) for n in trainable_names(model))
    # ConvNeXt normalises with LayerNorm (channels-last in blocks, LayerNorm2d in stem/downsamples/head)
    bb, model = adapted("bn", "test_convnext")
    names = set(trainable_names(model))
    assert "stages.1.blocks.0.norm.weight" in names and "stages.1.downsample.0.bias" in names and "stem.1.weight" in names
    assert "stages.1.blocks.0.conv_dw.weight" not in names and "stages.1.blocks.0.mlp.fc1.bias" not in names


def test_attention_tuning_trains_attention_layers_position_embedding_and_head():
    bb, model = adapted("attention", "test_vit")
    names = set(trainable_names(model))
    attn = {n for n, _ in bb.model.named_parameters() if ".attn." in n}
    assert names == attn | {"pos_embed"} | _head(bb)
    width, depth = 64, 6
    tokens = 1 + (32 // 16) ** 2  # class token + 2x2 patches at 32 px
    per_block = (width * 3 * width + 3 * width) + (width * width + width)  # qkv + proj
    assert method_params("attention", "test_vit") == depth * per_block + tokens * width


def test_attention_tuning_on_swin_includes_relative_position_tables():
    _, model = adapted("attention", "swin")
    names = trainable_names(model)
    assert any(n.endswith("attn.relative_position_bias_table") for n in names)
    assert not any(".mlp." in n or ".norm" in n for n in names if not n.startswith("head"))


def test_layernorm_tuning_is_peft_ln_tuning_of_every_norm_layer():
    bb, model = adapted("layernorm", "test_vit")
    names = trainable_names(model)
    assert all("ln_tuning_layers" in n or ".modules_to_save." in n for n in names)
    depth, width = 6, 64
    assert method_params("layernorm", "test_vit") == (2 * depth + 1) * 2 * width  # norm1, norm2 per block + final norm
    # peft keeps the frozen original beside each tuned copy; the forward pass uses only the copy
    assert sum(p.numel() for _, p in counted_parameters(model)) == bb.num_params


def test_full_and_linear_apply_to_every_family():
    for backbone in ("swin", "mixer"):
        bb, model = adapted("full", backbone)
        assert all(p.requires_grad for p in model.parameters())
        bb, model = adapted("linear", backbone)
        assert set(trainable_names(model)) == _head(bb)
