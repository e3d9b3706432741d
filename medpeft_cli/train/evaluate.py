"""Re-score a saved run from its saved weights on a split (of its own or another dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.store import read_result

SPLITS = ("train", "val", "test")


def evaluate_run(
    run_dir: Path, split: str = "test", dataset: str | None = None, data_dir: Path | None = None, t2i: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Metrics of the saved run on `split`; the backbone is rebuilt and checked against the stored checksum.

    Text-to-image runs are re-generated and re-scored (medpeft_cli/t2i/evaluate.py); `t2i` passes their
    evaluation overrides (fid_features, fid_samples, fid_seeds, samples_out, log)."""
    from accelerate import Accelerator

    from medpeft_cli.data import load_dataset
    from medpeft_cli.methods import get_method, validate_options
    from medpeft_cli.models import create_backbone
    from medpeft_cli.train.batches import InputTransform, make_loader
    from medpeft_cli.train.checkpoint import load_weights
    from medpeft_cli.train.classify import predict
    from medpeft_cli.train.metrics import classification_metrics

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    run_dir = Path(run_dir)
    row = read_result(run_dir)
    if row.get("status", "ok") != "ok":
        detail = f" ({row['status_detail']})" if row.get("status_detail") else ""
        raise UserError(f"run {row.get('run_key')} {row['status']}{detail} and kept no trained weights to evaluate; rerun it with other settings (e.g. a lower --lr)")
    try:
        spec = RunSpec.model_validate(json.loads((run_dir / "spec.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the spec of {run_dir} ({exc}); the run directory is damaged") from None
    if spec.task == "t2i":
        from medpeft_cli.t2i.evaluate import evaluate_t2i_run

        return evaluate_t2i_run(run_dir, row, spec, split=split, dataset=dataset, data_dir=data_dir, **(t2i or {}))
    data = load_dataset(
        dataset or spec.dataset, data_dir if data_dir is not None else spec.output.data_dir, resolution=spec.data_resolution
    )
    if data.num_classes != row["num_classes"]:
        raise UserError(f"dataset {data.name} has {data.num_classes} classes but run {row['run_key']} was trained on {row['num_classes']}; evaluate on a dataset with the same classes")

    info = get_method(spec.method.name)
    options = validate_options(info, spec.method.options)
    backbone = create_backbone(spec.backbone, spec.weights, data.num_classes, spec.image_size, spec.seed, spec.weights_prefix, weights_key=spec.weights_key, head=spec.head)
    if backbone.checksum != row.get("backbone_checksum"):
        raise UserError(
            f"the backbone weights rebuilt for {spec.backbone} ({backbone.weights_source}) differ from those run {row['run_key']} "
            "was trained on; use the same weights file / timm version as the run"
        )
    model = load_weights(backbone.model if info.peft_owned else info.apply(backbone, options), run_dir, info.peft_owned)

    accelerator = Accelerator(mixed_precision=row.get("precision") or "no")
    cfg = getattr(backbone.model, "pretrained_cfg", {}) or {}
    transform = InputTransform(spec.image_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
    part = data.splits[split]
    loader = make_loader(part.images, part.labels, spec.train.eval_batch_size, False, spec.seed)
    model, loader = accelerator.prepare(model, loader)
    preds = predict(model, loader, transform, accelerator)
    metrics = classification_metrics(preds.probs, preds.labels, data.num_classes)
    same = split == "test" and data.name == spec.dataset and data.checksum == row.get("dataset_checksum")
    return {"run_key": row["run_key"], "dataset": data.name, "split": split, "metrics": metrics, "stored": row if same else None}
