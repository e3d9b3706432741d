"""Backbone creation: random init is seeded, local weights load safely, and the source is exact."""

import pytest
import torch
from safetensors.torch import save_file

from medpeft_cli.errors import UserError
from medpeft_cli.models import create_backbone, detect_family


def test_random_init_is_seeded_and_recorded():
    a = create_backbone("test_vit", "random", 3, 32, seed=7)
    b = create_backbone("test_vit", "random", 3, 32, seed=7)
    c = create_backbone("test_vit", "random", 3, 32, seed=8)
    assert a.checksum == b.checksum != c.checksum
    assert a.weights_source == "random-init (seed 7)"


@pytest.mark.parametrize("name, family, head", [("test_vit", "vit", "head"), ("test_resnet", "cnn", "fc"), ("test_convnext", "cnn", "head.fc")])
def test_family_and_head_detection(name, family, head):
    bb = create_backbone(name, "random", 3, 32, seed=0)
    assert (bb.family, bb.head_name) == (family, head)
    assert detect_family(bb.model) == family


def _source_weights(num_classes=10):
    # A "pretrained" checkpoint: another seed, another head size (as a 1000-class ImageNet head would be).
    return create_backbone("test_vit", "random", num_classes, 32, seed=123).model.state_dict()


def test_local_safetensors_with_module_prefix_loads_and_head_is_new(tmp_path):
    state = {f"module.{k}": v.contiguous() for k, v in _source_weights().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    bb = create_backbone("test_vit", str(path), 3, 32, seed=0)
    loaded = bb.model.state_dict()
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], state["module.blocks.0.attn.qkv.weight"])
    assert loaded["head.weight"].shape == (3, 64)  # re-initialised for this dataset's 3 classes
    assert bb.weights_source.startswith(f"file:{path.resolve()} sha256:")


def test_local_pth_loads_weights_only(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": _source_weights()}, path)
    bb = create_backbone("test_vit", str(path), 3, 32, seed=0)
    assert torch.equal(bb.model.state_dict()["pos_embed"], _source_weights()["pos_embed"])


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone("test_resnet", "random", 3, 32, seed=0).model.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="does not fit backbone"):
        create_backbone("test_vit", str(path), 3, 32, seed=0)


def test_unknown_weights_spec_is_refused():
    with pytest.raises(UserError, match="not understood"):
        create_backbone("test_vit", "imagenet", 3, 32, seed=0)
