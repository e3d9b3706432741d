"""The classification task (`task: classification`): a single-label classifier fine-tuned from a
backbone with a PEFT method, selected on the validation split (protocol 1: the epoch with the best
macro-F1; train.select_on), scored on the test split.

What the run orchestrator (run/lifecycle.py) calls; the training itself is train/classify.py. Torch is
imported inside the functions (the task registry loads this module to resolve specs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft_cli import jsonsafe
from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.methods import check_supported, validate_options
from medpeft_cli.run.task import Fitted, Prepared, Run

NO_TEST_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "auroc", "ece", "per_class_f1")


@dataclass(kw_only=True)
class ClassificationPrepared(Prepared):
    subset: Any  # indices of the training subset (fraction or shots) in the training split
    backbone: Any  # models.Backbone (mean/std of its pretrained config)
    schedule: Any  # train.schedule.Schedule: epochs, optimizer steps, when it evaluates


def fit_param_budget(spec: RunSpec, info: Any) -> Any:
    """`param_budget` picks the method's size knob; counted on a shape-only (meta) copy of the backbone."""
    from medpeft_cli.methods.accounting import meta_backbone
    from medpeft_cli.methods.budget import fit_budget

    fit = fit_budget(info, spec.method.options, spec.param_budget, meta_backbone(spec.backbone, spec.image_size, head=spec.head))
    given = spec.method.options.get(fit.knob)
    if given is not None and given != fit.value:
        raise UserError(f"method.{fit.knob}={given} conflicts with param_budget {spec.param_budget} (which needs {fit.knob}={fit.value}); give only one of them")
    return validate_options(info, {**spec.method.options, fit.knob: fit.value})


def parameter_counts(model, backbone_params: int, head_params: int) -> dict[str, Any]:
    """The row's parameter columns (what trains, what the method added, the backbone without its head)."""
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
        "backbone_params": backbone_params - head_params,  # the base of `param_budget` percentages
    }


def check_world(accelerator, spec: RunSpec) -> None:
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


def training_subset(spec: RunSpec, data) -> Any:
    """The training images of this run (a stratified fraction or k shots per class); every class must be in it."""
    import numpy as np

    from medpeft_cli.data import stratified_subset
    from medpeft_cli.data.sampling import few_shot_subset

    labels = data.splits["train"].labels
    if spec.shots is not None:
        subset = few_shot_subset(labels, spec.shots, spec.seed, data.class_names)
    else:
        subset = stratified_subset(labels, spec.data_fraction, spec.seed)
    missing = sorted(set(range(data.num_classes)) - set(np.unique(labels[subset]).tolist()))
    if missing:
        names = ", ".join(data.class_names[i] for i in missing)
        raise UserError(f"the training subset of {spec.dataset} has no images of class(es) {names}; use a larger --data-fraction")
    return subset


def make_loaders(prepared: ClassificationPrepared) -> tuple[dict, Any]:
    """(train/val/test loaders, class weights of the loss or None); class weighting "sampler" draws balanced batches."""
    import numpy as np
    import torch

    from medpeft_cli.train.batches import make_loader
    from medpeft_cli.train.classify import balanced_loader

    spec, data, subset = prepared.run.spec, prepared.data, prepared.subset
    t = spec.train
    labels = data.splits["train"].labels[subset]
    counts = np.bincount(labels, minlength=data.num_classes)
    # balanced weight per class, n / (k * n_c) (the "balanced" heuristic of King & Zeng 2001)
    class_weights = torch.tensor(len(subset) / (data.num_classes * np.maximum(counts, 1)), dtype=torch.float32)
    train = make_loader(data.splits["train"].images[subset], labels, t.batch_size, True, spec.seed)
    if t.class_weighting == "sampler":
        train = balanced_loader(train, class_weights[torch.from_numpy(labels)], spec.seed)
    loaders = {"train": train}
    for split in ("val", "test"):
        loaders[split] = make_loader(data.splits[split].images, data.splits[split].labels, t.eval_batch_size, False, spec.seed)
    return loaders, class_weights if t.class_weighting == "loss" else None


def validation_text(record: dict) -> str:
    """" val_macro_f1 ... val_accuracy ..." for a record with an evaluation, "" for one without."""
    if "val_macro_f1" not in record:
        return ""
    return f" val_macro_f1 {record['val_macro_f1']:.4f} val_accuracy {record['val_accuracy']:.4f}"


def write_predictions(path: Path, preds, ids) -> None:
    import csv

    order = preds.indices.argsort()
    probs = preds.probs[order]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "id", "label", "pred"] + [f"prob_{c}" for c in range(probs.shape[1])])
        for i, label, p in zip(preds.indices[order].tolist(), preds.labels[order].tolist(), probs.tolist()):
            writer.writerow([i, ids[i], label, max(range(len(p)), key=p.__getitem__)] + [f"{v:.6g}" for v in p])


class ClassificationTask:
    name = "classification"

    def resolve_options(self, spec: RunSpec, info) -> Any:
        options = validate_options(info, spec.method.options)
        return fit_param_budget(spec, info) if spec.param_budget is not None else options

    def fill_defaults(self, spec_data: dict[str, Any]) -> dict[str, Any]:
        return spec_data

    def prepare(self, run: Run, report) -> ClassificationPrepared:
        from medpeft_cli.data import load_dataset
        from medpeft_cli.methods.accounting import meta_backbone
        from medpeft_cli.models import create_backbone
        from medpeft_cli.train.classify import make_accelerator
        from medpeft_cli.train.schedule import training_schedule

        spec, info = run.spec, run.info
        # Refuse a method/backbone pair before any data is loaded (a shape-only model says the family).
        check_supported(info, meta_backbone(spec.backbone, spec.image_size, head=spec.head).family, spec.backbone)
        data = load_dataset(spec.dataset, spec.output.data_dir, resolution=spec.data_resolution)
        if data.task != "multiclass":
            raise UserError(f"{spec.dataset} is a {data.task} dataset; `medpeft train` fine-tunes single-label classifiers (multiclass datasets)")
        subset = training_subset(spec, data)
        schedule = training_schedule(spec.train, math.ceil(len(subset) / spec.train.batch_size))  # refuses a bad one before the model loads
        backbone = create_backbone(
            spec.backbone, spec.weights, data.num_classes, spec.image_size, spec.seed, spec.weights_prefix, weights_key=spec.weights_key, head=spec.head
        )  # fmt: skip
        check_supported(info, backbone.family, spec.backbone)
        head_params = sum(p.numel() for p in backbone.model.get_submodule(backbone.head_name).parameters())
        model = info.apply(backbone, run.options)
        params = parameter_counts(model, backbone.num_params, head_params)
        if spec.param_budget is not None:
            from medpeft_cli.methods.budget import parse_budget

            params["param_budget"] = parse_budget(spec.param_budget, params["backbone_params"])  # achieved: method_params
        accelerator = make_accelerator(spec.train)  # split batches over processes, non-blocking copies to the device
        check_world(accelerator, spec)
        report.only_main(accelerator)
        return ClassificationPrepared(
            run=run, report=report, accelerator=accelerator, model=model, data=data, train_images=len(subset), params=params,
            weights_source=backbone.weights_source, backbone_checksum=backbone.checksum, subset=subset, backbone=backbone, schedule=schedule,
            provenance={"backbone_source": backbone.source_kind, **backbone.provenance},  # e.g. transformers_version
        )  # fmt: skip

    def fit(self, prepared: ClassificationPrepared, control) -> Fitted:
        from accelerate.utils import set_seed

        from medpeft_cli.train.batches import InputTransform
        from medpeft_cli.train.classify import train_classifier

        spec, report = prepared.run.spec, prepared.report
        t = spec.train
        set_seed(spec.seed)
        cfg = getattr(prepared.backbone.model, "pretrained_cfg", {}) or {}
        transform = InputTransform(spec.image_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
        loaders, class_weights = make_loaders(prepared)

        schedule = prepared.schedule

        def on_epoch(record: dict) -> None:
            line = f"epoch {record['epoch']}/{schedule.epochs} train_loss {record['train_loss']:.4f}{validation_text(record)} {record['train_images_per_s']:.1f} img/s"
            prepared.log_lines.append(line)
            report.epoch_done(record, line)

        def on_eval(record: dict) -> None:
            line = f"step {record['step']}/{schedule.total_steps} (epoch {record['epoch']}){validation_text(record)}"
            prepared.log_lines.append(line)
            report.evaluated(record, line)

        control.on_step, control.on_epoch, control.on_eval = report.step, on_epoch, on_eval
        report.start(schedule.epochs, prepared.train_images)
        try:
            trained = train_classifier(
                prepared.model, loaders, transform, t, t.lr, prepared.data.num_classes, prepared.accelerator, control, class_weights
            )  # fmt: skip
        finally:
            report.stop()
        r = trained.result
        return Fitted(result=trained, history=r.history, diverged=r.detail if r.status != "ok" else "",
                      train_images_per_s=r.train_images_per_s, peak_memory_mb=r.peak_memory_mb, memory_kind=r.memory_kind)  # fmt: skip

    def evaluate(self, prepared: ClassificationPrepared, fitted: Fitted) -> dict[str, Any]:
        """Test metrics of the selected evaluation, and per subgroup where the dataset has subgroup columns."""
        from medpeft_cli.train.metrics import subgroup_metrics

        result = fitted.result.score_test()  # every process: the predictions are gathered
        fitted.peak_memory_mb, fitted.memory_kind = result.peak_memory_mb, result.memory_kind
        data, preds = prepared.data, result.test_predictions
        subgroups = None
        if data.subgroups:
            order = preds.indices.numpy()  # gathered predictions -> rows of the test split
            meta = data.splits["test"].meta
            subgroups = subgroup_metrics(preds.probs, preds.labels, data.num_classes, {c: meta[c][order].tolist() for c in data.subgroups})
        return {"test": result.test_metrics, "subgroups": subgroups}

    def row_fields(self, prepared: ClassificationPrepared, fitted: Fitted, metrics: dict[str, Any] | None) -> dict[str, Any]:
        result, data, t = fitted.result.result, prepared.data, prepared.run.spec.train
        test = metrics["test"] if metrics else dict.fromkeys(NO_TEST_METRICS)  # diverged: NULL, so no table shows a number
        subgroups = metrics["subgroups"] if metrics else None
        return {
            "test_macro_f1": test["macro_f1"],
            "test_accuracy": test["accuracy"],
            "test_balanced_accuracy": test["balanced_accuracy"],
            "test_auroc": test["auroc"],
            "test_ece": test["ece"],
            "val_macro_f1": result.val_metrics["macro_f1"] if metrics else None,
            "best_epoch": result.best_epoch,
            "best_step": result.best_step,
            "epochs": result.epochs,  # as run: with train.steps, derived from the steps (the spec's epochs are unused)
            "train_steps": result.steps,
            "num_classes": data.num_classes,
            "class_names_json": jsonsafe.dumps(data.class_names),
            "per_class_f1_json": jsonsafe.dumps(test["per_class_f1"]) if metrics else None,
            "metrics_json": jsonsafe.dumps({"val": result.val_metrics, "test": test, "history": result.history, "test_subgroups": subgroups}),
            "worst_group_f1": subgroups["worst_group_f1"] if subgroups else None,
            "worst_group": subgroups["worst_group"] if subgroups else None,
            "group_gap": subgroups["group_gap"] if subgroups else None,
            "shots": prepared.run.spec.shots,
            "class_weighting": t.class_weighting,
        }

    def save(self, prepared: ClassificationPrepared, fitted: Fitted, metrics: dict[str, Any] | None, folder: Path) -> None:
        from medpeft_cli.store.rundir import write_json
        from medpeft_cli.train.checkpoint import save_weights

        result = fitted.result.result
        test = metrics["test"] if metrics else dict.fromkeys(NO_TEST_METRICS)
        subgroups = metrics["subgroups"] if metrics else None
        write_json(folder / "metrics.json", {
            "val": result.val_metrics, "test": test, "test_subgroups": subgroups, "best_epoch": result.best_epoch,
            "best_step": result.best_step, "select_on": prepared.run.spec.train.select_on, "history": result.history,
        })  # fmt: skip
        if metrics:  # a diverged model's weights and predictions are worth nothing
            write_predictions(folder / "predictions_test.csv", result.test_predictions, prepared.data.splits["test"].ids)
            save_weights(prepared.accelerator.unwrap_model(fitted.result.model), folder, prepared.run.info.peft_owned)

    def headline(self, row: dict[str, Any]) -> str:
        return f"test macro-F1 {row['test_macro_f1']:.4f}" if row.get("test_macro_f1") is not None else str(row.get("status"))


TASK = ClassificationTask()
