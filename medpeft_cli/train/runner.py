"""One run from spec to stored result: resolve the spec, skip finished keys, load data and backbone,
apply the method, train, then write the run directory and append the result row.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft_cli.config import PROTOCOL_VERSION, RunSpec, run_key
from medpeft_cli.errors import UserError
from medpeft_cli.methods import check_supported, get_method, validate_options
from medpeft_cli.methods.registry import MethodInfo
from medpeft_cli.store import RESULT_FILE, append, read_result, write_run_dir
from medpeft_cli.store.rundir import write_json
from medpeft_cli.train.resume import Checkpointer, Preempted, StopFlag


@dataclass
class RunOutcome:
    run_key: str
    status: str  # "finished" or "skipped" (the key was already finished)
    run_dir: Path
    row: dict[str, Any]


class RunDiverged(FloatingPointError):
    """The loss became NaN/Inf: the run is stored with status 'diverged' and no metrics (`outcome`)."""

    def __init__(self, outcome: RunOutcome):
        super().__init__(f"{outcome.row.get('status_detail')}; stored as run {outcome.run_key} with status diverged; lower the learning rate")
        self.outcome = outcome


def resolve(spec: RunSpec) -> tuple[RunSpec, MethodInfo, Any]:
    """Fill method options and the learning rate with their defaults, so equal runs get equal keys."""
    info = get_method(spec.method.name, task=spec.task)
    options = validate_options(info, spec.method.options)
    if spec.param_budget is not None:
        options = _fit_param_budget(spec, info)
    data = spec.model_dump(mode="python")
    data["method"] = {"name": info.name, **options.model_dump(mode="json")}
    if data["train"]["lr"] is None:
        data["train"]["lr"] = info.default_lr
    if spec.task == "t2i":  # sampling steps, FID samples and features depend on the pipeline
        from medpeft_cli.t2i.options import fill_defaults

        data["t2i"] = fill_defaults(data["t2i"], spec.backbone)
    return RunSpec.model_validate(data), info, options


def _fit_param_budget(spec: RunSpec, info: MethodInfo) -> Any:
    """`param_budget` picks the method's size knob; counted on a shape-only (meta) copy of the backbone."""
    from medpeft_cli.methods.accounting import meta_backbone
    from medpeft_cli.methods.budget import fit_budget

    if spec.task != "classification":
        raise UserError(f"param_budget applies to classification methods; the {spec.task} task sizes its methods through their options")
    fit = fit_budget(info, spec.method.options, spec.param_budget, meta_backbone(spec.backbone, spec.image_size))
    given = spec.method.options.get(fit.knob)
    if given is not None and given != fit.value:
        raise UserError(f"method.{fit.knob}={given} conflicts with param_budget {spec.param_budget} (which needs {fit.knob}={fit.value}); give only one of them")
    return validate_options(info, {**spec.method.options, fit.knob: fit.value})


def _device_name(accelerator) -> str:
    import platform

    import torch

    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _parameter_counts(model, backbone_params: int, head_params: int) -> dict[str, Any]:
    from medpeft_cli.methods.common import counted_parameters

    # peft keeps frozen copies the forward pass never uses (a `modules_to_save` head's original, LN
    # tuning's base layers): not counted.
    used = list(counted_parameters(model))
    total = sum(p.numel() for _, p in used)
    trainable = sum(p.numel() for _, p in used if p.requires_grad)
    return {
        "trainable_params": trainable,
        "head_params": head_params,
        "method_params": trainable - head_params,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "added_params": total - backbone_params,
        "backbone_params": backbone_params - head_params,  # the base of `param_budget` percentages
    }


def _check_world(accelerator, spec: RunSpec) -> None:
    """A multi-process launch must be one distributed run, with batches that split evenly."""
    import os

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    n = accelerator.num_processes
    if launched != n:
        raise UserError(
            f"{launched} processes were launched but Accelerate runs them as {n} independent run(s) (with no GPU, "
            "`accelerate launch --multi_gpu` needs ACCELERATE_USE_CPU=true); use `medpeft train --num-processes N`"
        )
    for name in ("batch_size", "eval_batch_size"):
        size = getattr(spec.train, name)
        if size % n:
            raise UserError(f"train.{name} {size} does not split evenly over {n} processes; use a multiple of {n}")


def train(spec: RunSpec, force: bool = False, progress=None, lr_origin: dict[str, Any] | None = None, resume: bool = True) -> RunOutcome:
    """Run `spec` unless its key is already finished (then return the stored row).

    `resume`: continue from the key's checkpoint (`runs/.partial/<key>/`) when there is one; with False
    (`medpeft train` without --resume) an existing checkpoint is an error, never silently discarded.
    `force` starts over (discarding a checkpoint). Raises `Preempted` after checkpointing when SIGTERM or
    SIGUSR1 arrives, and `RunDiverged` (a FloatingPointError) after storing a run whose loss became NaN/Inf.
    """
    with ExitStack() as held:  # the run key's lock, signal handlers, failure record: released however the run ends
        return _train(spec, force, progress, lr_origin, resume, held)


def _train(spec: RunSpec, force: bool, progress, lr_origin: dict[str, Any] | None, resume: bool, held: ExitStack) -> RunOutcome:
    """The body of `train` (see there).

    `lr_origin` is the provenance of a tuned lr (`lr_source`, `tuned_lr_trials`, `tune_study`, from
    `medpeft sweep`); without it the row says whether the lr was given or the method's default.
    """
    lr_origin = lr_origin or {"lr_source": "given" if spec.train.lr is not None else "method-default"}
    spec, info, options = resolve(spec)
    key = run_key(spec)
    out = spec.output
    run_dir = Path(out.runs_dir) / key
    if not force and (run_dir / RESULT_FILE).is_file():
        row = read_result(run_dir)
        append(out.db, row)  # no-op when present; restores the row if an earlier DB write failed
        return RunOutcome(key, "skipped", run_dir, row)
    from medpeft_cli.store.results import check_database
    from medpeft_cli.store.rundir import check_writable_dir

    check_writable_dir(Path(out.runs_dir), "--runs-dir")  # before training: fail now, not after hours
    check_database(out.db)
    if spec.task == "t2i":  # the text-to-image track has its own pipeline; it stores through the same code
        from medpeft_cli.t2i.runner import train_t2i

        quiet = progress is None or getattr(progress, "quiet", False)
        log = (lambda line: None) if quiet else (lambda line: progress.console.print(line, highlight=False))
        return train_t2i(spec, info, options, key, force, log, lr_origin)

    import numpy as np
    import torch
    from accelerate.utils import set_seed

    from medpeft_cli.data import load_dataset, stratified_subset
    from medpeft_cli.data.sampling import few_shot_subset
    from medpeft_cli.methods.accounting import meta_backbone
    from medpeft_cli.models import create_backbone
    from medpeft_cli.store.provenance import collect
    from medpeft_cli.train.batches import InputTransform, make_loader
    from medpeft_cli.train.checkpoint import save_weights
    from medpeft_cli.train.classify import fit, make_accelerator

    # Refuse a method/backbone pair before any data is loaded (a shape-only model says the family).
    check_supported(info, meta_backbone(spec.backbone, spec.image_size).family, spec.backbone)
    started = dt.datetime.now(dt.timezone.utc)
    wall_start = time.perf_counter()
    data = load_dataset(spec.dataset, out.data_dir, resolution=spec.data_resolution)
    if data.task != "multiclass":
        raise UserError(f"{spec.dataset} is a {data.task} dataset; `medpeft train` fine-tunes single-label classifiers (multiclass datasets)")
    train_split = data.splits["train"]
    if spec.shots is not None:
        subset = few_shot_subset(train_split.labels, spec.shots, spec.seed, data.class_names)
    else:
        subset = stratified_subset(train_split.labels, spec.data_fraction, spec.seed)
    missing = sorted(set(range(data.num_classes)) - set(np.unique(train_split.labels[subset]).tolist()))
    if missing:
        names = ", ".join(data.class_names[i] for i in missing)
        raise UserError(f"the training subset of {spec.dataset} has no images of class(es) {names}; use a larger --data-fraction")

    backbone = create_backbone(spec.backbone, spec.weights, data.num_classes, spec.image_size, spec.seed, spec.weights_prefix)
    check_supported(info, backbone.family, spec.backbone)
    head_params = sum(p.numel() for p in backbone.model.get_submodule(backbone.head_name).parameters())
    model = info.apply(backbone, options)
    counts = _parameter_counts(model, backbone.num_params, head_params)
    if spec.param_budget is not None:
        from medpeft_cli.methods.budget import parse_budget

        counts["param_budget"] = parse_budget(spec.param_budget, counts["backbone_params"])  # achieved: method_params

    accelerator = make_accelerator(spec.train)  # split batches over processes, non-blocking copies to the device
    _check_world(accelerator, spec)
    from medpeft_cli.store.locks import run_lock
    from medpeft_cli.store.rundir import failure_recorded

    held.enter_context(run_lock(Path(out.runs_dir), key, enabled=accelerator.is_main_process))
    if not force and (run_dir / RESULT_FILE).is_file():  # another process stored it while this one was loading
        row = read_result(run_dir)
        append(out.db, row)
        return RunOutcome(key, "skipped", run_dir, row)
    checkpoint = Checkpointer(Path(out.runs_dir), key, write=accelerator.is_main_process)
    resume_state = _resume_state(checkpoint, resume, force)
    stop = held.enter_context(StopFlag().on_signals())
    set_seed(spec.seed)
    cfg = getattr(backbone.model, "pretrained_cfg", {}) or {}
    transform = InputTransform(spec.image_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
    t = spec.train
    train_labels = train_split.labels[subset]
    class_counts = np.bincount(train_labels, minlength=data.num_classes)
    # balanced weight per class, n / (k * n_c) (the "balanced" heuristic of King & Zeng 2001)
    class_weights = torch.tensor(len(subset) / (data.num_classes * np.maximum(class_counts, 1)), dtype=torch.float32)
    train_loader = make_loader(train_split.images[subset], train_labels, t.batch_size, True, spec.seed)
    if t.class_weighting == "sampler":
        from medpeft_cli.train.classify import balanced_loader

        train_loader = balanced_loader(train_loader, class_weights[torch.from_numpy(train_labels)], spec.seed)
    loaders = {
        "train": train_loader,
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
    if resume_state is not None:
        checkpoint.check_matches(resume_state, model)
    held.enter_context(failure_recorded(Path(out.runs_dir), key, spec.key_fields(), passthrough=(Preempted, RunDiverged)))
    try:
        result = fit(
            model, loaders, transform, t, t.lr, data.num_classes, accelerator, on_epoch=on_epoch,
            class_weights=class_weights if t.class_weighting == "loss" else None,
            on_step=(progress.step if progress is not None and accelerator.is_main_process else lambda n: None),
            checkpoint=checkpoint, resume=resume_state, stop=stop,
        )
    finally:
        if progress is not None and accelerator.is_main_process:
            progress.stop()

    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return RunOutcome(key, "finished", run_dir, {})

    finished = dt.datetime.now(dt.timezone.utc)
    ok = result.status == "ok"  # "diverged": stored with NULL metrics, so no table shows it as a number
    test = result.test_metrics if ok else dict.fromkeys(("macro_f1", "accuracy", "balanced_accuracy", "auroc", "ece", "per_class_f1"))
    from medpeft_cli.train.metrics import subgroup_metrics

    test_split = data.splits["test"]
    order = result.test_predictions.indices.numpy() if ok else None  # gathered predictions -> rows of the test split
    subgroups = subgroup_metrics(
        result.test_predictions.probs, result.test_predictions.labels, data.num_classes,
        {c: test_split.meta[c][order].tolist() for c in data.subgroups},
    ) if data.subgroups and ok else None
    row: dict[str, Any] = {
        "run_key": key,
        "protocol_version": PROTOCOL_VERSION,
        "status": result.status,
        "status_detail": result.detail or None,
        "task": spec.task,
        "dataset": spec.dataset,
        "backbone": spec.backbone,
        "weights": spec.weights,
        "method": info.name,
        "data_fraction": spec.data_fraction,
        "seed": spec.seed,
        "epochs": t.epochs,
        "lr": t.lr,
        "lr_source": lr_origin.get("lr_source"),
        "tuned_lr_trials": lr_origin.get("tuned_lr_trials"),
        "tune_study": lr_origin.get("tune_study"),
        "batch_size": t.batch_size,
        "image_size": spec.image_size,
        "precision": accelerator.mixed_precision,
        "spec_json": json.dumps(spec.key_fields(), sort_keys=True), "speed_json": json.dumps(spec.speed_fields(), sort_keys=True),
        "test_macro_f1": test["macro_f1"],
        "test_accuracy": test["accuracy"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_auroc": test["auroc"],
        "val_macro_f1": result.val_metrics["macro_f1"] if ok else None,
        "best_epoch": result.best_epoch,
        "num_classes": data.num_classes,
        "class_names_json": json.dumps(data.class_names),
        "per_class_f1_json": json.dumps(test["per_class_f1"]) if ok else None,
        "metrics_json": json.dumps({"val": result.val_metrics, "test": test, "history": result.history, "test_subgroups": subgroups}),
        "test_ece": test["ece"],
        "worst_group_f1": subgroups["worst_group_f1"] if subgroups else None,
        "worst_group": subgroups["worst_group"] if subgroups else None,
        "group_gap": subgroups["group_gap"] if subgroups else None,
        "shots": spec.shots,
        "class_weighting": t.class_weighting,
        "split_checksum": data.split_checksum,
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
        "backbone_source": backbone.source_kind,
        **backbone.provenance,  # e.g. transformers_version for a transformers backbone
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
    }

    def fill(tmp: Path) -> dict[str, Any]:
        write_json(tmp / "spec.json", spec.model_dump(mode="json"))
        write_json(tmp / "metrics.json", {"val": result.val_metrics, "test": test, "test_subgroups": subgroups, "best_epoch": result.best_epoch, "history": result.history})
        if ok:  # a diverged model's weights and predictions are worth nothing
            _write_predictions(tmp / "predictions_test.csv", result.test_predictions, data.splits["test"].ids)
            save_weights(accelerator.unwrap_model(model), tmp, info.peft_owned)
        (tmp / "train.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
        return row

    write_run_dir(Path(out.runs_dir), key, fill, replace=force)
    append(out.db, row, replace=force)
    checkpoint.discard()  # the run is stored: nothing left to resume
    accelerator.wait_for_everyone()
    if not ok:
        raise RunDiverged(RunOutcome(key, "finished", run_dir, row))
    return RunOutcome(key, "finished", run_dir, row)


def _resume_state(checkpoint: Checkpointer, resume: bool, force: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None to start from the first step."""
    if force:
        checkpoint.discard()
        return None
    if not checkpoint.exists():
        return None
    if resume:
        return checkpoint.load()
    raise UserError(
        f"run {checkpoint.run_key} was interrupted and has a checkpoint ({checkpoint.path}); "
        "pass --resume to continue it or --force to start over"
    )


def _write_predictions(path: Path, preds, ids) -> None:
    import csv

    order = preds.indices.argsort()
    probs = preds.probs[order]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "id", "label", "pred"] + [f"prob_{c}" for c in range(probs.shape[1])])
        for i, label, p in zip(preds.indices[order].tolist(), preds.labels[order].tolist(), probs.tolist()):
            writer.writerow([i, ids[i], label, max(range(len(p)), key=p.__getitem__)] + [f"{v:.6g}" for v in p])
