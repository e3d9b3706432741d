"""One shape for every backbone: forward(images) -> logits, with a named classification head medpeft trains.

The classifier is found by what it does, not by its name. One forward pass (on torch's meta device where
possible) runs with a hook on every nn.Linear and nn.Conv2d; the Linear whose output IS the model's output
is the classifier, whatever it is called (`fc`, `head`, the CIFAR ResNet's `linear`), and it is replaced by
a new Linear for this dataset's classes. `--head NAME` names it explicitly.

Any other output is features ((B, C), or a (B, C, H, W) map averaged over H and W): `FeatureClassifier`
puts a new Linear `head` after them. A head is never stacked on logits: an output that a Linear made
through further operations (softmax, a view, token pooling), or that a 1x1 convolution with as many
channels made before pooling (a NiN/SqueezeNet classifier), looks like logits and is refused with one line.
The operations after a module are read from the autograd graph of the probe's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from medpeft_cli.errors import UserError

# Autograd nodes (names without "Backward<N>") of one-input operations that leave logits logits.
PASS_THROUGH = frozenset({
    "View", "Reshape", "ReshapeAlias", "UnsafeView", "Squeeze", "Unsqueeze", "Clone", "ToCopy", "Alias",
    "Softmax", "LogSoftmax", "Sigmoid", "Mul", "Div", "Add", "Sub", "Select", "Slice", "Index", "Mean",
    "Amax", "Max", "AdaptiveAvgPool2D", "AvgPool2D", "MaxPool2DWithIndices", "AdaptiveMaxPool2D",
})  # fmt: skip
# ... and after a 1x1 convolution classifier (SqueezeNet: conv, ReLU, global pooling)
CONV_PASS = PASS_THROUGH | {"Relu"}


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


@dataclass(frozen=True)
class HeadPlan:
    """How a module makes its output: the classifier Linear to replace, or features to put a head on."""

    linear: str | None  # dotted name of the Linear whose output is the model's output; None: features
    width: int  # that Linear's input width, or the features' width
    classes: int | None = None  # that Linear's output width


@dataclass(frozen=True)
class HeadInfo:
    """The head medpeft trains, for listings and `medpeft methods --backbone`."""

    name: str  # dotted module name
    width: int
    classes: int
    replaced: int | None = None  # outputs of the classifier it replaced
    note: str = ""  # e.g. "new, on the features"

    def summary(self) -> str:
        if self.replaced is not None:
            return f"{self.name} ({self.width} -> {self.replaced}, replaced by {self.width} -> {self.classes})"
        return f"{self.name} ({self.width} -> {self.classes}{', ' + self.note if self.note else ''})"


class ProbeFailed(UserError):
    """The probe's forward pass failed (on the meta device: perhaps an operation without a meta kernel)."""


def _op(fn) -> str:
    return re.sub(r"Backward\d*$", "", type(fn).__name__)


def _inputs(fn) -> list:
    """The non-leaf inputs of an autograd node (parameters and constants are leaves)."""
    return [f for f, _ in fn.next_functions if f is not None and type(f).__name__ != "AccumulateGrad"]


def _maker(output: torch.Tensor, made: list[tuple[object, str]]) -> tuple[str | None, list[str]]:
    """The hooked module whose output becomes `output` through one-input operations, and those operations."""
    fn, ops = output.grad_fn, []
    while fn is not None:
        hit = next((name for node, name in made if node is fn), None)
        if hit is not None:
            return hit, ops
        inputs = _inputs(fn)
        if _op(fn) not in CONV_PASS or len(inputs) != 1:
            return None, ops
        ops.append(_op(fn))
        fn = inputs[0]
    return None, ops


def _forward(model: nn.Module, image_size: int, trace: bool):
    """(output, [(autograd node or output tensor, module name)] of every Linear/Conv2d call) of one forward pass."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    made: list[tuple[object, str]] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name:
            hooks.append(module.register_forward_hook(lambda m, a, out, name=name: made.append((out, name)) if isinstance(out, torch.Tensor) else None))
    try:
        with torch.set_grad_enabled(trace):
            images = torch.zeros(2, 3, image_size, image_size, device=device, requires_grad=trace)
            return model.eval()(images), made
    except UserError:
        raise
    except Exception as exc:
        raise ProbeFailed(f"the backbone fails on a {image_size} px image ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); check --image-size") from None
    finally:
        for hook in hooks:
            hook.remove()


def feature_width(model: nn.Module, image_size: int) -> int:
    """The width of an encoder's features (see `features`), from one forward pass without gradients."""
    output, _ = _forward(model, image_size, trace=False)
    return int(features(output).shape[-1])


def find_head(model: nn.Module, image_size: int, head: str | None = None, what: str = "the backbone") -> HeadPlan:
    """Which Linear makes `model`'s output (the classifier to replace), or the width of its features.

    `head` (--head NAME) names the classifier; it must be the Linear that makes the output. Refuses, with
    one line, an output that looks like logits without a Linear that makes it directly (module docstring).
    """
    if head is not None and not isinstance(dict(model.named_modules()).get(head), nn.Linear):
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        listed = f"its Linear layers: {', '.join(linears[-4:])}" if linears else "it has no Linear layer"
        raise UserError(f"--head {head}: {what} has no nn.Linear named {head!r} ({listed}); name the classifier layer, or drop --head")
    output, made = _forward(model, image_size, trace=True)
    found = features(output)  # what a head would be put on
    maker, ops = next((name for out, name in made if out is found), None), []
    if maker is None:
        maker, ops = _maker(found, [(out.grad_fn, name) for out, name in made])
    module = model.get_submodule(maker) if maker else None
    if isinstance(module, nn.Linear) and not isinstance(output, torch.Tensor):
        raise UserError(f"{what} returns a {type(output).__name__} whose first item is the output of Linear `{maker}`; make the factory return one tensor (logits or features)")
    if isinstance(module, nn.Linear) and (head == maker or (head is None and not ops)):
        return HeadPlan(maker, module.in_features, module.out_features)
    width = int(found.shape[-1])
    after = " -> ".join(reversed(ops))  # the operations in the order they ran
    if head is not None:
        made_by = f"`{maker}`" + (f" then {after}" if ops else "") if maker else "no Linear: they are features"
        raise UserError(f"--head {head}: the output of {what} is not made by {head} (its {width} outputs come from {made_by}); name the Linear that makes the output, or drop --head")
    logits_by_linear = isinstance(module, nn.Linear) and set(ops) <= PASS_THROUGH
    if logits_by_linear:
        raise UserError(
            f"the output of {what} looks like logits: Linear `{maker}` ({module.in_features} -> {module.out_features}) makes it through "
            f"{after}; medpeft does not stack a head on logits: pass --head {maker} to replace that Linear, or make the factory return features"
        )
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.out_channels == width:
        raise UserError(
            f"the output of {what} looks like logits: the 1x1 convolution `{maker}` ({module.in_channels} -> {module.out_channels} channels) makes it "
            f"through {after or 'pooling'}; medpeft does not stack a head on logits: make the factory return the features before that convolution"
        )
    return HeadPlan(None, width)


def attach_head(module: nn.Module, plan: HeadPlan, num_classes: int) -> tuple[nn.Module, HeadInfo]:
    """Replace the classifier `plan` found, or put a new Linear `head` on the features."""
    if plan.linear is not None:
        replace_classifier(module, plan.linear, num_classes)
        return module, HeadInfo(plan.linear, plan.width, num_classes, replaced=plan.classes)
    return FeatureClassifier(module, plan.width, num_classes), HeadInfo("head", plan.width, num_classes, note="new, on the features")


def replace_classifier(model: nn.Module, linear_name: str, num_classes: int) -> None:
    """Put a new Linear (same input width, `num_classes` outputs) where the old classifier was."""
    old = model.get_submodule(linear_name)
    parent_name, _, child = linear_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device) if num_classes else nn.Identity()
    setattr(parent, child, new)
