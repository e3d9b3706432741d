"""timm backbones: model names (with pretrained tags), `hf-hub:` and `local-dir:` names, local weights files.

`weights` is 'random' (seeded), 'pretrained' (timm's pretrained tag, from the hub or its local cache) or
a local weights file (models/weights.py). A request for pretrained weights that cannot be met is an error,
never a silent fall back to random weights. The classifier is the module timm's pretrained_cfg names.
"""

from __future__ import annotations

from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.models.heads import HeadInfo
from medpeft_cli.models.hub import is_missing_file_error, not_available, quiet_hub
from medpeft_cli.models.sources import BackboneSource
from medpeft_cli.models.weights import load_checked, read_checkpoint, weights_path


def head_name(model: nn.Module) -> str:
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    if isinstance(name, (tuple, list)):  # e.g. distilled DeiT: a class head and a distillation head
        raise UserError(f"{type(model).__name__} has several classification heads ({', '.join(name)}); use a single-head variant (e.g. deit_*_patch16_224, not *_distilled_*)")
    if name:
        return name
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    for module_name, module in model.named_modules():
        if module is classifier:
            return module_name
    raise UserError(f"cannot find the classification head of {type(model).__name__}; use a timm classification model")


def create(name: str, num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """timm.create_model with this dataset's head; ViT-like models are built for `image_size`."""
    import timm

    hub = name.startswith(("hf-hub:", "local-dir:"))
    if not hub and not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(
            f"unknown backbone {name!r}{hint}; give a timm name (`python -c \"import timm; print(timm.list_models())\"`), "
            "transformers:<id or folder>, or path/to/file.py:factory"
        )
    kwargs = {"num_classes": num_classes, "pretrained": pretrained}
    try:
        with quiet_hub():
            try:
                # ViT-like models take the input size (position embeddings are resampled); CNNs do not.
                return timm.create_model(name, img_size=image_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                return timm.create_model(name, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        # hf-hub: names need their config from the hub even for random weights; pretrained ones need the weights
        if (hub or pretrained) and is_missing_file_error(exc):
            raise not_available(name, pretrained_of=None if hub else name) from None
        if pretrained:
            raise UserError(
                f"could not load pretrained weights for {name} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "pass --weights FILE, or --weights random for random init"
            ) from None
        raise


def _head(model: nn.Module, num_classes: int, head: str | None) -> HeadInfo:
    """timm's own classifier (its pretrained_cfg says which module); --head may only confirm it."""
    name = head_name(model)
    if head is not None and head != name:
        raise UserError(f"--head {head}: the classifier of timm model {type(model).__name__} is `{name}` (timm builds it for this dataset's classes); drop --head")
    module = model.get_submodule(name)
    width = module.in_features if isinstance(module, nn.Linear) else int(getattr(model, "num_features", 0))
    return HeadInfo(name, width, num_classes, note="timm classifier")


def build(source: BackboneSource, weights: str, num_classes: int, image_size: int, seed: int, prefix: str | None, key: str | None = None, head: str | None = None):
    """(model, head info, weights source) of a timm backbone."""
    name = source.target
    if weights == "random":
        model = create(name, num_classes, image_size, pretrained=False)
        return model, _head(model, num_classes, head), f"random-init (seed {seed})"
    if weights == "pretrained":
        model = create(name, num_classes, image_size, pretrained=True)
        cfg = model.pretrained_cfg
        source = f"hf-hub:{cfg.get('hf_hub_id') or name}" + (f" tag={cfg['tag']}" if cfg.get("tag") else "")
        return model, _head(model, num_classes, head), source
    path = weights_path(weights)
    checkpoint = read_checkpoint(path, key)  # before building: a missing or unsafe file fails fast
    model = create(name, num_classes, image_size, pretrained=False)
    info = _head(model, num_classes, head)
    checkpoint = checkpoint.fit(prefix, model.state_dict())
    load_checked(model, checkpoint.state, info.name, path, f"backbone {type(model).__name__}")
    return model, info, checkpoint.describe()


def shape(source: BackboneSource, num_classes: int, image_size: int, head: str | None = None):
    """(model, head info) built on the current (meta) device."""
    model = create(source.target, num_classes, image_size, pretrained=False)
    return model, _head(model, num_classes, head)
