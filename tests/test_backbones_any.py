"""Any backbone (issue 9): custom factories (file.py:factory, package.module:factory), transformers vision models
(built here from tiny configs, no download), local weights with a `module.` prefix, timm names; methods find
their targets by layer kind; offline, an uncached hub model is one line naming `medpeft prefetch`."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import save_file

from medpeft_cli.errors import UserError
from medpeft_cli.methods import get_method, list_methods, validate_options
from medpeft_cli.models import create_backbone, shape_backbone
from medpeft_cli.models.sources import CUSTOM, TIMM, TRANSFORMERS, parse_backbone
from medpeft_cli.train.checkpoint import load_weights, save_weights
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import TEST_OPTIONS

FIXTURES = Path(__file__).parent / "fixtures" / "custom_models.py"
CNN, VIT = f"{FIXTURES}:small_cnn", f"{FIXTURES}:small_vit"
SIZE, CLASSES = 32, 3
# VPT places prompts after the class token of a timm-style ViT; BOFT's default needs peft's CUDA extension.
REFUSED = {"vpt-shallow": "VPT inserts prompt tokens", "vpt-deep": "VPT inserts prompt tokens"}
RUN = ["--dataset", "synthetic-lesions", "--weights", "random", "--image-size", str(SIZE), "--epochs", "1", "--data-fraction", "0.2", "--batch-size", "64", "--quiet", "--no-site"]


def _tiny_transformers(kind: str, folder: Path) -> Path:
    """A tiny transformers ViT / DINOv2 (hidden 32, 2 layers, 32 px, patch 8) saved with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(0)
    if kind == "vit":
        model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8))
    else:
        model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8))
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-models")
    return {kind: _tiny_transformers(kind, root / kind) for kind in ("vit", "dinov2")}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Local checkpoints: the custom CNN as a DataParallel-style .pth (`module.` keys), the custom ViT as safetensors."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(123)
    import custom_models  # tests/fixtures, on sys.path for this module

    cnn = custom_models.small_cnn()
    torch.save({"state_dict": {f"module.{k}": v for k, v in cnn.state_dict().items()}}, root / "cnn.pth")
    vit = custom_models.small_vit()
    save_file({f"backbone.{k}": v.contiguous() for k, v in vit.state_dict().items()}, str(root / "vit.safetensors"))
    return {"cnn": root / "cnn.pth", "vit": root / "vit.safetensors", "cnn_state": cnn.state_dict(), "vit_state": vit.state_dict()}


@pytest.fixture(autouse=True, scope="module")
def _fixture_module_importable():
    """`custom_models:small_vit` (a package.module:factory spec) needs tests/fixtures on sys.path."""
    sys.path.insert(0, str(FIXTURES.parent))
    yield
    sys.path.remove(str(FIXTURES.parent))


# --- the spec says which source ----------------------------------------------------------------------


def test_backbone_strings_name_their_source_kind(hf_dirs):
    assert parse_backbone("vit_tiny_patch16_224").kind == TIMM
    assert parse_backbone("hf-hub:timm/resnet18.a1_in1k").kind == TIMM
    assert parse_backbone("resnet50.a1_in1k").kind == TIMM
    assert parse_backbone(f"transformers:{hf_dirs['vit']}").kind == TRANSFORMERS
    assert parse_backbone(str(hf_dirs["dinov2"])).kind == TRANSFORMERS  # a folder with a transformers config.json
    hub = parse_backbone("transformers:facebook/dinov2-small")
    assert (hub.kind, hub.target, hub.needs_hub) == (TRANSFORMERS, "facebook/dinov2-small", True)
    custom = parse_backbone(CNN)
    assert (custom.kind, custom.factory, custom.local) == (CUSTOM, "small_cnn", True)
    assert parse_backbone("custom_models:small_vit").kind == CUSTOM
    with pytest.raises(UserError, match="custom backbone file nothere.py does not exist"):
        parse_backbone("nothere.py:net")


def test_parsing_specs_and_run_keys_do_not_import_torch():
    code = (
        "import sys; from medpeft_cli.config import RunSpec, run_key; from medpeft_cli.models.sources import parse_backbone; "
        f"run_key(RunSpec(backbone={CNN!r})); parse_backbone('transformers:org/name'); print('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_changed_architecture_file_gets_a_new_run_key(tmp_path):
    from medpeft_cli.config import RunSpec, run_key

    copy_ = tmp_path / "models.py"
    copy_.write_text(FIXTURES.read_text())
    spec = RunSpec(backbone=f"{copy_}:small_cnn")
    before = run_key(spec)
    assert spec.key_fields()["backbone_code"].startswith("sha256:")
    copy_.write_text(FIXTURES.read_text().replace("width: int = 8", "width: int = 12"))
    assert run_key(spec) != before
    assert "backbone_code" not in RunSpec(backbone="test_vit").key_fields()  # timm keys are unchanged


# --- one shape for every source ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, family, head, out_features",
    [(CNN, "cnn", "fc", CLASSES), (VIT, "vit", "head", CLASSES), (f"{FIXTURES}:feature_map_cnn", "cnn", "head", CLASSES), ("custom_models:small_cnn", "cnn", "fc", CLASSES)],
)
def test_custom_factory_gets_a_head_for_the_dataset(spec, family, head, out_features):
    bb = create_backbone(spec, "random", CLASSES, SIZE, seed=0)
    assert (bb.family, bb.head_name, bb.source_kind) == (family, head, CUSTOM)
    assert bb.model.get_submodule(head).out_features == out_features
    assert bb.model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, CLASSES)
    assert bb.weights_source.endswith("; random-init (seed 0)") and " code sha256:" in bb.weights_source
    assert create_backbone(spec, "random", CLASSES, SIZE, seed=0).checksum == bb.checksum
    meta = shape_backbone(spec, SIZE, CLASSES)  # the shape-only copy agrees (family, head, size)
    assert (meta.family, meta.head_name, meta.num_params) == (family, head, bb.num_params)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_transformers_model_from_a_folder(hf_dirs, kind):
    spec = f"transformers:{hf_dirs[kind]}"
    bb = create_backbone(spec, "pretrained", CLASSES, SIZE, seed=0)
    assert (bb.family, bb.head_name, bb.source_kind) == ("vit", "model.classifier", TRANSFORMERS)
    assert bb.provenance["transformers_version"]
    assert bb.weights_source.startswith(f"{spec} (") and "weights sha256:" in bb.weights_source
    if kind == "vit":  # ViTModel's pooler is not used by ViTForImageClassification: named, not silently dropped
        assert "ignored 2 unused checkpoint weights (pooler.dense.bias, pooler.dense.weight)" in bb.weights_source
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(hf_dirs[kind]))
    inner = bb.model.model.base_model
    assert all(torch.equal(inner.state_dict()[k], v) for k, v in encoder.state_dict().items() if k in inner.state_dict())
    assert bb.model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, CLASSES)
    assert bb.model(torch.randn(2, 3, 48, 48)).shape == (2, CLASSES)  # position embeddings interpolated
    random = create_backbone(spec, "random", CLASSES, SIZE, seed=0)
    assert random.weights_source.endswith("random-init (seed 0)") and random.checksum != bb.checksum
    assert random.checksum == create_backbone(spec, "random", CLASSES, SIZE, seed=0).checksum


# --- local weights: prefixes, a clear report, no pickled code ----------------------------------------


def test_pth_with_module_prefix_loads_into_a_custom_cnn(weight_files):
    bb = create_backbone(CNN, str(weight_files["cnn"]), CLASSES, SIZE, seed=0)
    state = bb.model.state_dict()
    assert torch.equal(state["stage1.0.conv_a.weight"], weight_files["cnn_state"]["stage1.0.conv_a.weight"])
    assert state["fc.weight"].shape == (CLASSES, 16)  # its 10-class classifier replaced for 3 classes
    assert f"file:{weight_files['cnn'].resolve()} sha256:" in bb.weights_source and bb.weights_source.endswith("prefix:module.")


def test_weights_prefix_picks_the_backbone_keys_and_a_misfit_is_one_clear_line(weight_files, tmp_path):
    bb = create_backbone(VIT, str(weight_files["vit"]), CLASSES, SIZE, seed=0)  # a shared `backbone.` is stripped by itself
    assert torch.equal(bb.model.encoder.pos_embedding, weight_files["vit_state"]["pos_embedding"])
    assert bb.weights_source.endswith("prefix:backbone.")
    path = tmp_path / "student.safetensors"  # a prefix medpeft does not strip by itself
    save_file({f"student.{k}": v.contiguous() for k, v in weight_files["vit_state"].items()}, str(path))
    with pytest.raises(UserError, match=r"does not fit custom backbone .*: \d+ missing, \d+ unexpected.*--weights-prefix") as info:
        create_backbone(VIT, str(path), CLASSES, SIZE, seed=0)
    assert "\n" not in str(info.value)
    bb = create_backbone(VIT, str(path), CLASSES, SIZE, seed=0, weights_prefix="student.")
    assert torch.equal(bb.model.encoder.pos_embedding, weight_files["vit_state"]["pos_embedding"])
    assert bb.weights_source.endswith("prefix:student.")
    with pytest.raises(UserError, match="no key of weights file .* starts with 'encoder.'"):
        create_backbone(VIT, str(path), CLASSES, SIZE, seed=0, weights_prefix="encoder.")


def test_pickled_checkpoints_needing_code_are_refused(tmp_path):
    import custom_models

    path = tmp_path / "whole_model.pth"
    torch.save(custom_models.small_cnn(), path)  # the module object itself: unpickling would run code
    with pytest.raises(UserError, match="refusing to load .*weights_only=True"):
        create_backbone(CNN, str(path), CLASSES, SIZE, seed=0)


def test_transformers_architecture_with_a_local_weights_file(hf_dirs, tmp_path):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(hf_dirs["dinov2"]))  # keys without the `dinov2.` prefix
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    bb = create_backbone(f"transformers:{hf_dirs['dinov2']}", str(path), CLASSES, SIZE, seed=0)
    assert torch.equal(bb.model.model.dinov2.embeddings.position_embeddings, encoder.embeddings.position_embeddings)
    assert "(Dinov2Model config) file:" in bb.weights_source


def test_factory_mistakes_are_one_clear_line():
    with pytest.raises(UserError, match="must be callable without arguments \\(it requires depth\\)"):
        create_backbone(f"{FIXTURES}:needs_arguments", "random", CLASSES, SIZE, seed=0)
    with pytest.raises(UserError, match="has no function 'nope'"):
        create_backbone(f"{FIXTURES}:nope", "random", CLASSES, SIZE, seed=0)
    with pytest.raises(UserError, match="has no pretrained weights of its own"):
        create_backbone(CNN, "pretrained", CLASSES, SIZE, seed=0)


# --- methods find their targets by layer kind ---------------------------------------------------------


def test_default_lora_targets_resolve_to_attention_projections(hf_dirs):
    from medpeft_cli.methods.peft_common import linear_targets

    custom = create_backbone(VIT, "random", CLASSES, SIZE, seed=0)
    assert linear_targets(custom, ["qkv"], "LoRA") == [f"encoder.layers.{i}.self_attention.to_{p}" for i in range(2) for p in "qkv"]
    assert linear_targets(custom, ["v", "fc2"], "IA3") == ["encoder.layers.0.self_attention.to_v", "encoder.layers.1.self_attention.to_v",
                                                         "encoder.layers.0.ffn.reduce", "encoder.layers.1.ffn.reduce"]  # fmt: skip
    hf = create_backbone(f"transformers:{hf_dirs['vit']}", "pretrained", CLASSES, SIZE, seed=0)
    assert linear_targets(hf, ["qkv"], "LoRA") == [f"model.vit.layers.{i}.attention.{p}_proj" for i in range(2) for p in "qkv"]
    with pytest.raises(UserError, match="LoRA target 'conv' matches no Linear module"):
        linear_targets(hf, ["conv"], "LoRA")


def test_tsa_adapts_the_stage_convolutions_of_a_custom_cnn_not_its_stem():
    from medpeft_cli.methods.common import stage_convs

    bb = create_backbone(CNN, "random", CLASSES, SIZE, seed=0)
    names = [n for n, _ in stage_convs(bb.model)]
    assert names and all(n.startswith(("stage1.", "stage2.")) for n in names) and "stem.0" not in names


def _backbone(kind: str, hf_dirs, weight_files):
    if kind == "custom-cnn":
        return create_backbone(CNN, str(weight_files["cnn"]), CLASSES, SIZE, seed=0)
    if kind == "custom-vit":
        return create_backbone(VIT, str(weight_files["vit"]), CLASSES, SIZE, seed=0, weights_prefix="backbone.")
    return create_backbone(f"transformers:{hf_dirs[kind]}", "pretrained", CLASSES, SIZE, seed=0)


def _copy(backbone):
    twin = copy.copy(backbone)
    twin.model = copy.deepcopy(backbone.model)
    return twin


KINDS = {"custom-cnn": "cnn", "custom-vit": "vit", "vit": "vit", "dinov2": "vit"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_applicable_method_trains_a_step_and_leaves_frozen_weights_unchanged(kind, hf_dirs, weight_files, tmp_path):
    base = _backbone(kind, hf_dirs, weight_files)
    assert base.family == KINDS[kind]
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4) % CLASSES
    with torch.no_grad():
        reference = base.model(x)
    applied = []
    for info in list_methods("classification"):
        if base.family not in info.families:
            continue
        options = validate_options(info, TEST_OPTIONS.get(info.name, {}))
        bb = _copy(base)
        if info.name in REFUSED:
            with pytest.raises(UserError, match=REFUSED[info.name]) as refused:
                info.apply(bb, options)
            assert "\n" not in str(refused.value)
            continue
        model = info.apply(bb, options)
        applied.append(info.name)
        with torch.no_grad():
            at_init = model(x)
        # every method that applies here starts as the backbone's function (VPT, which does not, is refused above)
        assert torch.allclose(at_init, reference, atol=1e-5), f"{info.name} on {kind} changes the model at init"
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        after = dict(model.named_parameters())
        frozen_changed = [n for n in before if n not in trainable and not torch.equal(before[n], after[n])]
        assert not frozen_changed, f"{info.name} on {kind}: frozen weights changed: {frozen_changed[:3]}"
        moved = [n for n in trainable if not torch.equal(before[n], after[n])]
        assert any("classifier" in n or "head" in n or ".fc." in n or n.startswith("fc.") for n in moved), f"{info.name} on {kind}: the head did not train"
        if info.name != "linear":
            assert any(not ("classifier" in n or "head" in n or n.startswith("fc.") or ".fc." in n) for n in moved), f"{info.name} on {kind}: nothing but the head trained"
        # saved weights load into a fresh backbone; mergeable methods fold into plain weights of the same shape
        model.eval()
        with torch.no_grad():
            expected = model(x)
        out = tmp_path / info.name
        out.mkdir()
        save_weights(model, out, info.peft_owned)
        fresh = _copy(base)
        loaded = load_weights(fresh.model if info.peft_owned else info.apply(fresh, options), out, info.peft_owned).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(x), expected, atol=1e-6), f"{info.name} on {kind}: reloaded logits differ"
        if info.merge is not None:
            plain = _copy(base).model
            plain.load_state_dict(info.merge(model), strict=True)
            with torch.no_grad():
                assert torch.allclose(plain.eval()(x), expected, atol=1e-4), f"{info.name} on {kind}: merged logits differ"
    expected_methods = {m.name for m in list_methods("classification") if base.family in m.families} - set(REFUSED)
    assert set(applied) == expected_methods


def test_adapters_refuse_a_feed_forward_split_over_modules():
    from torch import nn

    from medpeft_cli.models.backbones import Backbone, detect_family

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value, self.dense = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x):
            return self.dense(self.value(x))

    class BertLayer(nn.Module):  # BERT-style: the MLP is `intermediate` + `output`
        def __init__(self):
            super().__init__()
            self.attention, self.intermediate, self.output = Attention(), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            x = x + self.attention(x)
            return x + self.output(self.intermediate(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 8, 8)
            self.layers = nn.Sequential(BertLayer(), BertLayer())
            self.head = nn.Linear(8, CLASSES)

        def forward(self, x):
            return self.head(self.layers(self.patch(x).flatten(2).transpose(1, 2)).mean(1))

    model = Net()
    assert detect_family(model) == "vit"
    bb = Backbone(model, "bert-style", "vit", "head", "random", 0, "")
    with pytest.raises(UserError, match="adaptformer needs each transformer block's feed-forward network as one module"):
        get_method("adaptformer").apply(bb, validate_options(get_method("adaptformer"), {}))
    lora = get_method("lora").apply(_copy(bb), validate_options(get_method("lora"), {"targets": ["q", "v", "fc1"]}))
    assert {n.split(".lora_")[0] for n, p in lora.named_parameters() if p.requires_grad and ".lora_" in n} >= {"base_model.model.layers.0.attention.query", "base_model.model.layers.0.intermediate"}


# --- as a user: methods --backbone, train with every source kind, offline ----------------------------


def test_methods_backbone_lists_what_applies_to_a_custom_cnn(cli):
    res = cli("methods", "--backbone", CNN, "--image-size", str(SIZE))
    assert res.code == 0, res.stderr
    assert "detected family cnn" in res.stdout and "custom factory (custom_models.py)" in res.stdout
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in res.stdout.splitlines() if line.count("│") > 5}
    assert rows["tsa"][0] == "yes" and rows["bn"][0] == "yes" and rows["lora"][0] == "no (vit, hvit only)"
    assert rows["linear"][1] == "0" and rows["linear"][2] == "51"  # fc: 16 x 3 + 3, the only trainable part


def _row(tmp_path: Path) -> dict:
    con = duckdb.connect(str(tmp_path / "results" / "medpeft.duckdb"))
    try:
        cur = con.execute("select * from runs")
        [values] = cur.fetchall()
        return dict(zip([d[0] for d in cur.description], values))
    finally:
        con.close()


@pytest.mark.slow
def test_train_with_a_custom_file_factory_records_the_source_and_re_scores(cli, tmp_path, weight_files):
    res = cli("train", *RUN, "--backbone", CNN, "--weights", str(weight_files["cnn"]), "--method", "tsa")
    assert res.code == 0, res.stderr
    row = _row(tmp_path)
    assert row["backbone_source"] == "custom" and row["backbone"] == CNN
    assert row["weights_source"].startswith(f"custom:{FIXTURES}:small_cnn code sha256:") and "prefix:module." in row["weights_source"]
    assert json.loads(row["spec_json"])["backbone_code"].startswith("sha256:")
    evaluated = cli("eval", f"runs/{row['run_key']}")
    assert evaluated.code == 0 and "matches the stored test metrics" in evaluated.stdout


@pytest.mark.slow
def test_train_with_a_transformers_folder_records_the_source(cli, tmp_path, hf_dirs):
    res = cli("train", *RUN, "--backbone", f"transformers:{hf_dirs['dinov2']}", "--weights", "pretrained", "--method", "lora")
    assert res.code == 0, res.stderr
    row = _row(tmp_path)
    assert row["backbone_source"] == "transformers" and row["transformers_version"]
    assert row["weights_source"].startswith(f"transformers:{hf_dirs['dinov2']} (Dinov2ForImageClassification, weights sha256:")


@pytest.mark.slow
def test_train_with_a_timm_name_and_module_prefixed_weights(cli, tmp_path):
    state = create_backbone("test_resnet", "random", 10, SIZE, seed=5).model.state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "resnet.pth")
    res = cli("train", *RUN, "--backbone", "test_resnet", "--weights", "resnet.pth", "--method", "bn")
    assert res.code == 0, res.stderr
    row = _row(tmp_path)
    assert row["backbone_source"] == "timm" and row["weights_source"].startswith(f"file:{tmp_path / 'resnet.pth'} sha256:")
    assert row["weights_source"].endswith("prefix:module.")


@pytest.mark.slow
def test_train_with_a_module_factory(cli, tmp_path):
    res = cli("train", *RUN, "--backbone", "custom_models:small_vit", "--method", "lora")
    assert res.code == 0, res.stderr
    row = _row(tmp_path)
    assert row["backbone_source"] == "custom" and row["weights_source"].startswith("custom:custom_models:small_vit code sha256:")


def _empty_offline_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.mark.parametrize("spec", ["hf-hub:timm/uncached_vit_tiny", "transformers:someorg/uncached-dinov2"])
def test_uncached_hub_model_offline_is_one_line_naming_prefetch(cli, tmp_path, monkeypatch, spec):
    _empty_offline_cache(monkeypatch, tmp_path)
    res = cli("train", *RUN, "--backbone", spec, "--method", "linear")
    assert res.code == 2
    assert res.stderr.strip().splitlines() == [
        (
            f"medpeft: error: backbone {spec} is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE/MEDPEFT_OFFLINE); "
            f"fetch it once on a machine with internet access: `medpeft prefetch --backbone {spec}`"
        )
    ]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    assert "prefetch needs the network" in cli("prefetch", "--backbone", spec).stderr


def test_cached_transformers_hub_model_loads_offline(tmp_path, monkeypatch, hf_dirs):
    cache = _empty_offline_cache(monkeypatch, tmp_path)
    commit = "1" * 40
    snapshot = cache / "models--someorg--tiny-dinov2" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    for f in hf_dirs["dinov2"].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    bb = create_backbone("transformers:someorg/tiny-dinov2", "pretrained", CLASSES, SIZE, seed=0)
    assert bb.weights_source == f"transformers:someorg/tiny-dinov2 (Dinov2ForImageClassification, revision {commit})"
