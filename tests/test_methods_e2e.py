"""One short training per method on synthetic-lesions: validation macro-F1 rises above its value at init.

PEFT methods adapt a *pretrained* backbone, and no pretrained weights can be downloaded here; random
tiny backbones carry no usable signal for this task (a linear probe on their features scores below the
majority class), so nothing could improve. The module therefore first pretrains a tiny ResNet on a
related task (lesion shape, round vs irregular: 2 classes) and then fine-tunes on the 4 shape x texture
classes with a new head, as a user would with pretrained weights:

- CNN methods get that ResNet through `--weights FILE` (`create_backbone` with a local file, head re-initialised);
- ViT methods get a ViT whose patch embedding is the ResNet's stem (timm's HybridEmbed, as in ViT-R50
  hybrids), itself pretrained on lesion shape.

The new 4-class head starts at zero (as timm initialises MLP-Mixer heads), so the model at init predicts
a single class and its macro-F1 is the floor of an uninformed classifier, not the luck of a random head
on pretrained features. Each method then trains 2 epochs with the protocol's loop (AdamW, warm-up +
cosine, class-weighted loss); the validation macro-F1 of the selected epoch must beat the model at init
by 0.05.
"""

import numpy as np
import pytest
import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import TEST_OPTIONS

from medpeft_cli.config import TrainOptions
from medpeft_cli.methods import FAMILIES, get_method, list_methods, validate_options

pytestmark = pytest.mark.slow  # pretrains, then trains every method for 2 epochs

SIZE = 32


def _loaders(images, labels, val_images, val_labels, batch_size):
    from medpeft_cli.train.batches import make_loader

    return {
        "train": make_loader(images, labels, batch_size, True, 0),
        "val": make_loader(val_images, val_labels, 300, False, 0),
        "test": make_loader(val_images[:8], val_labels[:8], 8, False, 0),
    }


def _transform():
    from medpeft_cli.train.batches import InputTransform

    return InputTransform(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def lesions():
    from medpeft_cli.data import load_dataset, stratified_subset

    data = load_dataset("synthetic-lesions")
    train, val = data.splits["train"], data.splits["val"]
    val_subset = stratified_subset(val.labels, 0.3, seed=0)
    return data, train, (val.images[val_subset], val.labels[val_subset])


@pytest.fixture(scope="module")
def pretrained_resnet(lesions, tmp_path_factory):
    """test_resnet trained on lesion shape (labels // 2); saved without its head as a local weights file."""
    import timm
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from medpeft_cli.data import stratified_subset
    from medpeft_cli.train.classify import fit

    _, train, (val_images, val_labels) = lesions
    subset = stratified_subset(train.labels, 0.5, seed=0)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2)
    loaders = _loaders(train.images[subset], train.labels[subset] // 2, val_images, val_labels // 2, 64)
    result = fit(model, loaders, _transform(), TrainOptions(epochs=3, batch_size=64, warmup_epochs=0.2), 3e-3, 2, Accelerator(mixed_precision="no"))
    assert result.val_metrics["macro_f1"] > 0.7, "the shape pretraining did not learn"
    path = tmp_path_factory.mktemp("pretrained") / "test_resnet_shape.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("fc.")}, str(path))
    return path


def _hybrid_vit(resnet: torch.nn.Module, num_classes: int):
    """A small ViT whose patch embedding is the ResNet's stem up to stride 8 (4 x 4 tokens at 32 px)."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    stem = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool, resnet.layer1, resnet.layer2)
    stem.num_features = resnet.layer2[-1].conv2.out_channels
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=SIZE, patch_size=1, embed_dim=64, depth=2, num_heads=2, num_classes=num_classes,
        embed_layer=lambda **kw: HybridEmbed(stem, feature_size=(4, 4), feature_ratio=8, **kw),
    )  # fmt: skip


@pytest.fixture(scope="module")
def pretrained_vit(lesions, pretrained_resnet, tmp_path_factory):
    """The hybrid ViT (stem from the shape-pretrained ResNet) trained on lesion shape too; saved without its head."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from medpeft_cli.data import stratified_subset
    from medpeft_cli.models import create_backbone
    from medpeft_cli.train.classify import fit

    _, train, (val_images, val_labels) = lesions
    subset = stratified_subset(train.labels, 0.5, seed=0)
    vit = _hybrid_vit(create_backbone("test_resnet", str(pretrained_resnet), 2, SIZE, seed=0).model, 2)
    loaders = _loaders(train.images[subset], train.labels[subset] // 2, val_images, val_labels // 2, 64)
    result = fit(vit, loaders, _transform(), TrainOptions(epochs=2, batch_size=64, warmup_epochs=0.2), 1e-3, 2, Accelerator(mixed_precision="no"))
    assert result.val_metrics["macro_f1"] > 0.7, "the shape pretraining did not learn"
    path = tmp_path_factory.mktemp("pretrained") / "hybrid_vit_shape.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items() if not k.startswith("head.")}, str(path))
    return path


def _backbone(family: str, resnet_file, vit_file, num_classes: int):
    from safetensors.torch import load_file

    from medpeft_cli.models import create_backbone
    from medpeft_cli.models.backbones import Backbone, detect_family
    from medpeft_cli.models.timm_source import head_name as timm_head

    resnet = create_backbone("test_resnet", str(resnet_file), num_classes, SIZE, seed=0)  # a local weights file
    if family == "cnn":
        return resnet
    vit = _hybrid_vit(resnet.model, num_classes)
    missing = vit.load_state_dict(load_file(str(vit_file)), strict=False).missing_keys
    assert set(missing) == {"head.weight", "head.bias"}
    vit.eval()
    return Backbone(vit, "resnet-stem-vit", detect_family(vit), timm_head(vit), f"file:{vit_file}", sum(p.numel() for p in vit.parameters()), "")


@pytest.mark.parametrize("method", [m.name for m in list_methods("classification")])
def test_short_training_improves_validation_macro_f1(method, lesions, pretrained_resnet, pretrained_vit):
    from accelerate import Accelerator

    from medpeft_cli.data import stratified_subset
    from medpeft_cli.train.classify import fit, predict
    from medpeft_cli.train.metrics import classification_metrics

    data, train, (val_images, val_labels) = lesions
    info = get_method(method)
    family = next(f for f in FAMILIES if f in info.families)
    backbone = _backbone(family, pretrained_resnet, pretrained_vit, data.num_classes)
    assert backbone.family == family
    head = backbone.model.get_submodule(backbone.head_name)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    model = info.apply(backbone, validate_options(info, TEST_OPTIONS.get(method, {})))
    subset = stratified_subset(train.labels, 0.2, seed=0)
    labels = train.labels[subset]
    loaders = _loaders(train.images[subset], labels, val_images, val_labels, 32)
    accelerator = Accelerator(mixed_precision="no")
    transform = _transform()
    initial = predict(model, loaders["val"], transform, accelerator)
    before = classification_metrics(initial.probs, initial.labels, data.num_classes)["macro_f1"]
    counts = np.bincount(labels, minlength=data.num_classes)
    weights = torch.tensor(len(labels) / (data.num_classes * counts), dtype=torch.float32)  # the protocol's class_weighting=loss
    options = TrainOptions(epochs=2, batch_size=32, warmup_epochs=0.5, class_weighting="loss")
    result = fit(model, loaders, transform, options, info.default_lr, data.num_classes, accelerator, class_weights=weights)
    after = result.val_metrics["macro_f1"]  # the selected (best) epoch, as a run reports it
    print(f"{method} on {backbone.name}: validation macro-F1 {before:.3f} -> {after:.3f}")
    assert after > before + 0.05, f"{method} on {backbone.name}: validation macro-F1 {before:.3f} -> {after:.3f}"
