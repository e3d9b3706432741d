"""Classification training (Accelerate): AdamW, warm-up + cosine schedule, model selection on the
validation split, test metrics from the selected evaluation.

The pieces: `TrainStep` (one batch: augmentation, forward, cross-entropy, backward, optimizer),
`Validation` (an evaluation on the validation split, into its record and the `Selection`), `Selection`
(the selected evaluation's weights: best val macro-F1, lowest val loss or the last), run by the shared
`EpochLoop` (train/loop.py: checkpoints, resume, stop signals, divergence) on the run's `Schedule`
(train/schedule.py: epochs or steps, when to evaluate). Protocol 1 (the defaults): an evaluation after
every epoch, the one with the best validation macro-F1 selected, no augmentation.
`train_classifier` trains; `Trained.score_test` scores the test split with the selected weights; `fit`
does both.

Runs unchanged under `accelerate launch` with several processes: each process sees a shard of every
loader, and predictions are gathered (duplicates from padding dropped) before any metric is computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from medpeft_cli.config import TrainOptions
from medpeft_cli.train.batches import InputTransform
from medpeft_cli.train.checkpoint import trainable_state
from medpeft_cli.train.loop import EpochLoop, make_scheduler, peak_memory, resolve_mixed_precision
from medpeft_cli.train.metrics import classification_metrics
from medpeft_cli.train.resume import Checkpointer, Control, StopFlag
from medpeft_cli.train.schedule import training_schedule

# torch.compile backend for `train.compile` (tests swap in "eager" to exercise the path without inductor's minutes).
COMPILE_BACKEND = "inductor"


@dataclass
class Predictions:
    indices: torch.Tensor  # positions in the split
    labels: torch.Tensor
    probs: torch.Tensor


@dataclass
class FitResult:
    best_epoch: int | None  # the epoch of the selected evaluation
    val_metrics: dict | None
    test_metrics: dict | None
    test_predictions: Predictions | None
    history: list[dict] = field(default_factory=list)
    train_images_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = ""
    status: str = "ok"  # or "diverged": the loss became NaN/Inf; no metrics then
    detail: str = ""
    best_step: int | None = None  # the optimizer step of the selected evaluation
    epochs: int = 0  # the schedule that was run: epochs (the last may be cut) and optimizer steps
    steps: int = 0


def balanced_loader(loader, sample_weights: torch.Tensor, seed: int):
    """The same batches as `loader` but drawn with replacement, each sample with probability
    proportional to its weight (1 / class count gives every class the same chance); one epoch
    still has len(dataset) samples."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    generator = torch.Generator().manual_seed(seed)
    sampler = WeightedRandomSampler(sample_weights.double(), num_samples=len(sample_weights), replacement=True, generator=generator)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn)


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
    """One training step: forward, class-weighted cross-entropy, backward, AdamW and the schedule (under
    gradient accumulation). Batches are (uint8 images, labels, sample indices) as the loaders yield them;
    `transform` turns them into model input (with the run's augmentation: `InputTransform.augmented`).

    The epoch's loss sum and the NaN/Inf flag stay on the device, so a step never waits for it; the loop
    (train/loop.py) reads them every DIVERGENCE_CHECK_STEPS steps and at the end of the epoch (benchmarks/train_step.py
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

    def __call__(self, batch) -> int:
        images, labels, _ = batch
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
        return len(labels)


def prepare_training(model: nn.Module, loaders: dict, options: TrainOptions, lr: float, accelerator: Accelerator):
    """Optimizer, Accelerate-prepared model and loaders, the run's `Schedule` and the warm-up + cosine
    learning-rate schedule over its optimizer steps.

    Returns (model, optimizer, scheduler, schedule, train_loader, val_loader, test_loader). The optimizer is the
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
    schedule = training_schedule(options, len(train_loader))
    # Stepped by hand (not through accelerator.prepare, which would step it once per process).
    scheduler = make_scheduler(optimizer, schedule.total_steps, schedule.warmup_steps)
    return model, optimizer, scheduler, schedule, train_loader, val_loader, test_loader


# TrainOptions.select_on -> how an evaluation scores (higher is better; ties keep the earlier one).
SELECTION_SCORES: dict[str, Callable[[dict], float]] = {
    "val_macro_f1": lambda metrics: metrics["macro_f1"],
    "val_loss": lambda metrics: -metrics["loss"],
}


@dataclass
class Selection:
    """Model selection (TrainOptions.select_on): the selected evaluation so far, its epoch, step, validation
    metrics and trainable state. "last" keeps no copy: the final weights are the selected ones (the last
    step is always evaluated). Checkpoints carry it (`state`/`load`, the checkpoint's best_* fields)."""

    rule: str = "val_macro_f1"
    best_score: float = -math.inf
    best_epoch: int = 0
    best_step: int | None = None
    best_state: dict | None = None
    val_metrics: dict = field(default_factory=dict)

    def update(self, epoch: int, step: int | None, metrics: dict, model: nn.Module) -> None:
        if self.rule == "last":
            self.best_epoch, self.best_step, self.val_metrics = epoch, step, metrics
            return
        score = SELECTION_SCORES[self.rule](metrics)
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_step, self.val_metrics = score, epoch, step, metrics
            self.best_state = {k: v.clone() for k, v in trainable_state(model).items()}

    def state(self) -> dict[str, Any]:
        best = None if self.best_state is None else {k: v.detach().cpu() for k, v in self.best_state.items()}
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "best_step": self.best_step, "val_metrics": self.val_metrics, "best_state": best}

    def load(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints of protocol-1 runs written before the selection rules held best_f1 and no step.
        self.best_score = checkpoint["best_score"] if "best_score" in checkpoint else checkpoint["best_f1"]
        self.best_epoch, self.best_step = checkpoint["best_epoch"], checkpoint.get("best_step")
        self.best_state, self.val_metrics = checkpoint["best_state"], checkpoint["val_metrics"]


def validation_loss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of the (gathered) softmax probabilities, without class weights."""
    picked = probs.float().gather(1, labels.long().view(-1, 1)).clamp_min(torch.finfo(torch.float32).tiny)
    return float(-picked.log().mean())


@dataclass
class Validation:
    """An evaluation on the validation split: its metrics into the evaluation's record (val_*, val_loss
    among them), and the model selection updated."""

    model: nn.Module
    loader: Any
    transform: InputTransform
    accelerator: Accelerator
    num_classes: int
    selection: Selection

    def __call__(self, epoch: int, record: dict) -> None:
        val = predict(self.model, self.loader, self.transform, self.accelerator)
        metrics = classification_metrics(val.probs, val.labels, self.num_classes)
        metrics["loss"] = validation_loss(val.probs, val.labels)
        record.update({f"val_{k}": v for k, v in metrics.items() if k != "per_class_f1"})
        self.selection.update(epoch, record.get("step"), metrics, self.accelerator.unwrap_model(self.model))


@dataclass
class Trained:
    """A finished `train_classifier`: the prepared model and test loader, and the result so far
    (`score_test` adds the test metrics of the selected epoch)."""

    model: nn.Module
    test_loader: Any
    transform: InputTransform
    accelerator: Accelerator
    num_classes: int
    selection: Selection
    result: FitResult

    def score_test(self) -> FitResult:
        """Load the selected evaluation's weights and score the test split (every process takes part: predictions are gathered)."""
        if self.selection.best_state is not None:
            self.accelerator.unwrap_model(self.model).load_state_dict(self.selection.best_state, strict=False)
        test = predict(self.model, self.test_loader, self.transform, self.accelerator)
        self.result.test_metrics = classification_metrics(test.probs, test.labels, self.num_classes)
        self.result.test_predictions = test
        self.result.peak_memory_mb, self.result.memory_kind = peak_memory(self.accelerator)
        return self.result


def train_classifier(
    model: nn.Module, loaders: dict, transform: InputTransform, options: TrainOptions, lr: float, num_classes: int,
    accelerator: Accelerator, control: Control | None = None, class_weights: torch.Tensor | None = None,
) -> Trained:  # fmt: skip
    """Train on the run's schedule (`options`: epochs or steps, evaluation schedule), selecting on
    `options.select_on` (see `EpochLoop` for checkpoints, resume and stop signals). The training batches
    get `options.augment`, evaluations never. A NaN/Inf loss ends training with result status "diverged"."""
    data_generator = loaders["train"].sampler.generator  # its state at an epoch's start fixes that epoch's batches
    model, optimizer, scheduler, schedule, train_loader, val_loader, test_loader = prepare_training(model, loaders, options, lr, accelerator)
    loss_weight = class_weights.to(accelerator.device) if class_weights is not None else None
    selection = Selection(options.select_on)
    loop = EpochLoop(
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, loader=train_loader,
        data_generator=data_generator, epochs=schedule.epochs, control=control, extra=selection,
        max_steps=schedule.total_steps, eval_steps=schedule.eval_steps,
        step=TrainStep(model, optimizer, scheduler, accelerator, transform.augmented(options.augment), loss_weight),
        evaluate=Validation(model, val_loader, transform, accelerator, num_classes, selection),
    )  # fmt: skip
    diverged = loop.run()
    peak, kind = peak_memory(accelerator)
    result = FitResult(
        best_epoch=None if diverged else selection.best_epoch, val_metrics=None if diverged else selection.val_metrics,
        test_metrics=None, test_predictions=None, history=loop.history, train_images_per_s=loop.images_per_s,
        peak_memory_mb=peak, memory_kind=kind, status="diverged" if diverged else "ok", detail=diverged,
        best_step=None if diverged else selection.best_step, epochs=schedule.epochs, steps=schedule.total_steps,
    )  # fmt: skip
    return Trained(model, test_loader, transform, accelerator, num_classes, selection, result)


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
    """Train, select an evaluation (protocol 1: the epoch with the best validation macro-F1), score test
    (`train_classifier` + `score_test`).

    With `checkpoint`, the state is saved after every epoch and, when `stop` is set (SIGTERM/SIGUSR1),
    after the current optimizer step, before raising `Preempted`. `resume` (a loaded checkpoint)
    continues from the step it was saved at, with the same data order and RNG states, so the result
    equals an uninterrupted run's exactly on CPU. A NaN/Inf loss ends training with status "diverged".
    """
    control = Control(checkpoint, resume, stop or StopFlag(), on_step, on_epoch)
    trained = train_classifier(model, loaders, transform, options, lr, num_classes, accelerator, control, class_weights)
    return trained.score_test() if trained.result.status == "ok" else trained.result
