"""`medpeft export --merge`: a run's trained model as a plain timm state dict.

The run's backbone is rebuilt (and checked against the stored checksum), its saved method weights
are loaded, and the method is folded into the backbone weights (LoRA-family merges through peft,
SSF/TSA/FacT fold their linear maps, selective methods are already plain). Before anything is written
the merged weights are loaded into a fresh timm model and its logits are compared with the adapted
model's on random images; a difference above 1e-5 (relative) writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.store.rundir import follow_umask

MAX_REL_DIFF = 1e-5
CHECK_IMAGES = 4


def load_run_model(run_dir: Path, weights: Path | None = None):
    """(spec, result row, method info, backbone, adapted model in eval mode) of a saved run.

    The run's weights file (or `weights`, a copy of it elsewhere) and its saved method weights are
    checked before anything is built (train/evaluate.py)."""
    from medpeft_cli.methods import get_method, validate_options
    from medpeft_cli.models import create_backbone
    from medpeft_cli.train.checkpoint import check_saved_weights, load_weights
    from medpeft_cli.train.evaluate import load_saved_run, trained_weights_spec

    run_dir = Path(run_dir)
    row, spec = load_saved_run(run_dir)
    if spec.task != "classification":
        raise UserError(f"run {row['run_key']} is a {spec.task} run; export --merge writes classification backbones only")
    spec = trained_weights_spec(spec, row, weights)
    info = get_method(spec.method.name)
    check_saved_weights(run_dir, info.peft_owned)
    options = validate_options(info, spec.method.options)
    backbone = create_backbone(spec.backbone, spec.weights, row["num_classes"], spec.image_size, spec.seed, spec.weights_prefix, weights_key=spec.weights_key, head=spec.head)
    if backbone.checksum != row.get("backbone_checksum"):
        raise UserError(
            f"the backbone weights rebuilt for {spec.backbone} ({backbone.weights_source}) differ from those run {row['run_key']} "
            "was trained on; use the same weights file / timm version as the run"
        )
    model = load_weights(backbone.model if info.peft_owned else info.apply(backbone, options), run_dir, info.peft_owned)
    return spec, row, info, backbone, model.eval()


def relative_difference(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def export_merged(run_dir: Path, out_path: Path | None = None, weights: Path | None = None) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from medpeft_cli.models import create_backbone

    spec, row, info, backbone, model = load_run_model(run_dir, weights)
    if info.merge is None:
        raise UserError(f"method {info.name!r} adds non-linear modules or tokens, so it cannot be merged into plain backbone weights; use the run directory with `medpeft eval`")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(CHECK_IMAGES, 3, spec.image_size, spec.image_size, generator=generator)
    with torch.no_grad():
        adapted = model(images)
        state = {k: v.detach().cpu().contiguous() for k, v in info.merge(model).items()}
    plain = create_backbone(spec.backbone, spec.weights, row["num_classes"], spec.image_size, spec.seed, spec.weights_prefix, weights_key=spec.weights_key, head=spec.head).model
    result = plain.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        example = (list(result.missing_keys) + list(result.unexpected_keys))[:3]
        raise UserError(f"the merged {info.name} weights do not fit a plain {spec.backbone} ({', '.join(example)}); nothing was written")
    with torch.no_grad():
        merged = plain.eval()(images)
    diff = relative_difference(merged, adapted)
    if diff > MAX_REL_DIFF:
        raise UserError(f"the merged model's logits differ from the adapted model's by {diff:.2e} (relative, limit {MAX_REL_DIFF:g}); nothing was written")
    path = Path(out_path) if out_path is not None else Path(f"{row['run_key']}-merged.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    timm_model = backbone.source_kind == "timm"
    metadata = {"format": "timm-state-dict" if timm_model else f"medpeft-{backbone.source_kind}-state-dict", "backbone": spec.backbone, "num_classes": str(row["num_classes"]), "image_size": str(spec.image_size), "method": info.name, "run_key": row["run_key"]}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    follow_umask(tmp)  # safetensors creates files 0600; an exported model is meant to be shared
    tmp.replace(path)
    # ViTs are built for their input size (position embeddings); CNNs take any size.
    create_kwargs = f"num_classes={row['num_classes']}" + (f", img_size={spec.image_size}" if backbone.family in ("vit", "hvit") else "")
    load = f"safetensors.torch.load_file({str(path)!r})"
    load_hint = (
        f"timm.create_model({spec.backbone!r}, {create_kwargs}).load_state_dict({load})" if timm_model
        # transformers and custom backbones carry medpeft's head (models/heads.py): rebuild that shape
        else f"medpeft_cli.models.create_backbone({spec.backbone!r}, 'random', {row['num_classes']}, {spec.image_size}, 0{f', head={spec.head!r}' if spec.head else ''}).model.load_state_dict({load})"
    )
    return {
        "path": str(path), "method": info.name, "backbone": spec.backbone, "load_hint": load_hint,
        "max_rel_diff": diff, "checked_images": CHECK_IMAGES,
    }  # fmt: skip
