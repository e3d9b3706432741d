"""One shape for every backbone: forward(images) -> logits, with a named classification head medpeft trains.

A module that already ends in a classifier (a Linear named head/fc/classifier, or timm's get_classifier(),
whose output is the model's output) gets that Linear replaced by a new one for this dataset's classes.
Any other module is a feature extractor: `FeatureClassifier` puts a new Linear `head` after it.
"""

from __future__ import annotations

import torch
from torch import nn

from medpeft_cli.errors import UserError

CLASSIFIER_NAMES = ("head", "fc", "classifier")


def features(output) -> torch.Tensor:
    """(B, C) features from an encoder's output: a (B, C) tensor as it is, a (B, C, H, W) map averaged over
    H and W; for a transformers model output, the class token of `last_hidden_state` (else `pooler_output`)."""
    if not isinstance(output, torch.Tensor):
        hidden = output.get("last_hidden_state") if hasattr(output, "get") else None
        if hidden is not None and hidden.ndim == 3:
            return hidden[:, 0]
        pooled = output.get("pooler_output") if hasattr(output, "get") else None
        output = pooled.flatten(1) if pooled is not None else hidden if hidden is not None else output[0]
    if output.ndim == 2:
        return output
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    raise UserError(
        f"the backbone returns a tensor of shape {tuple(output.shape)}; a custom factory's module must return (B, C) features "
        "or logits, or a (B, C, H, W) feature map (pool a token sequence yourself, e.g. x[:, 0])"
    )


class FeatureClassifier(nn.Module):
    """images -> encoder -> features (see `features`) -> head, a new Linear for this dataset's classes."""

    def __init__(self, encoder: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()
        cfg = getattr(encoder, "pretrained_cfg", None)
        if isinstance(cfg, dict):  # the input normalisation the encoder declares (mean, std)
            self.pretrained_cfg = cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(features(self.encoder(images)))


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    if hasattr(model, "get_classifier"):
        classifier = model.get_classifier()
        found += [(n, m) for n, m in model.named_modules() if m is classifier and n]
    found += [(n, c) for n, c in model.named_children() if n in CLASSIFIER_NAMES]
    return found


def _last_linear(module: nn.Module) -> tuple[str, nn.Linear] | None:
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def probe(model: nn.Module, image_size: int) -> dict:
    """Run one forward pass (on the model's device, meta included) and say how the output is made.

    Returns {"classifier": dotted name of the classifier module or None, "linear": dotted name of the Linear
    in it that produces the output, "width": its input width or the feature width}.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in _candidates(model):
        last = _last_linear(module)
        if last is not None:
            full = f"{name}.{last[0]}" if last[0] else name
            hooks.append(last[1].register_forward_hook(lambda m, a, out, key=(name, full): outputs.setdefault(key, out)))
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(2, 3, image_size, image_size, device=device))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the backbone fails on a {image_size} px image ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); check --image-size") from None
    finally:
        for hook in hooks:
            hook.remove()
    for (name, linear), out in outputs.items():
        if out is output:  # the model returns this Linear's output: it is the classifier
            return {"classifier": name, "linear": linear, "width": model.get_submodule(linear).in_features}
    return {"classifier": None, "linear": None, "width": int(features(output).shape[-1])}


def replace_classifier(model: nn.Module, linear_name: str, num_classes: int) -> None:
    """Put a new Linear (same input width, `num_classes` outputs) where the old classifier was."""
    old = model.get_submodule(linear_name)
    parent_name, _, child = linear_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device) if num_classes else nn.Identity()
    setattr(parent, child, new)
