"""One run from spec to stored result: resolve the spec, skip finished keys, load data and backbone,
apply the method, train, then write the run directory and append the result row.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft_cli.config import PROTOCOL_VERSION, RunSpec, run_key
from medpeft_cli.errors import UserError
from medpeft_cli.methods import check_supported, get_method, validate_options
from medpeft_cli.methods.registry import MethodInfo
from medpeft_cli.store import RESULT_FILE, append, read_result, write_run_dir
from medpeft_cli.store.rundir import write_json


@dataclass
class RunOutcome:
    run_key: str
    status: str  # "finished" or "skipped" (the key was already finished)
    run_dir: Path
    row: dict[str, Any]


def resolve(spec: RunSpec) -> tuple[RunSpec, MethodInfo, Any]:
    """Fill method options and the learning rate with their defaults, so equal runs get equal keys."""
    info = get_method(spec.method.name)
    options = validate_options(info, spec.method.options)
    data = spec.model_dump(mode="python")
    data["method"] = {"name": info.name, **options.model_dump(mode="json")}
    if data["train"]["lr"] is None:
        data["train"]["lr"] = info.default_lr
    return RunSpec.model_validate(data), info, options


def _mixed_precision(precision: str) -> str:
    import torch

    if precision == "fp32":
        return "no"
    if precision == "auto":
        if not torch.cuda.is_available():
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def _device_name(accelerator) -> str:
    import platform

    import torch

    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _parameter_counts(model, backbone_params: int, head_params: int) -> dict[str, Any]:
    # peft keeps a frozen copy of a `modules_to_save` head that the forward pass never uses: not counted.
    used = [(n, p) for n, p in model.named_parameters() if ".original_module." not in n]
    total = sum(p.numel() for _, p in used)
    trainable = sum(p.numel() for _, p in used if p.requires_grad)
    return {
        "trainable_params": trainable,
        "head_params": head_params,
        "method_params": trainable - head_params,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "added_params": total - backbone_params,
    }


def train(spec: RunSpec, force: bool = False, progress=None) -> RunOutcome:
    """Run `spec` unless its key is already finished (then return the stored row)."""
    spec, info, options = resolve(spec)
    key = run_key(spec)
    out = spec.output
    run_dir = Path(out.runs_dir) / key
    if not force and (run_dir / RESULT_FILE).is_file():
        row = read_result(run_dir)
        append(out.db, row)  # no-op when present; restores the row if an earlier DB write failed
        return RunOutcome(key, "skipped", run_dir, row)

    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from medpeft_cli.data import load_dataset, stratified_subset
    from medpeft_cli.models import create_backbone
    from medpeft_cli.store.provenance import collect
    from medpeft_cli.train.batches import InputTransform, make_loader
    from medpeft_cli.train.checkpoint import save_weights
    from medpeft_cli.train.classify import fit

    started = dt.datetime.now(dt.timezone.utc)
    wall_start = time.perf_counter()
    data = load_dataset(spec.dataset, out.data_dir)
    train_split = data.splits["train"]
    subset = stratified_subset(train_split.labels, spec.data_fraction, spec.seed)
    missing = sorted(set(range(data.num_classes)) - set(np.unique(train_split.labels[subset]).tolist()))
    if missing:
        names = ", ".join(data.class_names[i] for i in missing)
        raise UserError(f"the training subset of {spec.dataset} has no images of class(es) {names}; use a larger --data-fraction")

    backbone = create_backbone(spec.backbone, spec.weights, data.num_classes, spec.image_size, spec.seed)
    check_supported(info, backbone.family, spec.backbone)
    head_params = sum(p.numel() for p in backbone.model.get_submodule(backbone.head_name).parameters())
    model = info.apply(backbone, options)
    counts = _parameter_counts(model, backbone.num_params, head_params)

    accelerator = Accelerator(
        mixed_precision=_mixed_precision(spec.train.precision), gradient_accumulation_steps=spec.train.grad_accum_steps
    )
    set_seed(spec.seed)
    cfg = getattr(backbone.model, "pretrained_cfg", {}) or {}
    transform = InputTransform(spec.image_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
    t = spec.train
    loaders = {
        "train": make_loader(train_split.images[subset], train_split.labels[subset], t.batch_size, True, spec.seed),
        "val": make_loader(data.splits["val"].images, data.splits["val"].labels, t.eval_batch_size, False, spec.seed),
        "test": make_loader(data.splits["test"].images, data.splits["test"].labels, t.eval_batch_size, False, spec.seed),
    }
    log_lines: list[str] = []

    def on_epoch(record: dict) -> None:
        line = (
            f"epoch {record['epoch']}/{t.epochs} train_loss {record['train_loss']:.4f} "
            f"val_macro_f1 {record['val_macro_f1']:.4f} val_accuracy {record['val_accuracy']:.4f} "
            f"{record['train_images_per_s']:.1f} img/s"
        )
        log_lines.append(line)
        if progress is not None and accelerator.is_main_process:
            progress.epoch_done(record, line)

    if progress is not None and accelerator.is_main_process:
        progress.start(t.epochs, len(subset))
    try:
        result = fit(
            model, loaders, transform, t, t.lr, data.num_classes, accelerator, on_epoch=on_epoch,
            on_step=(progress.step if progress is not None and accelerator.is_main_process else lambda n: None),
        )
    finally:
        if progress is not None and accelerator.is_main_process:
            progress.stop()

    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return RunOutcome(key, "finished", run_dir, {})

    finished = dt.datetime.now(dt.timezone.utc)
    test = result.test_metrics
    row: dict[str, Any] = {
        "run_key": key,
        "protocol_version": PROTOCOL_VERSION,
        "status": "ok",
        "task": spec.task,
        "dataset": spec.dataset,
        "backbone": spec.backbone,
        "weights": spec.weights,
        "method": info.name,
        "data_fraction": spec.data_fraction,
        "seed": spec.seed,
        "epochs": t.epochs,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "image_size": spec.image_size,
        "precision": accelerator.mixed_precision,
        "spec_json": json.dumps(spec.key_fields(), sort_keys=True),
        "test_macro_f1": test["macro_f1"],
        "test_accuracy": test["accuracy"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_auroc": test["auroc"],
        "val_macro_f1": result.val_metrics["macro_f1"],
        "best_epoch": result.best_epoch,
        "num_classes": data.num_classes,
        "class_names_json": json.dumps(data.class_names),
        "per_class_f1_json": json.dumps(test["per_class_f1"]),
        "metrics_json": json.dumps({"val": result.val_metrics, "test": test, "history": result.history}),
        "train_images": int(len(subset)),
        **{k: v for k, v in counts.items() if k != "added_params"},
        "wall_time_s": time.perf_counter() - wall_start,
        "train_images_per_s": result.train_images_per_s,
        "peak_memory_mb": result.peak_memory_mb,
        "memory_kind": result.memory_kind,
        **collect(_device_name(accelerator), accelerator.num_processes),
        "dataset_checksum": data.checksum,
        "dataset_source": data.source,
        "weights_source": backbone.weights_source,
        "backbone_checksum": backbone.checksum,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
    }

    def fill(tmp: Path) -> dict[str, Any]:
        write_json(tmp / "spec.json", spec.model_dump(mode="json"))
        write_json(tmp / "metrics.json", {"val": result.val_metrics, "test": test, "best_epoch": result.best_epoch, "history": result.history})
        _write_predictions(tmp / "predictions_test.csv", result.test_predictions, data.splits["test"].ids)
        save_weights(accelerator.unwrap_model(model), tmp, info.peft_owned)
        (tmp / "train.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
        return row

    write_run_dir(Path(out.runs_dir), key, fill, replace=force)
    append(out.db, row, replace=force)
    accelerator.wait_for_everyone()
    return RunOutcome(key, "finished", run_dir, row)


def _write_predictions(path: Path, preds, ids) -> None:
    import csv

    order = preds.indices.argsort()
    probs = preds.probs[order]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "id", "label", "pred"] + [f"prob_{c}" for c in range(probs.shape[1])])
        for i, label, p in zip(preds.indices[order].tolist(), preds.labels[order].tolist(), probs.tolist()):
            writer.writerow([i, ids[i], label, max(range(len(p)), key=p.__getitem__)] + [f"{v:.6g}" for v in p])
