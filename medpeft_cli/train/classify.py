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

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from medpeft_cli.config import TrainOptions
from medpeft_cli.train.batches import InputTransform
from medpeft_cli.train.checkpoint import trainable_state
from medpeft_cli.train.metrics import classification_metrics


@dataclass
class Predictions:
    indices: torch.Tensor  # positions in the split
    labels: torch.Tensor
    probs: torch.Tensor


@dataclass
class FitResult:
    best_epoch: int
    val_metrics: dict
    test_metrics: dict
    test_predictions: Predictions
    history: list[dict] = field(default_factory=list)
    train_images_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = ""


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
    return Predictions(indices.cpu(), labels.cpu(), probs.cpu())


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
) -> FitResult:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["val"], loaders["test"]
    )
    steps_per_epoch = math.ceil(len(train_loader) / options.grad_accum_steps)
    total_steps = steps_per_epoch * options.epochs
    # Stepped by hand (not through accelerator.prepare, which would step it once per process).
    scheduler = make_scheduler(optimizer, total_steps, round(options.warmup_epochs * steps_per_epoch))

    best_f1, best_epoch, best_state = -1.0, 0, None
    history, val_metrics = [], {}
    images_seen, train_seconds = 0, 0.0
    for epoch in range(1, options.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        epoch_images = 0
        start = time.perf_counter()
        for images, labels, _ in train_loader:
            with accelerator.accumulate(model):
                logits = model(transform(images))
                loss = F.cross_entropy(logits.float(), labels)
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(labels)  # no host sync inside the step loop
            epoch_images += len(labels)
            on_step(len(labels))
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)
        seconds = time.perf_counter() - start
        images_seen += epoch_images
        train_seconds += seconds

        totals = accelerator.reduce(torch.stack([loss_sum, torch.tensor(float(epoch_images), device=accelerator.device)]), "sum")
        train_loss = float(totals[0] / totals[1])
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} in epoch {epoch}; lower the learning rate")
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

    unwrapped = accelerator.unwrap_model(model)
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

