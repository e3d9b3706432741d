"""Weights files by content, not by name (issue 15): safetensors, torch zip and legacy torch pickles with any
extension, the usual nesting and prefixes unwrapped and recorded, EMA copies only when asked, and every file
that cannot be loaded safely or unambiguously refused with one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medpeft_cli.errors import UserError
from medpeft_cli.models import create_backbone
from medpeft_cli.models.cifar_resnet import CifarResNet
from medpeft_cli.models.weights import SAFETENSORS, TORCH_PICKLE, TORCH_ZIP, WRAPPER_KEYS, file_format, read_checkpoint

EXTENSIONS = (".th", ".pth.tar", ".ckpt", ".bin", ".pt", ".pth", ".safetensors", "")
PREFIXES = ("module.", "model.", "backbone.", "encoder.")


@pytest.fixture(scope="module")
def source_state():
    """The weights every file below holds: a CIFAR ResNet-8 with its own seed (small, quick to save)."""
    torch.manual_seed(11)
    return {k: v.clone() for k, v in CifarResNet(8).state_dict().items()}


@pytest.fixture(scope="module")
def resnet20_state():
    torch.manual_seed(12)
    return {k: v.clone() for k, v in CifarResNet(20).state_dict().items()}


def _save(obj, path, kind: str):
    if kind == SAFETENSORS:
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=kind == TORCH_ZIP)
    return path


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text and text
    return text


# --- the format is read from the bytes; any extension --------------------------------------------------


@pytest.mark.parametrize("kind", [SAFETENSORS, TORCH_ZIP, TORCH_PICKLE])
@pytest.mark.parametrize("ext", EXTENSIONS)
def test_every_format_with_every_extension_reads_the_same_weights(tmp_path, source_state, kind, ext):
    path = _save(source_state, tmp_path / f"weights{ext}", kind)
    assert file_format(path) == kind
    checkpoint = read_checkpoint(path)
    assert _same(checkpoint.state, source_state)
    assert (checkpoint.key, checkpoint.prefix) == ("", "")
    assert checkpoint.describe().startswith(f"file:{path} sha256:")


@pytest.mark.parametrize("kind", [TORCH_ZIP, TORCH_PICKLE])
@pytest.mark.parametrize("wrapper", WRAPPER_KEYS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_nested_and_prefixed_state_dicts_unwrap_to_the_same_weights(tmp_path, source_state, kind, wrapper, prefix):
    content = {"epoch": 90, "best_prec1": 91.78, "arch": "resnet", wrapper: {prefix + k: v for k, v in source_state.items()}}
    checkpoint = read_checkpoint(_save(content, tmp_path / "w.pth.tar", kind)).fit(None, source_state)
    assert _same(checkpoint.state, source_state)
    assert (checkpoint.key, checkpoint.prefix) == (wrapper, prefix)
    assert checkpoint.describe().endswith(f" key:{wrapper} prefix:{prefix}")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefixed_safetensors_and_stacked_prefixes(tmp_path, source_state, prefix):
    path = _save({prefix + k: v for k, v in source_state.items()}, tmp_path / "w.safetensors", SAFETENSORS)
    assert _same(read_checkpoint(path).fit(None, source_state).state, source_state)
    stacked = _save({"state_dict": {f"module.{prefix}{k}": v for k, v in source_state.items()}}, tmp_path / "w.ckpt", TORCH_ZIP)
    checkpoint = read_checkpoint(stacked).fit(None, source_state)
    assert _same(checkpoint.state, source_state) and checkpoint.prefix == f"module.{prefix}"


def test_doubly_nested_wrappers(tmp_path, source_state):
    path = _save({"model": {"state_dict": {f"module.{k}": v for k, v in source_state.items()}}, "step": 3}, tmp_path / "w.bin", TORCH_PICKLE)
    checkpoint = read_checkpoint(path).fit(None, source_state)
    assert _same(checkpoint.state, source_state) and (checkpoint.key, checkpoint.prefix) == ("model.state_dict", "module.")


def test_a_shared_prefix_that_is_the_model_own_is_kept(source_state):
    """A model whose own keys all start with `backbone.` keeps them: stripping is only done when it makes keys fit."""
    own = {f"backbone.{k}": v for k, v in source_state.items()}
    from medpeft_cli.models.weights import Checkpoint

    checkpoint = Checkpoint(path=None, sha256="", state=own).fit(None, own.keys())
    assert checkpoint.prefix == "" and _same(checkpoint.state, own)
    checkpoint = Checkpoint(path=None, sha256="", state={f"module.{k}": v for k, v in own.items()}).fit(None, own.keys())
    assert checkpoint.prefix == "module." and _same(checkpoint.state, own)


# --- EMA / teacher copies: only when asked ---------------------------------------------------------------


def test_ema_is_loaded_only_with_weights_key(tmp_path, source_state):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in source_state.items()}
    path = _save({"state_dict": source_state, "model_ema": ema, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": []}}, tmp_path / "train.pth.tar", TORCH_ZIP)
    default = read_checkpoint(path)
    assert _same(default.state, source_state) and default.key == "state_dict"
    assert default.describe().endswith("key:state_dict ignored:model_ema")  # the skipped copy is named, not hidden
    asked = read_checkpoint(path, "model_ema")
    assert _same(asked.state, ema) and asked.key == "model_ema" and "ignored" not in asked.describe()


def test_teacher_student_file_needs_weights_key_and_dotted_paths_work(tmp_path, source_state):
    path = _save({"teacher": {"module": {f"backbone.{k}": v for k, v in source_state.items()}}, "student": {"x": torch.zeros(1)}}, tmp_path / "dino", TORCH_ZIP)
    with pytest.raises(UserError, match="pass --weights-key KEY") as info:
        read_checkpoint(path)
    assert "student" in _one_line(info)
    for key in ("teacher", "teacher.module"):
        checkpoint = read_checkpoint(path, key).fit(None, source_state)
        assert _same(checkpoint.state, source_state)
        assert (checkpoint.key, checkpoint.prefix) == ("teacher.module", "backbone.")
    with pytest.raises(UserError, match=r"has no key 'ema' at the top level \(it holds: teacher, student\); fix --weights-key"):
        read_checkpoint(path, "ema")


def test_weights_key_end_to_end_on_a_builtin_backbone(tmp_path, resnet20_state):
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in resnet20_state.items()}
    path = _save({"state_dict": {f"module.{k}": v for k, v in resnet20_state.items()}, "ema": {f"module.{k}": v for k, v in ema.items()}}, tmp_path / "r20.th", TORCH_PICKLE)
    plain = create_backbone("cifar_resnet20", str(path), 10, 32, seed=0)
    averaged = create_backbone("cifar_resnet20", str(path), 10, 32, seed=0, weights_key="ema")
    assert torch.equal(plain.model.conv1.weight, resnet20_state["conv1.weight"])
    assert torch.equal(averaged.model.conv1.weight, ema["conv1.weight"])
    assert plain.weights_source.endswith("key:state_dict prefix:module. ignored:ema")
    assert averaged.weights_source.endswith("key:ema prefix:module.")
    with pytest.raises(UserError, match="weights_key 'ema' applies to a weights file"):
        create_backbone("cifar_resnet20", "pretrained", 10, 32, seed=0, weights_key="ema")


# --- refused, one line each -------------------------------------------------------------------------------


def test_ambiguous_and_empty_files_are_refused(tmp_path, source_state):
    cases = {
        "two.pth": ({"state_dict": source_state, "model": source_state}, "holds several state dicts \\(state_dict, model\\); pass --weights-key"),
        "empty.pth": ({"state_dict": {}, "epoch": 3}, "has no state dict at the top level .*\\(it holds no tensors\\)"),
        "mixed.pth": ({**source_state, "model": source_state}, "holds tensors at the top level and under model; pass --weights-key"),
        "list.pth": ([torch.zeros(2)], "holds a list at the top level, not a state dict"),
    }
    for name, (content, message) in cases.items():
        with pytest.raises(UserError, match=message) as info:
            read_checkpoint(_save(content, tmp_path / name, TORCH_ZIP))
        _one_line(info)


def test_a_pickle_that_needs_code_is_refused(tmp_path):
    for kind in (TORCH_ZIP, TORCH_PICKLE):
        path = tmp_path / f"whole-model-{kind.replace(' ', '-')}.th"
        torch.save(CifarResNet(8), path, _use_new_zipfile_serialization=kind == TORCH_ZIP)  # the module object: unpickling runs code
        with pytest.raises(UserError, match="refusing to load .*weights_only=True") as info:
            read_checkpoint(path)
        _one_line(info)


def test_files_that_are_not_checkpoints_and_missing_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(UserError, match="is not a safetensors file nor a torch checkpoint") as info:
        read_checkpoint(text)
    _one_line(info)
    with pytest.raises(UserError, match=r"weights 'nothere\.th' not understood: it is neither 'random', 'pretrained' nor an existing file") as info:
        create_backbone("cifar_resnet20", "nothere.th", 2, 32, seed=0)
    _one_line(info)
    with pytest.raises(UserError, match="a safetensors file holds one flat state dict; drop --weights-key"):
        read_checkpoint(_save({"a": torch.zeros(1)}, tmp_path / "flat.safetensors", SAFETENSORS), "ema")


def test_new_spec_fields_keep_existing_run_keys():
    from medpeft_cli.config import RunSpec, run_key

    plain = RunSpec(backbone="cifar_resnet20", weights="pretrained")
    assert "head" not in plain.key_fields() and "weights_key" not in plain.key_fields()
    assert run_key(RunSpec(backbone="cifar_resnet20", weights="pretrained", head="linear")) != run_key(plain)
    with pytest.raises(ValueError, match="weights_key applies to a local weights file"):
        RunSpec(weights="pretrained", weights_key="ema")
