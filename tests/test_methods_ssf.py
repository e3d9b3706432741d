"""SSF: where the scale/shift pairs go, how many there are, and that they fold into the layer before them."""

import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import adapted, images, method_params, perturb_trainable, rel_diff, tiny_backbone

from medpeft_cli.methods import get_method
from medpeft_cli.methods.common import trainable_names
from medpeft_cli.methods.classification.ssf import ssf_targets


def test_ssf_on_a_vit_follows_every_linear_and_layernorm():
    _, model = adapted("ssf", "test_vit")
    names = set(trainable_names(model))
    for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2"):
        assert {f"blocks.3.{layer}.ssf.scale", f"blocks.3.{layer}.ssf.shift"} <= names
    assert {"patch_embed.proj.ssf.scale", "norm.ssf.shift"} <= names
    depth, width, hidden = 6, 64, 192
    per_block = 2 * (3 * width + width + hidden + width + 2 * width)  # qkv, proj, fc1, fc2, two norms
    assert method_params("ssf", "test_vit") == depth * per_block + 2 * width + 2 * width  # + patch embedding + final norm


def test_ssf_on_a_resnet_sits_after_each_batchnorm_not_the_bias_free_convs():
    bb = tiny_backbone("test_resnet")
    targets = ssf_targets(bb.model, bb.head_name)
    assert targets and all(isinstance(m, torch.nn.BatchNorm2d) for _, m in targets)
    assert len(targets) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in bb.model.modules())
    assert method_params("ssf", "test_resnet") == sum(2 * m.num_features for _, m in targets)


def test_ssf_skips_norm_layers_with_a_built_in_activation():
    import timm

    model = timm.create_model("test_efficientnet", num_classes=3)
    targets = ssf_targets(model, "classifier")
    fused = [n for n, m in model.named_modules() if type(m).__name__ == "BatchNormAct2d" and not isinstance(m.act, torch.nn.Identity)]
    assert fused and not set(fused) & {n for n, _ in targets}


def test_ssf_is_scale_times_output_plus_shift():
    _, model = adapted("ssf", "test_vit")
    perturb_trainable(model)
    fc1 = model.blocks[0].mlp.fc1
    x = torch.randn(5, 64)
    with torch.no_grad():
        plain = torch.nn.functional.linear(x, fc1.weight, fc1.bias)
        assert torch.allclose(fc1(x), plain * fc1.ssf.scale + fc1.ssf.shift)


def test_merged_ssf_is_a_plain_state_dict_with_the_same_logits():
    bb, model = adapted("ssf", "test_convnext")
    perturb_trainable(model)
    model.train()
    model(images(8))  # BatchNorm-free ConvNeXt; still exercise train mode
    model.eval()
    state = get_method("ssf").merge(model)
    plain = tiny_backbone("test_convnext").model
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state)
    x = images()
    with torch.no_grad():
        assert rel_diff(plain(x), model(x)) < 1e-5
