"""Text-to-image methods on the tiny SD U-Net: exactly the intended parameters train, and the methods
that add parameters (LoRA, SV-Diff, DiffFit) leave the U-Net's outputs unchanged at initialisation."""

from __future__ import annotations

import copy

import pytest
import torch

from medpeft_cli.errors import UserError
from medpeft_cli.methods import get_method, list_methods, validate_options

T2I_METHODS = ["full", "attention", "bias", "norm", "bias-norm-attention", "lora", "svdiff", "difffit"]


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny U-Net's ops are too small for thread parallelism to pay off (on shared CPUs it costs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_unet():
    from medpeft_cli.t2i.tiny import build_pipeline

    return build_pipeline().unet


def applied(unet, name: str, **options):
    info = get_method(name, task="t2i")
    fresh = copy.deepcopy(unet)
    return info.apply(fresh, validate_options(info, options))


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def outputs(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), text).sample


def test_registry_lists_the_t2i_methods_apart_from_classification():
    assert [m.name for m in list_methods("t2i")] == T2I_METHODS
    assert all(m.cite and m.summary and m.task == "t2i" for m in list_methods("t2i"))
    assert get_method("full", task="t2i") is not get_method("full")  # same name, two tasks
    with pytest.raises(UserError, match="unknown method 'ssf' for task t2i; available: .*difffit"):
        get_method("ssf", task="t2i")


def test_full_trains_every_unet_parameter(tiny_unet):
    model = applied(tiny_unet, "full")
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_selective_methods_train_their_parameter_groups(tiny_unet):
    bias = trainable(applied(tiny_unet, "bias"))
    assert bias and all(n.endswith(".bias") for n in bias)
    assert bias == {n for n, _ in tiny_unet.named_parameters() if n.endswith(".bias")}

    norm = trainable(applied(tiny_unet, "norm"))
    assert norm and all("norm" in n.split(".")[-2] for n in norm)  # norm, norm1..3, conv_norm_out
    assert "conv_norm_out.weight" in norm and "down_blocks.0.resnets.0.norm1.weight" in norm
    assert not any("to_q" in n or "conv1" in n for n in norm)

    attention = trainable(applied(tiny_unet, "attention"))
    assert attention and all(".attn1." in n or ".attn2." in n for n in attention)
    assert {n.rsplit(".", 2)[-2] for n in attention if n.endswith("weight")} == {"to_q", "to_k", "to_v", "0"}  # to_out.0

    union = trainable(applied(tiny_unet, "bias-norm-attention"))
    assert union == bias | norm | attention


def test_lora_trains_rank_r_updates_of_the_attention_projections(tiny_unet):
    model = applied(tiny_unet, "lora", rank=2)
    names = trainable(model)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"to_q", "to_k", "to_v", "0"}
    a = next(p for n, p in model.named_parameters() if n.endswith("to_q.lora_A.default.weight"))
    assert a.shape[0] == 2


@pytest.mark.parametrize("name", ["lora", "svdiff", "difffit"])
def test_added_parameters_leave_the_unet_unchanged_at_init(tiny_unet, name):
    before = outputs(tiny_unet)
    model = applied(tiny_unet, name)
    assert torch.equal(outputs(model), before)  # bitwise: identity at initialisation


def test_svdiff_trains_one_shift_per_singular_value_and_changes_the_output_once_shifted(tiny_unet):
    from torch import nn

    model = applied(tiny_unet, "svdiff")
    names = trainable(model)
    assert names and all(n.endswith("parametrizations.weight.0.delta") for n in names)
    layers = [m for m in tiny_unet.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    expected = sum(min(m.weight.shape[0], m.weight[0].numel()) for m in layers)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    before = outputs(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("delta"):
                p.fill_(0.05)
    assert not torch.allclose(outputs(model), before)


def test_svdiff_shift_scales_the_singular_values():
    from medpeft_cli.methods.layers.spectral import add_spectral_shifts

    layer = torch.nn.Linear(6, 4)
    add_spectral_shifts(layer)
    shift = layer.parametrizations.weight[0]
    with torch.no_grad():
        shift.delta.copy_(torch.tensor([0.5, -10.0, 0.0, 0.1]))
    singular = torch.linalg.svdvals(layer.weight)
    expected = torch.relu(shift.s + shift.delta).sort(descending=True).values
    assert torch.allclose(singular, expected, atol=1e-5)  # W = U diag(ReLU(s + d)) V^T


def test_difffit_trains_bias_norm_and_new_scale_factors(tiny_unet):
    model = applied(tiny_unet, "difffit")
    names = trainable(model)
    gammas = {n for n in names if n.endswith("difffit_gamma")}
    bias = {n for n, _ in tiny_unet.named_parameters() if n.endswith(".bias")}
    assert names == gammas | bias | trainable(applied(tiny_unet, "norm"))
    assert any(".attn1." in n for n in gammas) and any(".attn2." in n for n in gammas)
    assert any(".ff." in n for n in gammas) and any("resnets" in n and "conv2" in n for n in gammas)
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if n in gammas)

