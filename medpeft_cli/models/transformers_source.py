"""Hugging Face transformers vision models (`transformers:<hub id or folder>`), e.g. ViT, DINOv2, Swin, ConvNeXt.

A model type with an image-classification class (ViTForImageClassification, Dinov2ForImageClassification,
...) is built as that class with a new `classifier` for this dataset's classes, so it pools the way the
architecture's authors do (ViT: the class token; DINOv2: class token and mean patch token). Any other
vision encoder (AutoModel) gets a new Linear head on its class token (or pooled output).

'pretrained' loads the folder's / hub model's weights; every weight outside the head must be in the
checkpoint (unused ones, such as a ViT pooler, are ignored and named in the source). 'random' builds the
architecture from its config, seeded; a weights file is loaded into that architecture. Code from the hub
is never run (no trust_remote_code): for such models write a custom factory (file.py:factory).
"""

from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.models.heads import FeatureClassifier, HeadInfo, feature_width
from medpeft_cli.models.hub import is_missing_file_error, not_available, offline, quiet_hub
from medpeft_cli.models.sources import BackboneSource
from medpeft_cli.models.weights import file_sha256, load_checked, read_checkpoint, weights_path

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TransformersClassifier(nn.Module):
    """forward(images) -> logits of a transformers image-classification model (its `classifier` is ours)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # ViT-style position embeddings are built for config.image_size; at another input size they are
        # interpolated (at that size, transformers returns them unchanged).
        accepts = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self.forward_kwargs = {"interpolate_pos_encoding": True} if accepts else {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images, **self.forward_kwargs).logits


@contextmanager
def _quiet():
    """transformers prints its own load report and progress bars; medpeft reports in one line instead."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with quiet_hub():
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _hub_call(source: BackboneSource, fn):
    """Run a transformers loader; a model missing from the cache is one line naming `medpeft prefetch`."""
    try:
        with _quiet():
            return fn()
    except UserError:
        raise
    except Exception as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "trust_remote_code" in str(exc):
            raise UserError(f"{source.spec} needs code from the hub (trust_remote_code), which medpeft does not run; load it through a custom factory (file.py:factory) instead") from None
        if not source.local and isinstance(exc, OSError) and is_missing_file_error(exc):
            raise not_available(source.spec) from None
        raise UserError(f"cannot load transformers backbone {source.spec} ({type(exc).__name__}: {text})") from None


def _config(source: BackboneSource, num_classes: int):
    from transformers import AutoConfig

    config = _hub_call(source, lambda: AutoConfig.from_pretrained(source.target, local_files_only=offline()))
    if hasattr(config, "vision_config") and not hasattr(config, "hidden_size"):
        config = config.vision_config  # a multimodal model (CLIP, SigLIP): its image encoder
    config.num_labels = max(num_classes, 1)
    return config


def _auto_class(classifying: bool):
    """The transformers Auto class that builds the model: with an image-classification head where the type has one."""
    from transformers import AutoModel, AutoModelForImageClassification

    return AutoModelForImageClassification if classifying else AutoModel


def _has_classifier_class(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    return type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING


def _wrap(model: nn.Module, classifying: bool, num_classes: int, image_size: int, head: str | None) -> tuple[nn.Module, HeadInfo]:
    if classifying:
        classifier = getattr(model, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise UserError(f"{type(model).__name__} has no `classifier` module to replace; use a custom factory for it")
        wrapped, info = TransformersClassifier(model), HeadInfo("model.classifier", getattr(classifier, "in_features", 0), num_classes, note="new classifier")
    else:
        width = feature_width(model, image_size)
        wrapped, info = FeatureClassifier(model, width, num_classes), HeadInfo("head", width, num_classes, note="new, on the class token")
    if head is not None and head != info.name:
        raise UserError(f"--head {head}: a transformers backbone's head is `{info.name}`, built for this dataset's classes; drop --head")
    return wrapped, info


def _normalisation(source: BackboneSource) -> tuple[tuple, tuple, bool]:
    """mean, std from the model's preprocessor_config.json (ImageNet's when it has none), and whether it had one."""
    try:
        if source.local:
            path = Path(source.target) / "preprocessor_config.json"
        else:
            from huggingface_hub import hf_hub_download

            with quiet_hub():
                path = Path(hf_hub_download(source.target, "preprocessor_config.json", local_files_only=offline()))
        data = json.loads(path.read_text(encoding="utf-8"))
        mean, std = data["image_mean"], data["image_std"]
        return tuple(float(m) for m in mean), tuple(float(s) for s in std), True
    except Exception:  # no preprocessor file (or no mean/std in it): the usual ImageNet statistics
        return IMAGENET_MEAN, IMAGENET_STD, False


def _weights_identity(source: BackboneSource, config) -> str:
    if source.local:
        files = sorted(p for p in Path(source.target).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
        return "weights sha256:" + ",".join(file_sha256(p)[:16] for p in files) if files else "no weights files"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.target, "config.json")  # .../snapshots/<commit>/config.json
    commit = Path(cached).parent.name if isinstance(cached, str) else getattr(config, "_commit_hash", None)
    return f"revision {commit or 'unknown'}"


def _from_pretrained(source: BackboneSource, config, classifying: bool):
    model, info = _hub_call(source, lambda: _auto_class(classifying).from_pretrained(
        source.target, config=config, ignore_mismatched_sizes=True, output_loading_info=True, local_files_only=offline()
    ))  # fmt: skip

    def keys(items) -> list[str]:  # transformers reports mismatched keys as (key, shape, shape) tuples
        return sorted(k[0] if isinstance(k, (tuple, list)) else k for k in items)

    missing = [k for k in keys(info.get("missing_keys", ())) if not k.startswith("classifier.")]
    mismatched = [k for k in keys(info.get("mismatched_keys", ())) if not k.startswith("classifier.")]
    if missing or mismatched:
        example = ", ".join((missing + mismatched)[:3])
        raise UserError(
            f"the checkpoint of {source.spec} lacks {len(missing)} and has {len(mismatched)} wrong-shape weights of {type(model).__name__} "
            f"(e.g. {example}); they would be random: use a checkpoint of this architecture, or --weights random"
        )
    unexpected = keys(info.get("unexpected_keys", ()))
    return model, (f"; ignored {len(unexpected)} unused checkpoint weights ({', '.join(unexpected[:2])}{', ...' if len(unexpected) > 2 else ''})" if unexpected else "")


def _load_file(model: nn.Module, classifying: bool, weights: str, prefix: str | None, key: str | None) -> str:
    """Load a local weights file into the architecture built from the config; its weights source."""
    path = weights_path(weights)
    checkpoint = read_checkpoint(path, key)
    # a checkpoint of the bare encoder (ViTModel) has no `vit.` prefix; the classification model does
    base = getattr(model, "base_model_prefix", "")
    own = list(model.state_dict())
    checkpoint = checkpoint.fit(prefix, own + [k[len(base) + 1:] for k in own if base and k.startswith(base + ".")])
    state = checkpoint.state
    target = model.get_submodule(base) if classifying and base and not any(k.startswith(base + ".") for k in state) else model
    load_checked(target, state, "classifier" if target is model and classifying else None, path, f"{type(model).__name__}")
    return checkpoint.describe()


def build(source: BackboneSource, weights: str, num_classes: int, image_size: int, seed: int, prefix: str | None, key: str | None = None, head: str | None = None):
    """(model, head info, weights source) of a transformers backbone."""
    config = _config(source, num_classes)
    classifying = _has_classifier_class(config)
    arch = config.architectures[0] if getattr(config, "architectures", None) else type(config).__name__
    if weights == "pretrained":
        model, note = _from_pretrained(source, config, classifying)
        described = f"{source.label} ({type(model).__name__}, {_weights_identity(source, config)}){note}"
    elif weights == "random":
        model = _auto_class(classifying).from_config(config)
        described = f"{source.label} ({arch} config) random-init (seed {seed})"
    else:
        model = _auto_class(classifying).from_config(config)
        described = f"{source.label} ({arch} config) {_load_file(model, classifying, weights, prefix, key)}"
    wrapped, info = _wrap(model.eval(), classifying, num_classes, image_size, head)
    mean, std, from_file = _normalisation(source)
    wrapped.pretrained_cfg = {"mean": mean, "std": std}
    return wrapped, info, described + (" mean/std from preprocessor_config.json" if from_file else "")


def shape(source: BackboneSource, num_classes: int, image_size: int, head: str | None = None):
    """(model, head info) built on the current (meta) device from the config alone."""
    config = _config(source, num_classes)
    classifying = _has_classifier_class(config)
    with _quiet():
        model = _auto_class(classifying).from_config(config)
    return _wrap(model.eval(), classifying, num_classes, image_size, head)


def provenance() -> dict[str, str | None]:
    from importlib import metadata

    return {"transformers_version": metadata.version("transformers")}
