"""Adapters: AdaptFormer, Houlsby bottleneck adapters and TSA's parallel convolutions."""

import pytest
import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import adapted, images, method_params, perturb_trainable, rel_diff, tiny_backbone

from medpeft_cli.methods import get_method
from medpeft_cli.methods.common import stage_convs, trainable_names

DEPTH, WIDTH = 6, 64  # test_vit


def _bottleneck(width: int, m: int) -> int:
    return width * m + m + m * width + width  # down (weight, bias) + up (weight, bias)


def test_adaptformer_adds_one_scaled_adaptmlp_per_block_parallel_to_the_mlp():
    assert method_params("adaptformer", "test_vit") == DEPTH * _bottleneck(WIDTH, 64)
    assert method_params("adaptformer", "test_vit", bottleneck=8) == DEPTH * _bottleneck(WIDTH, 8)
    _, model = adapted("adaptformer", "test_vit", scale=0.1)
    perturb_trainable(model)
    mlp = model.blocks[2].mlp
    h = torch.randn(3, 5, WIDTH)  # the MLP's input, i.e. the block's pre-MLP LayerNorm output
    ad = mlp.adaptmlp
    with torch.no_grad():
        plain = mlp.fc2(mlp.act(mlp.fc1(h)))
        expected = plain + 0.1 * ad.up(torch.relu(ad.down(h)))
        assert torch.allclose(mlp(h), expected, atol=1e-6)


def test_houlsby_adapters_follow_attention_and_mlp_and_train_the_norms():
    norms = (2 * DEPTH + 1) * 2 * WIDTH
    assert method_params("adapter", "test_vit") == 2 * DEPTH * _bottleneck(WIDTH, 8) + norms
    assert method_params("adapter", "test_vit", train_norms=False) == 2 * DEPTH * _bottleneck(WIDTH, 8)
    _, model = adapted("adapter", "test_vit", bottleneck=4)
    names = set(trainable_names(model))
    assert {"blocks.0.attn.adapter.down.weight", "blocks.0.mlp.adapter.up.bias", "blocks.0.norm1.weight"} <= names


def test_tsa_puts_a_1x1_conv_beside_every_conv_of_the_residual_stages():
    bb = tiny_backbone("test_resnet")
    convs = stage_convs(bb.model)
    assert all(n.startswith("layer") for n, _ in convs) and not any(n.startswith("conv1") for n, _ in convs)  # stem excluded
    assert method_params("tsa", "test_resnet") == sum(c.out_channels * c.in_channels // c.groups for _, c in convs)
    spatial = [c for _, c in convs if max(c.kernel_size) > 1]
    assert method_params("tsa", "test_resnet", convs="spatial") == sum(c.out_channels * c.in_channels for c in spatial)
    # ConvNeXt: depthwise convs get depthwise (channel-wise) adapters, downsampling convs full ones
    bb = tiny_backbone("test_convnext")
    assert method_params("tsa", "test_convnext") == sum(c.out_channels * c.in_channels // c.groups for _, c in stage_convs(bb.model))


def test_tsa_is_conv_plus_parallel_adapter_and_folds_into_the_kernel_centre():
    _, model = adapted("tsa", "test_resnet")
    perturb_trainable(model)
    conv = model.layer2[0].conv1  # 3x3, stride 2
    h = torch.randn(2, conv.in_channels, 9, 9)
    with torch.no_grad():
        plain = torch.nn.functional.conv2d(h, conv.weight, None, conv.stride, conv.padding)
        parallel = torch.nn.functional.conv2d(h, conv.tsa.weight, None, conv.stride)
        assert torch.allclose(conv(h), plain + parallel, atol=1e-6)
        state = get_method("tsa").merge(model)
        folded = torch.nn.functional.conv2d(h, state["layer2.0.conv1.weight"], None, conv.stride, conv.padding)
        assert torch.allclose(folded, plain + parallel, atol=1e-5)


@pytest.mark.parametrize("method", ["adaptformer", "adapter"])
def test_bottleneck_adapters_cannot_be_merged(method):
    assert get_method(method).merge is None  # a non-linearity sits inside


def test_adapters_start_as_the_identity_on_swin():
    bb = tiny_backbone("swin")
    x = images()
    with torch.no_grad():
        base = bb.model(x)
        for method in ("adaptformer", "adapter"):
            _, model = adapted(method, "swin")
            assert rel_diff(model(x), base) < 1e-6
