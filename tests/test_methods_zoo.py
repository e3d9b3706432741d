"""Every registered method x every backbone family it supports: the invariants a user relies on.

For each pair: frozen parameters get no gradient and stay bitwise unchanged after optimizer steps,
gradients reach every trainable parameter, the model equals the frozen backbone at init (except VPT,
whose prompts change attention from the start), save -> load into a fresh backbone gives identical
logits, and (for mergeable methods) the merged plain timm state dict gives the same logits within
1e-5 relative. Pairs that are not supported are refused with one line naming the supported families.

The helpers here are shared by the per-family test files (test_methods_<family>.py).
"""

from __future__ import annotations

import pytest
import torch

from medpeft_cli.errors import UserError
from medpeft_cli.methods import FAMILIES, check_supported, get_method, list_methods, validate_options
from medpeft_cli.models.backbones import Backbone, _head_name, detect_family
from medpeft_cli.train.checkpoint import load_weights, save_weights

NUM_CLASSES = 3
SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one thread; several threads on shared cores mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
NOT_IDENTITY_AT_INIT = {"vpt-shallow", "vpt-deep"}  # prompts join attention from the first step
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
    head = model.get_submodule(_head_name(model))
    torch.nn.init.normal_(head.weight, std=0.5)  # some timm heads start at zero (MLP-Mixer, EVA): logits would be 0
    family = detect_family(model)
    assert family == FAMILY_OF[name], f"{name} detected as {family}"
    return Backbone(model, name, family, _head_name(model), f"random-init (seed {seed})", sum(p.numel() for p in model.parameters()), "")


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


PAIRS = [(m.name, REPRESENTATIVE[f]) for m in list_methods("classification") for f in FAMILIES if f in m.families]
# The study's ViT methods on DeiT, CLIP-style and EVA ViTs; the others on EVA, whose attention differs
# most from timm's VisionTransformer (rotary embeddings, q/v biases beside a fused qkv).
STUDY_VIT_METHODS = ("attention", "layernorm", "bitfit", "lora", "ssf", "adaptformer")
REFUSED_ON_EVA = {"vpt-shallow", "vpt-deep"}  # rotary position embeddings: see test_methods_vpt.py
VIT_VARIANT_PAIRS = [(m, v) for m in STUDY_VIT_METHODS for v in ("deit", "clip_vit", "eva")] + [
    (m.name, "eva") for m in list_methods("classification")
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
    if method not in NOT_IDENTITY_AT_INIT:
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


@pytest.mark.parametrize("method, backbone", VIT_VARIANT_PAIRS, ids=[f"{m}-{b}" for m, b in VIT_VARIANT_PAIRS])
def test_vit_methods_work_on_deit_clip_and_eva(method, backbone, tmp_path):
    check_invariants(method, backbone, tmp_path)


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


def test_every_method_of_the_issue_is_registered_with_a_citation():
    study = {"full", "linear", "tsa", "bn", "bias", "ssf", "attention", "layernorm", "bitfit", "lora", "adaptformer"}
    beyond = {"vpt-shallow", "vpt-deep", "fact-tt", "fact-tk", "adapter", "dora", "loha", "lokr", "ia3", "oft", "boft", "vera"}
    methods = {m.name: m for m in list_methods("classification")}
    assert study | beyond <= set(methods)
    for name in (study | beyond) - {"full", "linear"}:
        info = methods[name]
        assert info.url.startswith("https://arxiv.org/abs/") and "20" in info.cite, name
        authors = info.cite.split(":")[0]
        assert authors in info.apply.__doc__, f"{name}'s docstring does not cite {authors}"
    cnn = {"full", "linear", "tsa", "bn", "bias", "ssf"}
    vit = {"full", "linear", "attention", "layernorm", "bitfit", "lora", "ssf", "adaptformer"}
    assert all("cnn" in methods[m].families for m in cnn)
    assert all({"vit", "hvit"} <= methods[m].families for m in vit)
    assert methods["vera"].families <= {"vit", "hvit"}


def test_conv_attention_hybrids_are_not_offered_transformer_methods():
    import timm

    for name in ("test_maxvit", "test_coatnet"):  # BatchNorm conv blocks + 1x1-conv attention
        assert detect_family(timm.create_model(name, num_classes=NUM_CLASSES)) == "other"
