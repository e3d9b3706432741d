"""The builtin CIFAR ResNets and their real CIFAR-10 weights (issue 15), and the classifier found by what it does.

The ResNet-20 file ships inside the package (medpeft_cli/resources/weights/cifar10_resnet20/), so these tests
run in any clone, offline."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)

from medpeft_cli.errors import UserError
from medpeft_cli.methods import list_methods, validate_options
from medpeft_cli.models import create_backbone, shape_backbone
from medpeft_cli.models import pretrained_file as pretrained_module
from medpeft_cli.models.builtin_models import BUILTINS
from medpeft_cli.models.cifar_resnet import CifarResNet, PadShortcut
from medpeft_cli.models.sources import BUILTIN, parse_backbone

PACKAGED = pretrained_module.WEIGHTS_DIR / "cifar10_resnet20" / "resnet20-12fca82f.th"
SHA256 = "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"
HEADS = Path(__file__).parent / "fixtures" / "head_models.py"
CLASSES = 3


def _paper_count(depth: int, classes: int = 10) -> int:
    """Parameters of He et al.'s CIFAR ResNet counted from the description: 3x3 convs without bias, BN scale
    and shift, option-A shortcuts without parameters, a Linear 64 -> classes."""
    n = (depth - 2) // 6

    def block(cin: int, cout: int) -> int:
        return 9 * cin * cout + 9 * cout * cout + 4 * cout

    stages = sum(block(cin, cout) + (n - 1) * block(cout, cout) for cin, cout in ((16, 16), (16, 32), (32, 64)))
    return 9 * 3 * 16 + 2 * 16 + stages + 64 * classes + classes


def _file_state() -> dict[str, torch.Tensor]:
    content = torch.load(PACKAGED, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in content["state_dict"].items()}


# --- the architecture -------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, published", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_parameter_counts_match_the_paper(depth, published):
    model = CifarResNet(depth)
    count = sum(p.numel() for p in model.parameters())
    assert count == _paper_count(depth)
    assert abs(count - published) / published < 0.02  # the paper's table (0.27M ... 1.7M)
    assert sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d)) == depth - 1  # + the Linear: `depth` layers


def test_resnet20_has_269722_parameters_and_parameter_free_shortcuts():
    model = CifarResNet(20)
    assert sum(p.numel() for p in model.parameters()) == 269_722
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2 and all(sum(p.numel() for p in s.parameters()) == 0 for s in shortcuts)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)  # global pooling: other sizes work too
    with pytest.raises(ValueError, match="depth 6n \\+ 2"):
        CifarResNet(21)


def test_option_a_subsamples_and_zero_pads_a_quarter_of_the_planes_on_each_side():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(8)(x)  # 16 -> 32 planes: 32 / 4 = 8 zero planes on each side
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_builtin_names_win_over_timm_and_parse_without_torch():
    import subprocess
    import sys

    assert parse_backbone("cifar_resnet56").kind == BUILTIN
    code = "import sys; from medpeft_cli.models.sources import parse_backbone; parse_backbone('cifar_resnet20'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# --- the packaged pretrained weights ----------------------------------------------------------------------


def test_packaged_file_ships_with_its_licence_and_checksum():
    assert hashlib.sha256(PACKAGED.read_bytes()).hexdigest() == SHA256 == BUILTINS["cifar_resnet20"].pretrained.sha256
    licence = (PACKAGED.parent / "LICENSE").read_text()
    assert "Copyright (c) 2018, Yerlan Idelbayev" in licence and "Redistribution and use in source and binary forms" in licence
    assert SHA256 in (PACKAGED.parent / "README.md").read_text()


def test_packaged_file_loads_exactly_into_the_architecture():
    state = _file_state()
    model = CifarResNet(20)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys and len(state) == 97

    bb = create_backbone("cifar_resnet20", "pretrained", 10, 32, seed=0)
    assert bb.weights_source == f"medpeft:cifar10_resnet20 file:resnet20-12fca82f.th sha256:{SHA256} key:state_dict prefix:module."
    loaded = bb.model.state_dict()
    for key, tensor in state.items():
        if not key.startswith("linear."):  # the CIFAR-10 classifier is replaced, even for 10 classes
            assert torch.equal(loaded[key], tensor), key
    assert not torch.equal(loaded["linear.weight"], state["linear.weight"])
    assert (bb.family, bb.head_name, bb.source_kind) == ("cnn", "linear", BUILTIN)


def test_pretrained_forward_differs_from_random_init_and_is_the_published_network():
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    published = CifarResNet(20).eval()
    published.load_state_dict(_file_state())
    pretrained = create_backbone("cifar_resnet20", "pretrained", 10, 32, seed=0).model
    random = create_backbone("cifar_resnet20", "random", 10, 32, seed=0).model
    pretrained.linear = random.linear = published.linear = torch.nn.Identity()  # compare the features
    with torch.no_grad():
        assert torch.allclose(pretrained(images), published(images), atol=0, rtol=0)
        assert (pretrained(images) - random(images)).abs().max() > 0.1


def test_a_damaged_packaged_file_is_refused_before_loading(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10_resnet20"
    folder.mkdir()
    data = bytearray(PACKAGED.read_bytes())
    data[-100] ^= 0xFF
    (folder / PACKAGED.name).write_bytes(bytes(data))
    monkeypatch.setattr(pretrained_module, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(UserError, match=r"refusing the weights file of cifar_resnet20 .*: its sha256 is [0-9a-f]{16}\.\.\., not 12fca82f0bebc413\.\.\. .*reinstall medpeft") as info:
        create_backbone("cifar_resnet20", "pretrained", 2, 32, seed=0)
    assert "\n" not in str(info.value)


def _published_layout(depth: int, path: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    """A file laid out as the published ones: a legacy pickle {best_prec1, state_dict with module. keys}."""
    torch.manual_seed(seed)
    state = CifarResNet(depth).state_dict()
    torch.save({"best_prec1": 93.4, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path, _use_new_zipfile_serialization=False)
    return state


def test_weights_file_of_another_depth_loads_as_users_download_it(tmp_path):
    state = _published_layout(56, tmp_path / "resnet56-4bfd9763.th")
    bb = create_backbone("cifar_resnet56", str(tmp_path / "resnet56-4bfd9763.th"), CLASSES, 32, seed=0)
    assert torch.equal(bb.model.layer3[8].conv2.weight, state["layer3.8.conv2.weight"])
    assert bb.weights_source.endswith("key:state_dict prefix:module.") and bb.model.linear.out_features == CLASSES
    with pytest.raises(UserError, match=r"does not fit cifar_resnet20 .*: \d+ missing, \d+ unexpected"):
        create_backbone("cifar_resnet20", str(tmp_path / "resnet56-4bfd9763.th"), CLASSES, 32, seed=0)


def test_other_depths_offline_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MEDPEFT_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        create_backbone("cifar_resnet56", "pretrained", CLASSES, 32, seed=0)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet56-4bfd9763.th"
    assert str(info.value) == (
        "the pretrained weights of cifar_resnet56 are not in the cache and downloads are off (HF_HUB_OFFLINE/MEDPEFT_OFFLINE); "
        f"download https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet56-4bfd9763.th and save it as {expected}, "
        "or pass --weights FILE (or --weights random)"
    )


def test_download_checks_the_hash_in_the_name_and_writes_the_cache_atomically(tmp_path, monkeypatch):
    """The real download code, from a file:// URL (no network in tests)."""
    from dataclasses import replace

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MEDPEFT_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    served = tmp_path / "served.th"
    state = _published_layout(32, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    entry = BUILTINS["cifar_resnet32"]
    cache = tmp_path / "torch" / "hub" / "checkpoints"

    bad = replace(entry.pretrained, file="resnet32-00000000.th", url=served.as_uri())
    monkeypatch.setitem(BUILTINS, "cifar_resnet32", replace(entry, pretrained=bad))
    with pytest.raises(UserError, match="could not download the pretrained weights of cifar_resnet32 .*invalid hash value.*save it as") as info:
        create_backbone("cifar_resnet32", "pretrained", CLASSES, 32, seed=0)
    assert "\n" not in str(info.value) and not any(cache.iterdir())  # no partial file under any name

    good = replace(entry.pretrained, file=f"resnet32-{digest[:8]}.th", url=served.as_uri())
    monkeypatch.setitem(BUILTINS, "cifar_resnet32", replace(entry, pretrained=good))
    bb = create_backbone("cifar_resnet32", "pretrained", CLASSES, 32, seed=0)
    assert [p.name for p in cache.iterdir()] == [good.file]
    assert bb.weights_source == f"github:akamaster/pytorch_resnet_cifar10 file:{good.file} sha256:{digest} key:state_dict prefix:module."
    assert torch.equal(bb.model.conv1.weight, state["conv1.weight"])
    served.unlink()  # from the cache now
    assert create_backbone("cifar_resnet32", "pretrained", CLASSES, 32, seed=0).checksum == bb.checksum
    (cache / good.file).write_bytes(b"\x80\x02tampered")
    with pytest.raises(UserError, match=f"its sha256 starts with [0-9a-f]{{8}}, not {digest[:8]} as its published name says; delete it"):
        create_backbone("cifar_resnet32", "pretrained", CLASSES, 32, seed=0)


# --- the classifier is found by what it does ----------------------------------------------------------------


def test_the_cifar_classifier_linear_is_found_and_replaced():
    bb = create_backbone("cifar_resnet20", "pretrained", CLASSES, 32, seed=0)
    assert bb.head_name == "linear" and bb.head_summary == "linear (64 -> 10, replaced by 64 -> 3)"
    assert bb.model(torch.randn(2, 3, 32, 32)).shape == (2, CLASSES)
    meta = shape_backbone("cifar_resnet20", 32, CLASSES)
    assert (meta.family, meta.head_name, meta.num_params) == ("cnn", "linear", bb.num_params)
    assert create_backbone("cifar_resnet20", "pretrained", CLASSES, 32, seed=0, head="linear").checksum == bb.checksum
    with pytest.raises(UserError, match=r"--head layer3: cifar_resnet20 has no nn.Linear named 'layer3' \(its Linear layers: linear\)"):
        create_backbone("cifar_resnet20", "pretrained", CLASSES, 32, seed=0, head="layer3")


@pytest.mark.parametrize(
    "factory, head, summary",
    [
        ("oddly_named", "to_classes", "to_classes (12 -> 7, replaced by 12 -> 3)"),  # not fc: fc is a projection inside
        ("projected", "head", "head (24 -> 3, new, on the features)"),  # Linear + LayerNorm: an embedding
        ("feature_map", "head", "head (16 -> 3, new, on the features)"),  # a (B, C, H, W) map
    ],
)
def test_custom_factories_get_their_classifier_replaced_or_a_head_on_features(factory, head, summary):
    bb = create_backbone(f"{HEADS}:{factory}", "random", CLASSES, 32, seed=0)
    assert (bb.head_name, bb.head_summary) == (head, summary)
    assert bb.model(torch.randn(2, 3, 32, 32)).shape == (2, CLASSES)
    assert shape_backbone(f"{HEADS}:{factory}", 32, CLASSES).head_summary == summary


def test_logits_that_no_linear_makes_directly_are_refused_with_one_line():
    with pytest.raises(UserError) as info:
        create_backbone(f"{HEADS}:softmaxed", "random", CLASSES, 32, seed=0)
    assert str(info.value) == (
        f"the output of custom backbone {HEADS}:softmaxed looks like logits: Linear `classify` (16 -> 5) makes it through Softmax; "
        "medpeft does not stack a head on logits: pass --head classify to replace that Linear, or make the factory return features"
    )
    with pytest.raises(UserError, match=r"looks like logits: the 1x1 convolution `classifier` \(16 -> 6 channels\) makes it through Mean; .*return the features before that convolution") as info:
        create_backbone(f"{HEADS}:conv_classifier", "random", CLASSES, 32, seed=0)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="looks like logits"):
        shape_backbone(f"{HEADS}:softmaxed", 32, CLASSES)  # `medpeft methods --backbone` says the same
    with pytest.raises(UserError, match="returns a tuple whose first item is the output of Linear `fc`; make the factory return one tensor"):
        create_backbone(f"{HEADS}:two_outputs", "random", CLASSES, 32, seed=0)


def test_head_names_the_classifier_explicitly():
    bb = create_backbone(f"{HEADS}:softmaxed", "random", CLASSES, 32, seed=0, head="classify")
    assert bb.head_summary == "classify (16 -> 5, replaced by 16 -> 3)"
    with torch.no_grad():
        assert torch.allclose(bb.model(torch.randn(2, 3, 32, 32)).sum(-1), torch.ones(2))  # the user's softmax stays
    with pytest.raises(UserError, match=r"--head fc: the output of custom backbone .*oddly_named is not made by fc \(its 7 outputs come from `to_classes`\)"):
        create_backbone(f"{HEADS}:oddly_named", "random", CLASSES, 32, seed=0, head="fc")
    with pytest.raises(UserError, match=r"--head proj: .* is not made by proj \(its 24 outputs come from no Linear: they are features\)"):
        create_backbone(f"{HEADS}:projected", "random", CLASSES, 32, seed=0, head="proj")
    with pytest.raises(UserError, match="--head head: the classifier of timm model ResNet is `fc`"):
        create_backbone("test_resnet", "random", CLASSES, 32, seed=0, head="head")


# --- the methods' layer-kind targeting works on it unchanged -------------------------------------------------


def test_every_cnn_method_trains_on_the_pretrained_resnet20():
    base = create_backbone("cifar_resnet20", "pretrained", CLASSES, 32, seed=0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4) % CLASSES
    with torch.no_grad():
        reference = base.model(x)
    trained = []
    for info in list_methods("classification"):
        if "cnn" not in info.families:
            continue
        bb = copy.copy(base)
        bb.model = copy.deepcopy(base.model)
        model = info.apply(bb, validate_options(info, {}))
        with torch.no_grad():
            assert torch.allclose(model(x), reference, atol=1e-5), f"{info.name} changes the model at init"
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        head = {n for n in trainable if n.startswith("linear.")}
        assert head == {"linear.weight", "linear.bias"}, info.name
        if info.name == "linear":
            assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 64 * CLASSES + CLASSES
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
        assert moved <= trainable, f"{info.name}: frozen weights changed"
        assert head <= moved, f"{info.name}: the head did not train"
        if info.name != "linear":
            assert moved - head, f"{info.name}: nothing but the head trained"
        trained.append(info.name)
    assert {"full", "linear", "bn", "bias", "ssf", "tsa"} <= set(trained)


# --- as a user ------------------------------------------------------------------------------------------------


def test_methods_backbone_prints_the_head(cli):
    res = cli("methods", "--backbone", "cifar_resnet20", "--image-size", "32", "--num-classes", "2")
    assert res.code == 0, res.stderr
    assert "medpeft builtin (CIFAR ResNet-20, He et al. 2016), detected family cnn" in res.stdout
    assert "head: linear (64 -> 10, replaced by 64 -> 2)" in res.stdout.splitlines()
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in res.stdout.splitlines() if line.count("│") > 5}
    assert rows["linear"][2] == "130" and rows["bn"][0] == "yes" and rows["tsa"][0] == "yes"
    refused = cli("methods", "--backbone", f"{HEADS}:softmaxed", "--image-size", "32")
    assert refused.code == 2 and "pass --head classify" in refused.stderr
    assert "head: classify (16 -> 5, replaced by 16 -> 3)" in cli("methods", "--backbone", f"{HEADS}:softmaxed", "--image-size", "32", "--head", "classify").stdout


@pytest.mark.slow
def test_train_with_the_packaged_pretrained_resnet20(cli, tmp_path):
    import duckdb

    args = ["--dataset", "synthetic-lesions", "--image-size", "32", "--epochs", "1", "--data-fraction", "0.2", "--quiet", "--no-site"]
    res = cli("train", *args, "--backbone", "cifar_resnet20", "--weights", "pretrained", "--method", "bn")
    assert res.code == 0, res.stderr
    con = duckdb.connect(str(tmp_path / "results" / "medpeft.duckdb"))
    row = con.execute("select backbone_source, weights_source, head_params from runs").fetchone()
    con.close()
    assert row[0] == "builtin" and row[1].startswith(f"medpeft:cifar10_resnet20 file:resnet20-12fca82f.th sha256:{SHA256}")
    assert row[2] == 64 * 4 + 4  # synthetic-lesions has 4 classes
