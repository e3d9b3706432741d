"""Methods implemented by HF peft: their trainable tensors, the study's LoRA on q and v, peft's adapter format."""

import pytest
import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import adapted, images, method_params, perturb_trainable, rel_diff, tiny_backbone

from medpeft_cli.errors import UserError
from medpeft_cli.methods import get_method
from medpeft_cli.methods.common import trainable_names
from medpeft_cli.methods.qkv import SplitQKV, split_fused_qkv
from medpeft_cli.train.checkpoint import load_weights, prepare_for_adapter, save_weights

DEPTH, WIDTH, HIDDEN = 6, 64, 192  # test_vit


def test_splitting_the_fused_qkv_keeps_the_function_and_the_weights():
    bb = tiny_backbone("test_vit")
    fused = bb.model.blocks[0].attn.qkv.weight.detach().clone()
    x = images()
    with torch.no_grad():
        before = bb.model(x)
        assert split_fused_qkv(bb.model) == DEPTH
        after = bb.model(x)
    split = bb.model.blocks[0].attn.qkv
    assert isinstance(split, SplitQKV)
    assert torch.equal(torch.cat([split.q.weight, split.k.weight, split.v.weight]), fused)
    assert rel_diff(after, before) < 1e-6


def test_lora_on_q_and_v_only_is_the_study_setting():
    _, model = adapted("lora", "test_vit", rank=8, targets=["q", "v"])
    lora = [n for n in trainable_names(model) if "lora_" in n]
    assert len(lora) == DEPTH * 4 and all(".attn.qkv.q.lora_" in n or ".attn.qkv.v.lora_" in n for n in lora)
    # r x C (A) and C x r (B) for q and for v: 4rC per block, as many as LoRA on the fused qkv (rC + 3C·r)
    assert method_params("lora", "test_vit", rank=8, targets=["q", "v"]) == DEPTH * 4 * 8 * WIDTH
    assert method_params("lora", "test_vit", rank=8) == DEPTH * 4 * 8 * WIDTH


def test_split_qkv_adapter_reloads_with_peft_and_merges_back_to_timm_keys(tmp_path):
    from peft import PeftModel

    bb, model = adapted("lora", "test_vit", targets=["q", "v"])
    perturb_trainable(model)
    x = images()
    with torch.no_grad():
        expected = model.eval()(x)
    save_weights(model, tmp_path, peft_owned=True)
    fresh = tiny_backbone("test_vit").model
    prepare_for_adapter(fresh, tmp_path / "adapter")  # splits qkv, as recorded beside the adapter
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    state = get_method("lora").merge(loaded)
    assert set(state) == set(tiny_backbone("test_vit").model.state_dict())
    plain = tiny_backbone("test_vit").model
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert rel_diff(plain(x), expected) < 1e-5


def test_peft_method_sizes_follow_their_papers():
    r = 8
    qkv = [(WIDTH, 3 * WIDTH)] * DEPTH  # (in, out) of each adapted layer
    assert method_params("dora", "test_vit", rank=r) == sum(r * i + o * r + o for i, o in qkv)  # + magnitude vector
    assert method_params("loha", "test_vit", rank=r) == sum(2 * r * (i + o) for i, o in qkv)
    assert method_params("vera", "test_vit", rank=r) == sum(r + o for _, o in qkv)  # d and b vectors
    assert method_params("oft", "test_vit", block_size=16) == DEPTH * (WIDTH // 16) * (16 * 15 // 2)  # skew-symmetric blocks
    assert method_params("boft", "test_vit", block_size=8, butterfly_factor=1) == DEPTH * ((WIDTH // 8) * 8 * 8 + 3 * WIDTH)  # R blocks + s
    # (IA)^3: one vector on k, one on v, one on the input of fc2
    assert method_params("ia3", "test_vit") == DEPTH * (WIDTH + WIDTH + HIDDEN)
    assert method_params("lokr", "test_vit") > 0


def test_ia3_scales_keys_values_and_the_mlp_input():
    _, model = adapted("ia3", "test_vit")
    scaled = {n.removeprefix("base_model.model.").split(".ia3_l")[0] for n in trainable_names(model) if ".ia3_l" in n}
    assert scaled == {
        f"blocks.{i}.{m}" for i in range(DEPTH) for m in ("attn.qkv.k", "attn.qkv.v", "mlp.fc2")
    }


def test_lora_on_eva_goes_through_the_adapted_qkv_layer():
    # EVA computes qkv with F.linear(x, qkv.weight) when it has q/v biases, which would skip a peft layer.
    bb = tiny_backbone("eva")
    x = images()
    with torch.no_grad():
        base = bb.model(x)
    _, model = adapted("lora", "eva")
    perturb_trainable(model)
    with torch.no_grad():
        assert rel_diff(model(x), base) > 1e-3


def test_invalid_peft_options_are_one_clear_error():
    with pytest.raises(UserError, match=r"oft block_size 48 does not fit .*choose one of \[2, 4, 8, 16, 32, 64\]"):
        adapted("oft", "test_vit", block_size=48)
    with pytest.raises(UserError, match="feedforward modules .* must also be in targets"):
        adapted("ia3", "test_vit", targets=["qkv"], feedforward=["fc2"])
    with pytest.raises(UserError, match="VeRA target 'conv' matches no Linear module of test_vit"):
        adapted("vera", "test_vit", targets=["conv"])


def test_boft_refuses_to_silently_drop_its_butterfly_factors():
    from peft.tuners.boft.layer import get_fbd_cuda

    if get_fbd_cuda() is not None:
        _, model = adapted("boft", "test_vit", butterfly_factor=2)
        assert next(p for n, p in model.named_parameters() if "boft_R" in n).shape[0] == 2
        return
    # peft's pure-PyTorch path (no CUDA extension) would train with one factor whatever was asked for
    with pytest.raises(UserError, match="BOFT needs its CUDA extension .* butterfly_factor=2 .*would silently use 1"):
        adapted("boft", "test_vit", butterfly_factor=2)


def test_peft_runs_keep_batchnorm_statistics_of_the_backbone(tmp_path):
    # A ViT with a convolutional (BatchNorm) stem, like the ViT-ResNet hybrids: peft saves only adapter
    # weights, so the statistics training changed are saved beside them.
    import timm
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    from medpeft_cli.methods import validate_options
    from medpeft_cli.models.backbones import Backbone, detect_family
    from medpeft_cli.models.timm_source import head_name as timm_head

    def hybrid():
        torch.manual_seed(0)
        r = timm.create_model("test_resnet")
        stem = torch.nn.Sequential(r.conv1, r.bn1, r.act1, r.maxpool, r.layer1, r.layer2)
        stem.num_features = 48
        vit = VisionTransformer(img_size=32, patch_size=1, embed_dim=64, depth=1, num_heads=2, num_classes=3,
                                embed_layer=lambda **kw: HybridEmbed(stem, feature_size=(4, 4), feature_ratio=8, **kw))
        return Backbone(vit.eval(), "hybrid", detect_family(vit), timm_head(vit), "random", 0, "")

    info = get_method("lora")
    model = info.apply(hybrid(), validate_options(info, {}))
    perturb_trainable(model)
    model.train()
    model(images(8))  # moves the stem's BatchNorm running statistics
    model.eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
    save_weights(model, tmp_path, peft_owned=True)
    assert (tmp_path / "adapter" / "medpeft_norm_stats.safetensors").is_file()
    loaded = load_weights(hybrid().model, tmp_path, peft_owned=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
