"""Re-score a saved run from its saved weights on a split (of its own or another dataset)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.store import read_result

SPLITS = ("train", "val", "test")
STORED_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "auroc")
_FILE_HASH = re.compile(r"file:.*? sha256:([0-9a-f]{64})")


def load_saved_run(run_dir: Path) -> tuple[dict[str, Any], RunSpec]:
    """(result row, spec) of a finished run directory; one line when it is not one, or kept no weights."""
    run_dir = Path(run_dir)
    row = read_result(run_dir)
    if row.get("status", "ok") != "ok":
        detail = f" ({row['status_detail']})" if row.get("status_detail") else ""
        raise UserError(f"run {row.get('run_key')} {row['status']}{detail} and kept no trained weights to evaluate; rerun it with other settings (e.g. a lower --lr)")
    try:
        spec = RunSpec.model_validate(json.loads((run_dir / "spec.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the spec of {run_dir} ({exc}); the run directory is damaged") from None
    return row, spec


def trained_weights_spec(spec: RunSpec, row: dict[str, Any], weights: str | Path | None = None) -> RunSpec:
    """`spec` with the weights file the run was trained on: the one spec.json names, or `weights` (a copy
    of it elsewhere). As for the run key (config.key_fields), the file counts by its content: one whose
    sha256 differs from the run's (recorded in weights_source) is refused, whatever its path."""
    from medpeft_cli.models.sources import NAMED_WEIGHTS, file_digest

    key = row.get("run_key")
    if spec.weights in NAMED_WEIGHTS:
        if weights is not None:
            raise UserError(f"--weights applies to a run trained from a weights file; run {key} used weights {spec.weights!r}: drop --weights")
        return spec
    recorded = _FILE_HASH.findall(row.get("weights_source") or "")
    expected = recorded[-1] if recorded else None
    given = str(weights) if weights is not None else spec.weights
    path = Path(given).expanduser()
    copy = f"pass --weights FILE with a copy of it (sha256 {expected[:16]}...)" if expected else "pass --weights FILE with a copy of it"
    if not path.is_file():
        raise UserError(f"weights file {given} of run {key} does not exist (any more); {copy}")
    digest = file_digest(path).removeprefix("sha256:")
    if expected is not None and digest != expected:
        raise UserError(
            f"weights file {given} (sha256 {digest[:16]}...) is not the file run {key} was trained on (sha256 {expected[:16]}...); "
            f"restore that file or {copy} (`medpeft train` with the other file is another run)"
        )
    return spec.model_copy(update={"weights": str(path.resolve())})


def stored_metrics(run_dir: Path, row: dict[str, Any], split: str, same_data: bool) -> tuple[dict[str, Any] | None, str]:
    """(the metrics the run stored for `split` on its own data, or None; why there are none)."""
    if not same_data:
        return None, "another dataset (or other data) than the run's: nothing stored to compare"
    if split == "test":
        return {name: row.get(f"test_{name}") for name in STORED_METRICS}, ""
    if split == "val":
        try:
            val = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8")).get("val") or {}
        except (OSError, ValueError, AttributeError):
            val = {}
        if not val:
            return None, "the run directory holds no validation metrics (metrics.json): nothing stored to compare"
        return {name: val.get(name) for name in STORED_METRICS}, ""
    return None, "training stores no metrics of the train split: nothing to compare"


def evaluate_run(
    run_dir: Path, split: str = "test", dataset: str | None = None, data_dir: Path | None = None, t2i: dict[str, Any] | None = None,
    weights: Path | None = None,
) -> dict[str, Any]:
    """Metrics of the saved run on `split`; the backbone is rebuilt and checked against the stored checksum.

    `stored`: the metrics the run stored for that split (test: the row; val: metrics.json of the selected
    evaluation), None with `stored_note` saying why. `weights`: where the run's weights file is now, when
    it moved. Text-to-image runs are re-generated and re-scored (medpeft_cli/t2i/evaluate.py); `t2i` passes
    their evaluation overrides (fid_features, fid_samples, fid_seeds, samples_out, log)."""
    from accelerate import Accelerator

    from medpeft_cli.data import load_dataset
    from medpeft_cli.methods import get_method, validate_options
    from medpeft_cli.models import create_backbone
    from medpeft_cli.train.batches import InputTransform, make_loader
    from medpeft_cli.train.checkpoint import check_saved_weights, load_weights
    from medpeft_cli.train.classify import predict
    from medpeft_cli.train.metrics import classification_metrics

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    run_dir = Path(run_dir)
    row, spec = load_saved_run(run_dir)
    if spec.task == "t2i":
        from medpeft_cli.t2i.evaluate import evaluate_t2i_run

        if weights is not None:
            raise UserError("--weights applies to classification runs; a text-to-image run uses its pipeline's own weights")
        return evaluate_t2i_run(run_dir, row, spec, split=split, dataset=dataset, data_dir=data_dir, **(t2i or {}))
    spec = trained_weights_spec(spec, row, weights)  # before any work: the weights file and the saved
    info = get_method(spec.method.name)  # method weights are checked first
    check_saved_weights(run_dir, info.peft_owned)
    data = load_dataset(
        dataset or spec.dataset, data_dir if data_dir is not None else spec.output.data_dir, resolution=spec.data_resolution
    )
    if data.num_classes != row["num_classes"]:
        raise UserError(f"dataset {data.name} has {data.num_classes} classes but run {row['run_key']} was trained on {row['num_classes']}; evaluate on a dataset with the same classes")

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
    same_data = data.name == spec.dataset and data.checksum == row.get("dataset_checksum")
    stored, note = stored_metrics(run_dir, row, split, same_data)
    return {"run_key": row["run_key"], "dataset": data.name, "split": split, "metrics": metrics, "stored": stored, "stored_note": note}
