"""Each method's trainable-parameter set on a tiny timm ViT/CNN, frozen weights, identity init, save/load."""

import pytest
import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)

from medpeft_cli.errors import UserError
from medpeft_cli.methods import check_supported, get_method, list_methods, validate_options
from medpeft_cli.methods.common import trainable_names
from medpeft_cli.models import create_backbone
from medpeft_cli.train.checkpoint import load_weights, save_weights

NUM_CLASSES = 4


def prepared(method: str, backbone: str = "test_vit", **options):
    bb = create_backbone(backbone, "random", NUM_CLASSES, 32, seed=0)
    # timm zero-initialises the last BatchNorm scale of each residual block, which would cut the
    # gradient to the rest of that branch for methods that cannot train the scale (BitFit on a
    # random-init ResNet). Pretrained weights have non-zero scales; mimic that.
    for module in bb.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    info = get_method(method)
    check_supported(info, bb.family, backbone)
    return bb, info.apply(bb, validate_options(info, options))


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_registry_lists_methods_with_citations():
    names = [m.name for m in list_methods()]
    assert {"full", "linear", "bitfit", "lora"} <= set(names)
    assert all(m.cite and m.summary for m in list_methods())


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(UserError, match="unknown method 'lorra'; available: .*lora"):
        get_method("lorra")


def test_full_trains_everything():
    bb, model = prepared("full")
    assert n_trainable(model) == bb.num_params == 300_356


def test_linear_trains_only_the_head():
    _, model = prepared("linear")
    assert trainable_names(model) == ["head.weight", "head.bias"]
    assert n_trainable(model) == 64 * NUM_CLASSES + NUM_CLASSES  # test_vit width 64


def test_bitfit_trains_every_bias_and_the_head():
    bb, model = prepared("bitfit")
    names = trainable_names(model)
    expected = {n for n, _ in bb.model.named_parameters() if n.endswith(".bias")} | {"head.weight"}
    assert set(names) == expected
    assert "blocks.0.attn.qkv.bias" in names and "blocks.0.attn.qkv.weight" not in names
    assert n_trainable(model) == 4_228


def test_lora_trains_low_rank_factors_on_qkv_and_the_head():
    _, model = prepared("lora", rank=4)
    names = trainable_names(model)
    lora = [n for n in names if "lora_" in n]
    depth = 6  # test_vit blocks
    assert len(lora) == 2 * depth and all(".attn.qkv.lora_" in n for n in lora)
    head = [n for n in names if "lora_" not in n]
    assert head == ["base_model.model.head.modules_to_save.default.weight", "base_model.model.head.modules_to_save.default.bias"]
    # A: r x 64, B: 192 x r per block, plus the head
    assert n_trainable(model) == depth * (4 * 64 + 192 * 4) + 64 * NUM_CLASSES + NUM_CLASSES


def test_lora_is_the_identity_at_init():
    x = torch.randn(2, 3, 32, 32)
    bb = create_backbone("test_vit", "random", NUM_CLASSES, 32, seed=0)
    with torch.no_grad():
        before = bb.model(x)
    _, model = prepared("lora")
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_lora_refuses_cnn_and_unknown_targets():
    with pytest.raises(UserError, match="does not support backbone 'test_resnet' .*supports: vit"):
        prepared("lora", backbone="test_resnet")
    with pytest.raises(UserError, match="matches no Linear module"):
        prepared("lora", targets=["q_proj"])


@pytest.mark.parametrize("method, backbone", [("linear", "test_vit"), ("bitfit", "test_vit"), ("lora", "test_vit"), ("bitfit", "test_resnet"), ("full", "test_resnet")])
def test_frozen_weights_unchanged_and_trainable_ones_move(method, backbone):
    _, model = prepared(method, backbone)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    moved = [n for n, v in trainable.items() if not torch.equal(params[n], v)]
    assert set(moved) == set(trainable)  # gradients reached every trainable parameter


@pytest.mark.parametrize("method, backbone", [("lora", "test_vit"), ("bitfit", "test_vit"), ("bitfit", "test_resnet"), ("linear", "test_vit")])
def test_save_and_reload_gives_identical_logits(tmp_path, method, backbone):
    bb, model = prepared(method, backbone)
    info = get_method(method)
    with torch.no_grad():  # perturb the trainable state so the check is not trivially true
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # updates BatchNorm statistics of CNNs
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    save_weights(model, tmp_path, info.peft_owned)
    fresh, _ = prepared("full", backbone)  # same initial weights, not yet adapted
    base = fresh.model if info.peft_owned else info.apply(fresh, validate_options(info, {}))
    loaded = load_weights(base, tmp_path, info.peft_owned).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_lora_adapter_loads_with_peft_itself(tmp_path):
    from peft import PeftModel

    _, model = prepared("lora")
    save_weights(model, tmp_path, peft_owned=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    fresh = create_backbone("test_vit", "random", NUM_CLASSES, 32, seed=0).model
    assert isinstance(PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")), PeftModel)
