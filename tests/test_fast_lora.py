"""The fused LoRA layer (methods/fast_lora.py) computes what peft's LoRA layer computes, and saves what peft loads.

Both models are built from the same random backbone with the same seed, so their LoRA parameters start
equal; B is then set to random values (peft starts it at zero, which would hide a wrong B path).
"""

import pytest
import torch
from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.methods import get_method, validate_options

TARGETS_ALL = ["qkv", "proj", "fc1", "fc2"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _model(impl: str, targets=("qkv",), dtype=torch.float64, **options):
    from medpeft_cli.models import create_backbone

    info = get_method("lora")
    backbone = create_backbone("test_vit", "random", 3, 32, seed=0)
    model = info.apply(backbone, validate_options(info, {"impl": impl, "targets": list(targets), **options}))
    model.to(dtype)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=dtype) * 0.1)
    return model


def _lora_layers(model):
    from peft.tuners.lora import Linear

    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, Linear)}


def _forward_backward(model, x):
    model.train()
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad, grads


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("targets", [["qkv"], TARGETS_ALL, ["q", "v"]])
def test_fused_layer_matches_peft_in_float64(targets, monkeypatch):
    from medpeft_cli.methods import fast_lora

    fused, reference = _model("fused", targets), _model("peft", targets)
    assert set(_lora_layers(fused).values()) == {"FusedLoraLinear"}
    assert set(_lora_layers(reference).values()) == {"Linear"}
    assert _lora_layers(fused).keys() == _lora_layers(reference).keys()
    calls = []
    monkeypatch.setattr(fast_lora, "merged_lora_linear", lambda *a: calls.append(1) or fast_lora._MergedLoRALinear.apply(*a))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out_f, gx_f, grads_f = _forward_backward(fused, x)
    assert len(calls) == len(_lora_layers(fused))  # every LoRA layer took the fused path, none fell back to peft's
    out_r, gx_r, grads_r = _forward_backward(reference, x)
    assert _rel(out_f, out_r) < 1e-12
    assert _rel(gx_f, gx_r) < 1e-12
    assert grads_f.keys() == grads_r.keys() and any("lora_A" in n for n in grads_f)
    for name in grads_r:
        assert _rel(grads_f[name], grads_r[name]) < 1e-12, name


def test_fused_function_gradients_pass_gradcheck_with_trainable_base_weight_and_bias():
    from medpeft_cli.methods.fast_lora import merged_lora_linear

    generator = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_(True)

    inputs = (leaf(2, 3, 5), leaf(4, 5), leaf(4), leaf(2, 5), leaf(4, 2))
    assert torch.autograd.gradcheck(lambda x, w, b, a, bb: merged_lora_linear(x, w, b, a, bb, 0.7), inputs)


def test_bf16_autocast_on_cpu_stays_close_to_peft():
    fused, reference = _model("fused", TARGETS_ALL, torch.float32), _model("peft", TARGETS_ALL, torch.float32)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    results = []
    for model in (fused, reference):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().sum().backward()
        results.append((out.float(), model.base_model.model.blocks[0].attn.qkv.lora_A["default"].weight.grad))
    assert results[0][0].dtype == torch.float32
    assert _rel(results[0][0], results[1][0]) < 3e-2  # bf16 operands: errors of a few 1e-3 per layer
    assert results[0][1].dtype == torch.float32 and _rel(results[0][1], results[1][1]) < 5e-2


def test_saved_adapter_loads_with_peft_and_gives_the_same_outputs(tmp_path):
    from peft import PeftModel

    from medpeft_cli.models import create_backbone

    fused = _model("fused", TARGETS_ALL, torch.float32)
    fused.save_pretrained(str(tmp_path / "adapter"))
    config = (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert "Fused" not in config and "custom" not in config.lower()
    base = create_backbone("test_vit", "random", 3, 32, seed=0).model
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert set(_lora_layers(loaded).values()) == {"Linear"}  # stock peft layers
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    fused.eval(), loaded.eval()
    with torch.no_grad():  # evaluation runs peft's own forward: the same bits as the reloaded adapter
        assert torch.equal(fused(x), loaded(x))
    fused.train()
    assert torch.allclose(fused(x), loaded(x), atol=1e-5, rtol=1e-4)  # the fused training forward


def test_merge_and_disabled_adapters_use_peft_semantics():
    fused = _model("fused", TARGETS_ALL, torch.float32).train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    adapted = fused(x).detach()
    with fused.disable_adapter():
        plain = fused(x).detach()
    assert not torch.allclose(adapted, plain, atol=1e-4)
    merged = fused.merge_and_unload()
    assert torch.allclose(merged(x), adapted, atol=1e-5, rtol=1e-4)


def test_fused_with_dropout_is_refused_and_auto_falls_to_peft():
    with pytest.raises(UserError, match="impl: 'fused' folds the update.*use impl=peft"):
        validate_options(get_method("lora"), {"impl": "fused", "dropout": 0.1})
    model = _model("auto", dropout=0.1)
    assert set(_lora_layers(model).values()) == {"Linear"}
    assert isinstance(model.base_model.model.blocks[0].attn.qkv.lora_dropout["default"], nn.Dropout)
    assert set(_lora_layers(_model("auto")).values()) == {"FusedLoraLinear"}


def test_impl_is_not_part_of_the_run_key():
    from medpeft_cli.config import build_spec, run_key

    def key(*overrides):
        return run_key(build_spec(flags={"method": "lora"}, overrides=["method.rank=8", *overrides]))

    assert key("method.impl=fused") == key("method.impl=peft") == key()
    assert key("method.rank=4") != key()
    from medpeft_cli.run import resolve

    # The embedded default of medpeft 0.x (before the default became a real backbone), spelled out.
    old_default = {"dataset": "synthetic-lesions", "backbone": "vit_tiny_patch16_224", "weights": "random", "image_size": 64,
                   "method": "lora", "train.epochs": 5, "train.batch_size": 64}  # fmt: skip
    spec, _, options = resolve(build_spec(flags=old_default))  # its options filled (impl included)
    assert options.impl == "fused" and run_key(spec) == "abe09a8ab6870ea6"  # its key from before impl existed
