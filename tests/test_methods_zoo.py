"""Every registered method x every backbone family it supports: the invariants a user relies on.

For each pair: frozen parameters get no gradient and stay bitwise unchanged after optimizer steps,
gradients reach every trainable parameter, the model equals the frozen backbone at init (except VPT,
whose prompts change attention from the start), save -> load into a fresh backbone gives identical
logits, and (for mergeable methods) the merged plain timm state dict gives the same logits within
1e-5 relative. Pairs that are not supported are refused with one line naming the supported families.

The tiny backbones and helpers are in tiny_models.py, shared with the per-family test files.
"""

from __future__ import annotations

import pytest
import torch

from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from medpeft_cli.errors import UserError
from medpeft_cli.methods import FAMILIES, check_supported, get_method, list_methods, validate_options
from medpeft_cli.models.backbones import detect_family
from medpeft_cli.train.checkpoint import load_weights, save_weights
from tiny_models import NUM_CLASSES, REPRESENTATIVE, TEST_OPTIONS, adapted, images, perturb_trainable, rel_diff, tiny_backbone

# Every set below is read from the registry: a new method is checked on every family it claims.
METHODS = list_methods("classification")
PAIRS = [(m.name, REPRESENTATIVE[f]) for m in METHODS for f in FAMILIES if f in m.families]
# The study's ViT methods on DeiT, CLIP-style and EVA ViTs; the others on EVA, whose attention differs
# most from timm's VisionTransformer (rotary embeddings, q/v biases beside a fused qkv).
STUDY_VIT_METHODS = [m.name for m in METHODS if m.in_study and m.kind != "baseline" and "vit" in m.families]
# The one exception, a fact of the method (rotary position embeddings leave prompts no position; see
# test_methods_vpt.py); test_methods_refused_on_eva keeps it true.
REFUSED_ON_EVA = {"vpt-shallow", "vpt-deep"}
VIT_VARIANT_PAIRS = [(m, v) for m in STUDY_VIT_METHODS for v in ("deit", "clip_vit", "eva")] + [
    (m.name, "eva") for m in METHODS
    if "vit" in m.families and m.kind != "baseline" and m.name not in STUDY_VIT_METHODS and m.name not in REFUSED_ON_EVA
]  # fmt: skip


def check_invariants(method: str, backbone: str, tmp_path) -> None:
    info = get_method(method)
    x = images()
    base, model = adapted(method, backbone)
    reference = tiny_backbone(backbone).model
    with torch.no_grad():
        before = reference(x)
        at_init = model(x)
    if info.identity_at_init:
        assert rel_diff(at_init, before) < 1e-6, f"{method} is not the identity at init on {backbone}"

    # gradients reach every trainable parameter, none reaches a frozen one
    perturb_trainable(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen or method == "full", f"{method} freezes nothing"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    model.train()
    for step in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(len(x)) % NUM_CLASSES)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
            assert not no_grad, f"{method} on {backbone}: no gradient reaches {no_grad[:3]}"
            assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
        opt.step()
    params = dict(model.named_parameters())
    changed = [n for n, v in frozen.items() if not torch.equal(params[n], v)]
    assert not changed, f"{method} on {backbone}: frozen parameters changed: {changed[:3]}"

    # save -> load into a fresh backbone -> identical logits (BatchNorm statistics included)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    save_weights(model, tmp_path, info.peft_owned)
    fresh = tiny_backbone(backbone)
    target = fresh.model if info.peft_owned else info.apply(fresh, validate_options(info, TEST_OPTIONS.get(method, {})))
    loaded = load_weights(target, tmp_path, info.peft_owned).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected), f"{method} on {backbone}: reloaded logits differ"

    # merge -> a plain timm state dict with the same logits
    if info.merge is not None:
        state = info.merge(model)
        plain = tiny_backbone(backbone).model
        plain.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert rel_diff(plain(x), expected) < 1e-5, f"{method} on {backbone}: merged logits differ"


@pytest.mark.parametrize("method, backbone", PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_method_invariants(method, backbone, tmp_path):
    check_invariants(method, backbone, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method, backbone", VIT_VARIANT_PAIRS, ids=[f"{m}-{b}" for m, b in VIT_VARIANT_PAIRS])
def test_vit_methods_work_on_deit_clip_and_eva(method, backbone, tmp_path):
    check_invariants(method, backbone, tmp_path)


@pytest.mark.slow
def test_convnext_gets_every_cnn_method(tmp_path):
    for info in list_methods("classification"):
        if "cnn" in info.families:
            (tmp_path / info.name).mkdir()
            check_invariants(info.name, "test_convnext", tmp_path / info.name)


@pytest.mark.parametrize("method", [m.name for m in list_methods("classification") if set(FAMILIES) - m.families])
def test_unsupported_pairs_are_refused_naming_the_supported_families(method):
    info = get_method(method)
    for family in set(FAMILIES) - info.families:
        bb = tiny_backbone(REPRESENTATIVE[family])
        supported = ", ".join(f for f in FAMILIES if f in info.families)
        with pytest.raises(UserError, match=f"does not support backbone .* family '{family}'.*it supports: {supported}\\."):
            check_supported(info, bb.family, bb.name)


@pytest.mark.parametrize("method", sorted(REFUSED_ON_EVA))
def test_methods_refused_on_eva(method):
    with pytest.raises(UserError, match="absolute position embeddings"):
        adapted(method, "eva")


@pytest.mark.parametrize("method", [m.name for m in METHODS])
def test_each_method_states_its_facts_once(method):
    """What `medpeft methods`, the site and the docs tables show comes from the registration alone."""
    info = get_method(method)
    assert info.summary and info.kind in ("baseline", "selective", "reparameterised", "additive")
    assert info.families <= set(FAMILIES) and info.families and info.default_lr > 0
    if info.kind != "baseline":  # a paper: authors: title, venue year, and its arXiv page
        assert info.url.startswith("https://arxiv.org/abs/") and ": " in info.cite and any(str(y) in info.cite for y in range(2015, 2031)), method
        assert info.cite.split(":")[0] not in (info.apply.__doc__ or ""), f"{method}: the citation is written once, in register_method"
    assert info.knob is None or info.options.model_fields[info.knob].annotation is int
    assert set(info.speed_only) <= set(info.options.model_fields)
    assert info.mergeable == (info.merge is not None)


def test_the_study_methods_are_registered_as_such():
    # Dutt et al., MIDL 2024, Tables 2 (CNN) and 3 (ViT): a fact of the paper, checked against the registry's flags.
    cnn = {"full", "linear", "tsa", "bn", "bias", "ssf"}
    vit = {"full", "linear", "attention", "layernorm", "bitfit", "lora", "ssf", "adaptformer"}
    methods = {m.name: m for m in METHODS}
    assert {m.name for m in METHODS if m.in_study} == cnn | vit
    assert all("cnn" in methods[m].families for m in cnn)
    assert all({"vit", "hvit"} <= methods[m].families for m in vit)
    assert methods["vera"].families <= {"vit", "hvit"}


def test_conv_attention_hybrids_are_not_offered_transformer_methods():
    import timm

    for name in ("test_maxvit", "test_coatnet"):  # BatchNorm conv blocks + 1x1-conv attention
        assert detect_family(timm.create_model(name, num_classes=NUM_CLASSES)) == "other"
