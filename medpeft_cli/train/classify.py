"""The classification training loop (Accelerate): AdamW, warm-up + cosine schedule, model
selection on validation macro-F1, test metrics from the selected epoch.

Runs unchanged under `accelerate launch` with several processes: each process sees a shard of every
loader, and predictions are gathered (duplicates from padding dropped) before any metric is computed.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from medpeft_cli.config import TrainOptions
from medpeft_cli.train.batches import InputTransform
from medpeft_cli.train.checkpoint import trainable_state
from medpeft_cli.train.metrics import classification_metrics
from medpeft_cli.train.resume import Checkpointer, Preempted, StopFlag, frozen_fingerprint, restore_rng, rng_state

# How often (optimizer steps) the loop looks for a NaN/Inf loss inside an epoch: each look waits for the device.
DIVERGENCE_CHECK_STEPS = 20
# torch.compile backend for `train.compile` (tests swap in "eager" to exercise the path without inductor's minutes).
COMPILE_BACKEND = "inductor"


@dataclass
class Predictions:
    indices: torch.Tensor  # positions in the split
    labels: torch.Tensor
    probs: torch.Tensor


@dataclass
class FitResult:
    best_epoch: int | None
    val_metrics: dict | None
    test_metrics: dict | None
    test_predictions: Predictions | None
    history: list[dict] = field(default_factory=list)
    train_images_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = ""
    status: str = "ok"  # or "diverged": the loss became NaN/Inf; no metrics then
    detail: str = ""


def balanced_loader(loader, sample_weights: torch.Tensor, seed: int):
    """The same batches as `loader` but drawn with replacement, each sample with probability
    proportional to its weight (1 / class count gives every class the same chance); one epoch
    still has len(dataset) samples."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    generator = torch.Generator().manual_seed(seed)
    sampler = WeightedRandomSampler(sample_weights.double(), num_samples=len(sample_weights), replacement=True, generator=generator)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up from ~0 to the base lr, then cosine decay to 0 over the remaining steps."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


@torch.inference_mode()
def predict(model: nn.Module, loader, transform: InputTransform, accelerator: Accelerator) -> Predictions:
    """Softmax probabilities for a whole split, gathered across processes (padding duplicates removed)."""
    model.eval()
    chunks = []
    for images, labels, indices in loader:
        logits = model(transform(images))
        chunks.append((indices, labels, logits.float().softmax(dim=1)))
    indices, labels, probs = (torch.cat(parts) for parts in zip(*chunks))
    indices, labels, probs = accelerator.gather_for_metrics((indices, labels, probs))
    # Called once after the loop, gather_for_metrics cannot drop the samples Accelerate repeats to
    # pad the last batch of each process (it does that only per batch); the sample indices make the
    # de-duplication exact: keep each index once (issue 7, multi-process runs).
    indices = indices.cpu()
    unique, inverse = torch.unique(indices, return_inverse=True)
    first = torch.full_like(unique, len(indices)).scatter_reduce(0, inverse, torch.arange(len(indices)), reduce="amin")
    return Predictions(indices[first], labels.cpu()[first], probs.cpu()[first])


def resolve_mixed_precision(precision: str) -> str:
    """TrainOptions.precision -> Accelerate's mixed_precision: "auto" is bf16 (fp16 where bf16 is missing) on a GPU, fp32 on CPU."""
    if precision == "fp32":
        return "no"
    if precision == "auto":
        if not torch.cuda.is_available():
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def make_accelerator(options: TrainOptions) -> Accelerator:
    """The Accelerator `medpeft train` runs under.

    split_batches: batch_size is the global batch, split over the processes, so N processes train the
    same steps as one and the run key means the same experiment at any world size. non_blocking (with
    the loaders' pinned memory on a GPU): the next batch's copy to the device does not wait for the
    step that is still running there.
    """
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(
        mixed_precision=resolve_mixed_precision(options.precision), gradient_accumulation_steps=options.grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True),
    )  # fmt: skip


def make_optimizer(model: nn.Module, lr: float, options: TrainOptions, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; on a GPU the fused kernel (one launch for all parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay, fused=True if device.type == "cuda" else None)


@dataclass
class TrainStep:
    """One training step of `fit`: forward, loss, backward, AdamW and the schedule (under gradient accumulation).

    The epoch's loss sum and the NaN/Inf flag stay on the device, so a step never waits for it; `fit`
    reads them every DIVERGENCE_CHECK_STEPS steps and at the end of the epoch (benchmarks/train_step.py
    times `fit` with it against a minimal hand-written loop).
    """

    model: nn.Module
    optimizer: Any
    scheduler: Any
    accelerator: Accelerator
    transform: InputTransform
    loss_weight: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), device=self.accelerator.device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.accelerator.device)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            logits = self.model(self.transform(images))
            loss = F.cross_entropy(logits.float(), labels, weight=self.loss_weight)
            accelerator.backward(loss)  # divides by the accumulation steps; scales the loss under fp16
            if accelerator.sync_gradients:
                if accelerator.scaler is not None:  # fp16: skips the step when gradients overflowed
                    accelerator.scaler.step(self.optimizer)
                    accelerator.scaler.update()
                else:
                    self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        loss = loss.detach()
        self.loss_sum += loss * len(labels)
        self.nonfinite |= ~torch.isfinite(loss)


def prepare_training(model: nn.Module, loaders: dict, options: TrainOptions, lr: float, accelerator: Accelerator):
    """Optimizer, Accelerate-prepared model and loaders, and the warm-up + cosine schedule of `fit`.

    Returns (model, optimizer, scheduler, train_loader, val_loader, test_loader). The optimizer is the
    plain torch one: Accelerate's wrapper adds nothing medpeft uses (TrainStep gates the step on
    `sync_gradients` and applies the fp16 scaler itself) but costs two package look-ups on the file system
    in every step (accelerate 1.15 `AcceleratedOptimizer.step` calls `is_lomo_available()` twice).
    """
    if options.compile:
        # In place (nn.Module.compile): module, parameter and state-dict names stay those of the plain model,
        # so checkpoints, resume and saved adapters are unchanged.
        model.compile(backend=COMPILE_BACKEND)
    model, train_loader, val_loader, test_loader = accelerator.prepare(model, loaders["train"], loaders["val"], loaders["test"])
    optimizer = make_optimizer(model, lr, options, accelerator.device)  # the parameters are on the device now
    steps_per_epoch = math.ceil(len(train_loader) / options.grad_accum_steps)
    # Stepped by hand (not through accelerator.prepare, which would step it once per process).
    scheduler = make_scheduler(optimizer, steps_per_epoch * options.epochs, round(options.warmup_epochs * steps_per_epoch))
    return model, optimizer, scheduler, train_loader, val_loader, test_loader


def _peak_memory(accelerator: Accelerator) -> tuple[float, str]:
    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated(accelerator.device) / 2**20, "cuda-max-allocated"
    # Linux reports ru_maxrss in KiB: the peak resident memory of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu-peak-rss"


def fit(
    model: nn.Module,
    loaders: dict,
    transform: InputTransform,
    options: TrainOptions,
    lr: float,
    num_classes: int,
    accelerator: Accelerator,
    on_epoch: Callable[[dict], None] = lambda record: None,
    on_step: Callable[[int], None] = lambda n_images: None,
    class_weights: torch.Tensor | None = None,
    checkpoint: Checkpointer | None = None,
    resume: dict | None = None,
    stop: StopFlag | None = None,
) -> FitResult:
    """Train, select the epoch on validation macro-F1, score test.

    With `checkpoint`, the state is saved after every epoch and, when `stop` is set (SIGTERM/SIGUSR1),
    after the current optimizer step, before raising `Preempted`. `resume` (a loaded checkpoint)
    continues from the step it was saved at, with the same data order and RNG states, so the result
    equals an uninterrupted run's exactly on CPU. A NaN/Inf loss ends training with status "diverged".
    """
    stop = stop or StopFlag()
    # The shuffling generator: its state at the start of an epoch fixes that epoch's batches.
    data_generator = loaders["train"].sampler.generator
    model, optimizer, scheduler, train_loader, val_loader, test_loader = prepare_training(model, loaders, options, lr, accelerator)
    loss_weight = class_weights.to(accelerator.device) if class_weights is not None else None
    train_step = TrainStep(model, optimizer, scheduler, accelerator, transform, loss_weight)
    best_f1, best_epoch, best_state = -1.0, 0, None
    history, val_metrics = [], {}
    images_seen, train_seconds = 0, 0.0
    unwrapped = accelerator.unwrap_model(model)
    trainable_keys = set(trainable_state(unwrapped))
    if checkpoint is not None:
        checkpoint.fingerprint = frozen_fingerprint(unwrapped, trainable_keys)
    start_epoch, skip_steps = 1, 0
    if resume is not None:
        checkpoint.check_model(resume, trainable_keys)
        unwrapped.load_state_dict(resume["model"], strict=False)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        accelerator.step = resume["accelerator_step"]  # where gradient accumulation is in its cycle
        best_f1, best_epoch, best_state, val_metrics = resume["best_f1"], resume["best_epoch"], resume["best_state"], resume["val_metrics"]
        history, images_seen, train_seconds = resume["history"], resume["images_seen"], resume["train_seconds"]
        start_epoch, skip_steps = resume["epoch"], resume["step"]
        data_generator.set_state(resume["data_generator"])
        for record in history:  # the log and progress of the epochs done before the interruption
            on_epoch(record)

    def any_process(flag: bool | torch.Tensor) -> bool:
        """True when `flag` is set on any process (all processes must stop at the same step)."""
        if accelerator.num_processes == 1:
            return bool(flag)
        return bool(accelerator.reduce(torch.as_tensor(flag, dtype=torch.float32, device=accelerator.device), "sum") > 0)

    def save(epoch: int, step: int, generator_state: torch.Tensor, loss_sum: torch.Tensor, epoch_images: int, epoch_seconds: float) -> None:
        """Checkpoint "continue in `epoch` after `step` batches"; the generator state is the one at that epoch's start."""
        if checkpoint is None:
            return
        checkpoint.save({
            "epoch": epoch, "step": step, "accelerator_step": accelerator.step,
            "model": {k: v.detach().cpu().clone() for k, v in trainable_state(unwrapped).items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "data_generator": generator_state, "rng": rng_state(),
            "loss_sum": loss_sum.detach().cpu(), "epoch_images": epoch_images, "epoch_seconds": epoch_seconds,
            "best_f1": best_f1, "best_epoch": best_epoch, "val_metrics": val_metrics,
            "best_state": None if best_state is None else {k: v.detach().cpu() for k, v in best_state.items()},
            "history": history, "images_seen": images_seen, "train_seconds": train_seconds,
        })  # fmt: skip
        accelerator.wait_for_everyone()

    diverged = ""
    for epoch in range(start_epoch, options.epochs + 1):
        model.train()
        train_step.loss_sum = torch.zeros((), device=accelerator.device)
        epoch_images, seconds_before = 0, 0.0
        epoch_generator = data_generator.get_state()
        if resume is not None and epoch == start_epoch:
            train_step.loss_sum = resume["loss_sum"].to(accelerator.device)
            epoch_images, seconds_before = resume["epoch_images"], resume["epoch_seconds"]
            if skip_steps == 0:
                restore_rng(resume["rng"])
        start = time.perf_counter()
        step = 0
        for images, labels, _ in train_loader:
            step += 1
            if step <= skip_steps:  # replay the interrupted epoch's order up to where the checkpoint was taken
                if step == skip_steps:
                    restore_rng(resume["rng"])
                continue
            train_step(images, labels)  # no host sync inside the step loop
            epoch_images += len(labels)
            on_step(len(labels))
            if accelerator.sync_gradients and any_process(stop.requested):
                save(epoch, step, epoch_generator, train_step.loss_sum, epoch_images, seconds_before + time.perf_counter() - start)
                raise Preempted(f"{stop.reason}: stopped in epoch {epoch} after step {step}")
            if step % DIVERGENCE_CHECK_STEPS == 0 and any_process(train_step.nonfinite):
                diverged = f"training loss became NaN/Inf in epoch {epoch} (by step {step})"
                break
        skip_steps = 0
        if diverged:
            break
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)
        seconds = seconds_before + time.perf_counter() - start
        images_seen += epoch_images
        train_seconds += seconds

        totals = accelerator.reduce(torch.stack([train_step.loss_sum, torch.tensor(float(epoch_images), device=accelerator.device)]), "sum")
        train_loss = float(totals[0] / totals[1])
        if not math.isfinite(train_loss):
            diverged = f"training loss became {train_loss} in epoch {epoch}"
            break
        val = predict(model, val_loader, transform, accelerator)
        val_metrics_epoch = classification_metrics(val.probs, val.labels, num_classes)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": scheduler.get_last_lr()[0],
            "train_images_per_s": epoch_images * accelerator.num_processes / seconds,
            **{f"val_{k}": v for k, v in val_metrics_epoch.items() if k != "per_class_f1"},
        }
        history.append(record)
        on_epoch(record)
        if val_metrics_epoch["macro_f1"] > best_f1:
            best_f1, best_epoch, val_metrics = val_metrics_epoch["macro_f1"], epoch, val_metrics_epoch
            best_state = {k: v.clone() for k, v in trainable_state(accelerator.unwrap_model(model)).items()}
        save(epoch + 1, 0, data_generator.get_state(), torch.zeros(()), 0, 0.0)
        if any_process(stop.requested):
            raise Preempted(f"{stop.reason}: stopped after epoch {epoch}")

    if diverged:
        peak, kind = _peak_memory(accelerator)
        return FitResult(None, None, None, None, history=history, peak_memory_mb=peak, memory_kind=kind, status="diverged", detail=diverged,
                         train_images_per_s=images_seen * accelerator.num_processes / max(train_seconds, 1e-9))
    if best_state is not None:
        unwrapped.load_state_dict(best_state, strict=False)
    test = predict(model, test_loader, transform, accelerator)
    peak, kind = _peak_memory(accelerator)
    return FitResult(
        best_epoch=best_epoch,
        val_metrics=val_metrics,
        test_metrics=classification_metrics(test.probs, test.labels, num_classes),
        test_predictions=test,
        history=history,
        train_images_per_s=images_seen * accelerator.num_processes / max(train_seconds, 1e-9),
        peak_memory_mb=peak,
        memory_kind=kind,
    )

