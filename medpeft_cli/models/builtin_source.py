"""medpeft's builtin backbones (models/builtin_models.py): the CIFAR ResNets with their CIFAR-10 weights.

'pretrained' is the published CIFAR-10 file (ResNet-20's ships in the package; sha256 checked before it is
loaded); a weights file of any depth loads as its authors published it (`state_dict`, `module.` keys).
The architecture is built as published (10 classes), the weights loaded into it, then its classifier,
found by what it does (models/heads.py), is replaced for this dataset's classes.
"""

from __future__ import annotations

import torch

from medpeft_cli.models.builtin_models import BUILTINS
from medpeft_cli.models.cifar_resnet import CifarResNet
from medpeft_cli.models.heads import attach_head, find_head
from medpeft_cli.models.pretrained_file import pretrained_file
from medpeft_cli.models.sources import BackboneSource
from medpeft_cli.models.weights import load_checked, read_checkpoint, weights_path


def _plan(source: BackboneSource, image_size: int, head: str | None):
    with torch.device("meta"):
        model = CifarResNet(BUILTINS[source.target].depth)
    return find_head(model, image_size, head, source.target)


def build(source: BackboneSource, weights: str, num_classes: int, image_size: int, seed: int, prefix: str | None, key: str | None = None, head: str | None = None):
    """(model, head info, weights source) of a builtin backbone."""
    entry = BUILTINS[source.target]
    plan = _plan(source, image_size, head)
    model = CifarResNet(entry.depth)
    if weights == "random":
        described = f"random-init (seed {seed})"
    else:
        if weights == "pretrained":
            path, digest = pretrained_file(entry)
            origin = entry.pretrained.origin
        else:
            path, digest, origin = weights_path(weights), None, None
        checkpoint = read_checkpoint(path, key, digest).fit(prefix, model.state_dict())
        load_checked(model, checkpoint.state, plan.linear, path, f"{entry.name} ({entry.summary})")
        described = checkpoint.describe(origin)
    model, info = attach_head(model, plan, num_classes)
    return model, info, described


def shape(source: BackboneSource, num_classes: int, image_size: int, head: str | None = None):
    """(model, head info) built on the current (meta) device."""
    return attach_head(CifarResNet(BUILTINS[source.target].depth), _plan(source, image_size, head), num_classes)
