"""Everything a sweep needs on disk before compute nodes run it offline.

`medpeft prefetch GRID` (on a machine with internet) loads every dataset of the grid into the data
directory (downloading and checking official files) and every pretrained backbone into the Hugging
Face cache, through the same functions the runs use, so a run later finds exactly what it needs
with HF_HUB_OFFLINE=1. `ensure_available` is the check `medpeft sweep run` does before its first
run: one line naming everything that is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.models.sources import parse_backbone
from medpeft_cli.sweep.manifest import Manifest


@dataclass(frozen=True)
class Need:
    kind: str  # "dataset", "backbone" or "pipeline" (text-to-image)
    name: str
    detail: tuple  # dataset: (data_dir, resolution); backbone: (weights, image_size, weights_prefix, weights_key, head); pipeline: (data_dir,)

    def label(self) -> str:
        if self.kind == "dataset":
            return f"dataset {self.name}" + (f" at {self.detail[1]} px" if self.detail[1] else "")
        if self.kind == "pipeline":
            return f"pipeline {self.name}"
        return f"{self.detail[0]} weights of {self.name}"


def needs(manifest: Manifest) -> list[Need]:
    """Distinct datasets and non-random backbone weights of every run (and tuning study) in the plan."""
    specs = [RunSpec.model_validate(e.spec) for e in manifest.entries]
    specs += [RunSpec.model_validate(g.spec) for g in manifest.tune_groups]
    found: dict[Need, None] = {}
    for spec in specs:
        data_dir = str(spec.output.data_dir) if spec.output.data_dir else None
        found[Need("dataset", spec.dataset, (data_dir, spec.data_resolution))] = None
        if spec.task == "t2i":  # the diffusers pipeline (an HF id or folder, or the generated tiny-sd)
            found[Need("pipeline", spec.backbone, (data_dir,))] = None
        elif spec.weights != "random" or parse_backbone(spec.backbone).needs_hub:
            # hf-hub: and transformers hub ids need the hub (or its cache) even for their config
            found[Need("backbone", spec.backbone, (spec.weights, spec.image_size, spec.weights_prefix, spec.weights_key, spec.head))] = None
    return list(found)


def _load(need: Need, download: bool) -> str:
    """Load one need as a run would; returns where it came from."""
    if need.kind == "dataset":
        from medpeft_cli.data import load_dataset

        data_dir, resolution = need.detail
        return load_dataset(need.name, Path(data_dir) if data_dir else None, download=download, resolution=resolution).source
    if need.kind == "pipeline":
        from medpeft_cli.data import default_data_dir
        from medpeft_cli.t2i.pipeline import load_pipeline

        data_dir = need.detail[0]
        return load_pipeline(need.name, Path(data_dir) if data_dir else default_data_dir()).weights_source
    from medpeft_cli.models import create_backbone

    weights, image_size, prefix, key, head = need.detail
    return create_backbone(need.name, weights, 2, image_size, 0, prefix, weights_key=key, head=head).weights_source


def prefetch_backbones(specs: list[str], weights: str, image_size: int, echo: Callable[[str], None] = print) -> list[tuple[Need, str]]:
    """`medpeft prefetch --backbone SPEC`: bring hub backbones (timm names, hf-hub:, transformers:<id>) into the local cache."""
    from medpeft_cli.models.hub import offline

    if offline():
        raise UserError("prefetch needs the network but HF_HUB_OFFLINE/MEDPEFT_OFFLINE is set; unset it on a machine with internet access")
    done = []
    for spec in specs:
        source = parse_backbone(spec)
        if not source.needs_hub and (weights != "pretrained" or source.kind not in ("timm", "builtin")):
            echo(f"nothing to fetch for {spec}: it is read from local files")
            continue
        need = Need("backbone", spec, (weights, image_size, None, None, None))
        found = _load(need, download=True)
        echo(f"ready: {need.label()} ({found})")
        done.append((need, found))
    return done


def prefetch(manifest: Manifest, echo: Callable[[str], None] = print) -> list[tuple[Need, str]]:
    """Download (or generate) everything the plan needs; stops at the first failure with its message."""
    from medpeft_cli.data.load import offline

    if offline():
        raise UserError("prefetch needs the network but HF_HUB_OFFLINE/MEDPEFT_OFFLINE is set; unset it on a machine with internet access")
    done = []
    for need in needs(manifest):
        source = _load(need, download=True)
        echo(f"ready: {need.label()} ({source})")
        done.append((need, source))
    return done


def ensure_available(manifest: Manifest, download: bool) -> None:
    """Load every dataset and (offline) every pretrained backbone once before any run starts.

    Datasets are loaded even online: a first download or generation then happens once, not in N
    concurrent runs. Everything missing is named in one line.
    """
    missing = []
    for need in needs(manifest):
        if need.kind != "dataset" and download:
            continue  # online, a run fetches its weights itself
        try:
            _load(need, download=download)
        except UserError as exc:
            missing.append(f"{need.label()}: {exc}")
    if missing:
        hint = "run `medpeft prefetch GRID` on a machine with internet access" if not download else "fix the first problem and retry"
        raise UserError(f"{len(missing)} thing(s) the sweep needs are not available ({' | '.join(missing)}); {hint}")
