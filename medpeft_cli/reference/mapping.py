"""The one place where the names of published results meet medpeft's names (docs/leaderboard.md,
"Published results").

A published row names a backbone, dataset, method and metric as its paper printed them. To be put beside
measured runs it needs medpeft's names for each:

- method: `METHOD_ALIASES` (a paper's spelling, lower-cased -> a medpeft method), else the name itself
  when it is a medpeft method of the row's task;
- dataset: `DATASET_ALIASES`, else the name itself when it is a medpeft dataset;
- metric: `METRICS` (the printed metric -> the site's metric name; it also decides the task: FID/KID are
  text-to-image metrics, the others classification);
- training data: a `data_fraction` column, or a `train_images` column through `TRAIN_IMAGES_FRACTION`,
  else 1.0 (all training data, as the study's Tables 2-3);
- backbone: `parse_backbone` reads "<timm architecture> (ImageNet-1k|ImageNet-21k)" or one of
  `BACKBONE_RULES`; `backbone_matches` then says which measured backbones are that backbone: the same timm
  architecture with pretrained weights of the same data (a timm tag ending in that data, not fine-tuned
  on another: `resnet50.tv_in1k` and `resnet50.a1_in1k` are ResNet-50 ImageNet-1k,
  `vit_base_patch16_224.augreg_in21k_ft_in1k` is not ViT-B ImageNet-21k), run with `weights: pretrained`.

A row that cannot be mapped is stored with the reason in `unmapped` and listed on the reproduction
page; it is never dropped and never matched by guess. Pure functions, no I/O: the caller passes the
names medpeft knows.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

# A paper's method spelling (lower-case) -> medpeft's method name (the same for both tasks where both have it).
METHOD_ALIASES: dict[str, str] = {
    "full ft": "full", "full fine-tuning": "full", "fine-tuning": "full",
    "linear probing": "linear", "linear probe": "linear", "linear-probing": "linear",
    "bn tuning": "bn", "batchnorm tuning": "bn", "bias tuning": "bias", "attention tuning": "attention",
    "attn": "attention", "layernorm tuning": "layernorm", "ln tuning": "layernorm", "norm tuning": "norm",
    "sv-diff": "svdiff", "bias+norm+attention": "bias-norm-attention",
}  # fmt: skip

# A paper's dataset name (lower-case) -> medpeft's registry name (datasets.yaml).
DATASET_ALIASES: dict[str, str] = {
    "breastus": "busi", "breast ultrasound": "busi", "pneumonia": "rsna-pneumonia", "rsna pneumonia": "rsna-pneumonia",
    "fitzpatrick": "fitzpatrick17k", "ham": "ham10000", "mimic": "mimic-cxr",
}  # fmt: skip

# Printed metric (lower-case) -> (the site's metric name, task). The study's F1 is taken as macro-F1, the
# metric medpeft reports (the paper does not say how its F1 averages over classes).
METRICS: dict[str, tuple[str, str]] = {
    "f1": ("macro_f1", "classification"), "macro_f1": ("macro_f1", "classification"), "macro-f1": ("macro_f1", "classification"),
    "accuracy": ("accuracy", "classification"), "acc": ("accuracy", "classification"),
    "balanced_accuracy": ("balanced_accuracy", "classification"), "auroc": ("auroc", "classification"),
    "auc": ("auroc", "classification"), "fid": ("fid", "t2i"), "kid": ("kid", "t2i"),
}  # fmt: skip

# (dataset, training images as printed) -> fraction of medpeft's training split. Table 4 of Dutt et al. trains
# on 110K / 55K / 11K MIMIC-CXR images: all, half and a tenth of its training set.
TRAIN_IMAGES_FRACTION: dict[tuple[str, str], float] = {
    ("mimic-cxr", "110K"): 1.0, ("mimic-cxr", "55K"): 0.5, ("mimic-cxr", "11K"): 0.1,
}  # fmt: skip

# Printed backbones that are not "<timm architecture> (ImageNet-...)": label (lower-case) -> (pattern of the
# measured backbone names it matches, the weights those runs use).
BACKBONE_RULES: dict[str, tuple[str, str]] = {
    # Table 4: "Stable Diffusion 1.x U-Net (version not stated)": any SD 1.x pipeline (1-1 ... 1-5)
    "stable diffusion 1.x u-net (version not stated)": (r"(^|/)stable-diffusion-v1-[1-5]$", "pipeline"),
}

_IMAGENET = re.compile(r"^(?P<arch>[a-z0-9_]+)\s*\(imagenet-(?P<data>1k|21k|22k)\)$", re.IGNORECASE)
_HUB_PREFIXES = ("hf-hub:timm/", "hf_hub:timm/", "timm/")


@dataclass(frozen=True)
class BackboneRef:
    """What a printed backbone is: a timm architecture + pretraining data, or a name pattern (BACKBONE_RULES)."""

    arch: str | None = None
    pretraining: str | None = None  # in1k | in21k
    pattern: str | None = None
    weights: str = "pretrained"

    def describe(self) -> str:
        if self.pattern:
            return f"backbones matching {self.pattern} ({self.weights})"
        return f"{self.arch}.<tag ending in _{self.pretraining}> with pretrained weights"


def parse_backbone(label: str) -> BackboneRef | None:
    """The printed backbone as a `BackboneRef`, or None when it is not one medpeft can compare with."""
    text = " ".join(label.split())
    rule = BACKBONE_RULES.get(text.lower())
    if rule:
        return BackboneRef(pattern=rule[0], weights=rule[1])
    match = _IMAGENET.match(text)
    if not match:
        return None
    data = match["data"].lower()
    return BackboneRef(arch=match["arch"].lower(), pretraining="in21k" if data in ("21k", "22k") else "in1k")


def pretraining_of(tag: str) -> str | None:
    """ImageNet data of a timm pretrained tag: 'tv_in1k' -> in1k, 'orig_in21k' -> in21k; None for weights
    fine-tuned from other data ('augreg_in21k_ft_in1k', 'fb_ssl_yfcc100m_ft_in1k') or of unknown data."""
    tag = tag.lower()
    if "_ft_" in tag or tag.startswith("ft_"):
        return None
    if re.search(r"(^|_)in2[12]k$", tag):
        return "in21k"
    if re.search(r"(^|_)in1k$", tag):
        return "in1k"
    return None


def backbone_matches(ref: BackboneRef, backbone: str, weights: str) -> bool:
    """Whether a measured board's (backbone, weights) is the published backbone `ref`."""
    if not isinstance(backbone, str) or weights != ref.weights:
        return False
    if ref.pattern:
        return re.search(ref.pattern, backbone, re.IGNORECASE) is not None
    name = backbone
    for prefix in _HUB_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    arch, _, tag = name.partition(".")
    return arch.lower() == ref.arch and bool(tag) and pretraining_of(tag) == ref.pretraining


@dataclass(frozen=True)
class Resolved:
    """A published row in medpeft's names; `unmapped` says why it has none (then the names may be None)."""

    task: str | None
    dataset: str | None
    method: str | None
    metric: str | None
    data_fraction: float | None
    backbone: BackboneRef | None
    unmapped: str | None = None


def _lookup(name: str, aliases: Mapping[str, str], known: Collection[str]) -> str | None:
    text = " ".join(name.split())
    alias = aliases.get(text.lower())
    if alias is not None:
        return alias
    if text in known:
        return text
    return text.lower() if text.lower() in known else None


def resolve(
    *, backbone: str, dataset: str, method: str, metric: str, data_fraction: float | None, train_images: str | None,
    known_methods: Mapping[str, Collection[str]], known_datasets: Collection[str],
) -> Resolved:
    """Map one published row; `known_methods`: task -> medpeft method names, `known_datasets`: registry names."""
    metric_task = METRICS.get(metric.strip().lower())
    task, site_metric = (metric_task[1], metric_task[0]) if metric_task else (None, None)
    ds = _lookup(dataset, DATASET_ALIASES, known_datasets)
    meth = _lookup(method, METHOD_ALIASES, known_methods.get(task or "", ())) if task else None
    ref = parse_backbone(backbone)
    fraction = data_fraction
    if fraction is None and train_images:
        fraction = TRAIN_IMAGES_FRACTION.get((ds or "", train_images.strip()))
    elif fraction is None:
        fraction = 1.0
    reasons = []
    if task is None:
        reasons.append(f"metric {metric!r} is not one the site shows ({', '.join(sorted(METRICS))})")
    if ds is None:
        reasons.append(f"dataset {dataset!r} is not a medpeft dataset")
    if task and meth is None:
        reasons.append(f"method {method!r} is not a medpeft {task} method")
    if ref is None:
        reasons.append(f"backbone {backbone!r} names no timm architecture and ImageNet data")
    if fraction is None:
        reasons.append(f"{train_images!r} training images of {dataset!r} map to no training fraction")
    return Resolved(task, ds, meth, site_metric, fraction, ref, "; ".join(reasons) or None)
