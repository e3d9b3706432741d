"""The epoch/step skeleton every task's training runs on (classification: train/classify.py,
text-to-image: t2i/loop.py): data order, checkpoint and exact resume, stop signals, divergence.

A task supplies the pieces that differ and the loop owns the rest:

    step        a `Step`: one batch -> forward, loss, backward, optimizer (under gradient accumulation);
                it keeps the epoch's loss sum and a NaN/Inf flag on the device, so no step waits for it
    evaluate    `evaluate(epoch, record)`: adds validation fields to a record holding "epoch" and "step"
                (the optimizer steps done) and updates the task's model selection
    extra       task state that checkpoints carry besides model, optimizer and schedule (the model
                selection, an EMA of the weights): `state() -> dict` and `load(checkpoint)`

When it evaluates: after every epoch (`eval_steps` None, protocol 1: the evaluation goes into the
epoch's record), or after the optimizer steps in `eval_steps` (classification's train.eval_every_steps /
evals_per_run, train/schedule.py): one that ends an epoch goes into the epoch's record, one inside an
epoch into a record of its own ({"epoch", "step", "val_..."}, passed to `control.on_eval`), followed by a
checkpoint. `max_steps` ends the run after that many optimizer steps, cutting the last epoch.

`history` holds the records in order: one per epoch (train_loss, lr, ...; `is_epoch_record`) and one
per evaluation inside an epoch. Augmentation belongs in the task's `Step` (the batch is on the device there).

Checkpoints (`Checkpointer`, train/resume.py) are written after an epoch or an evaluation inside an
epoch when one is due (the run's first, then at most every CHECKPOINT_INTERVAL_S), always after the last
epoch and, when the stop flag is set (SIGTERM/SIGUSR1), after the current optimizer step; then
`Preempted` is raised. A loaded checkpoint continues from the step it was saved at, with the same data
order and RNG states, so on CPU the result equals an uninterrupted run's bitwise. A NaN/Inf loss (looked
at every DIVERGENCE_CHECK_STEPS optimizer steps and at the end of each epoch) ends training: `run()`
returns why.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from medpeft_cli.errors import Preempted
from medpeft_cli.train.checkpoint import trainable_state
from medpeft_cli.train.resume import Control, frozen_fingerprint, restore_rng, rng_state

# How often (optimizer steps) the loop looks for a NaN/Inf loss inside an epoch: each look waits for the device.
DIVERGENCE_CHECK_STEPS = 20


class Step(Protocol):
    loss_sum: torch.Tensor  # this epoch's sum of per-sample losses, on the device
    nonfinite: torch.Tensor  # set when any loss so far was NaN/Inf, on the device

    def __call__(self, batch: Any) -> int:
        """Train on one batch; returns its number of samples."""


class TaskState(Protocol):
    def state(self) -> dict[str, Any]: ...

    def load(self, checkpoint: dict[str, Any]) -> None: ...


def is_epoch_record(record: dict) -> bool:
    """A history record of a whole epoch (not of an evaluation inside one)."""
    return "train_loss" in record


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up from ~0 to the base lr, then cosine decay to 0 over the remaining steps."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])



def resolve_mixed_precision(precision: str) -> str:
    """TrainOptions.precision -> Accelerate's mixed_precision: "auto" is bf16 (fp16 where bf16 is missing) on a GPU, fp32 on CPU."""
    if precision == "fp32":
        return "no"
    if precision == "auto":
        if not torch.cuda.is_available():
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def peak_memory(accelerator: Accelerator) -> tuple[float, str]:
    """Peak memory of this process in MiB and what was measured."""
    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated(accelerator.device) / 2**20, "cuda-max-allocated"
    # Linux reports ru_maxrss in KiB: the peak resident memory of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu-peak-rss"


def any_process(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """True when `flag` is set on any process (all processes must stop at the same step)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    return bool(accelerator.reduce(torch.as_tensor(flag, dtype=torch.float32, device=accelerator.device), "sum") > 0)


@dataclass
class EpochState:
    """Where the current epoch is: what a mid-epoch checkpoint holds besides the run's totals."""

    generator: torch.Tensor  # the data-order generator's state at the epoch's start (fixes its batches)
    loss_sum: torch.Tensor
    images: int = 0
    seconds_before: float = 0.0  # training time of this epoch before a resume
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started


class EpochLoop:
    """Train `epochs` epochs of `loader` with `step` (at most `max_steps` optimizer steps); see the module docstring."""

    def __init__(
        self, *, accelerator: Accelerator, model, optimizer, scheduler, loader, data_generator: torch.Generator,
        epochs: int, step: Step, control: Control | None = None,
        evaluate: Callable[[int, dict], None] = lambda epoch, record: None, extra: TaskState | None = None,
        max_steps: int | None = None, eval_steps: frozenset[int] | None = None,
    ):  # fmt: skip
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.loader, self.data_generator, self.epochs, self.step = loader, data_generator, epochs, step
        self.control = control or Control()
        self.evaluate, self.extra = evaluate, extra
        self.max_steps, self.eval_steps = max_steps, eval_steps
        self.unwrapped = accelerator.unwrap_model(model)
        self.history: list[dict] = []
        self.images_seen, self.train_seconds = 0, 0.0
        self.steps_done = 0  # optimizer steps so far, over all epochs

    def run(self) -> str:
        """Train the remaining epochs; returns "" or why training stopped (the loss became NaN/Inf)."""
        first, skip = self._start()
        resume = self.control.resume
        for epoch in range(first, self.epochs + 1):
            diverged = self._train_epoch(epoch, skip, resume)
            if diverged:
                return diverged
            skip, resume = 0, None
        return ""

    @property
    def images_per_s(self) -> float:
        return self.images_seen * self.accelerator.num_processes / max(self.train_seconds, 1e-9)

    def _start(self) -> tuple[int, int]:
        """(epoch, batches of it already done): (1, 0), or where the checkpoint to resume was taken."""
        keys = set(trainable_state(self.unwrapped))
        checkpoint, resume = self.control.checkpoint, self.control.resume
        if checkpoint is not None:
            checkpoint.fingerprint = frozen_fingerprint(self.unwrapped, keys)
        if resume is None:
            return 1, 0
        checkpoint.check_model(resume, keys)
        self.unwrapped.load_state_dict(resume["model"], strict=False)
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        self.accelerator.step = resume["accelerator_step"]  # where gradient accumulation is in its cycle
        self.history, self.images_seen, self.train_seconds = resume["history"], resume["images_seen"], resume["train_seconds"]
        self.steps_done = resume.get("optimizer_steps", self._steps_before(resume["epoch"], resume["step"]))
        self.data_generator.set_state(resume["data_generator"])
        if self.extra is not None:
            self.extra.load(resume)
        for record in self.history:  # the log and progress of the epochs done before the interruption
            (self.control.on_epoch if is_epoch_record(record) else self.control.on_eval)(record)
        return resume["epoch"], resume["step"]

    def _steps_before(self, epoch: int, batches: int) -> int:
        """Optimizer steps done before `batches` batches of `epoch` (checkpoints older than the step count)."""
        accumulation = self.accelerator.gradient_accumulation_steps
        return (epoch - 1) * math.ceil(len(self.loader) / accumulation) + math.ceil(batches / accumulation)

    def _evaluates_after(self, epoch_end: bool) -> bool:
        return epoch_end if self.eval_steps is None else self.steps_done in self.eval_steps

    def _begin_epoch(self, resume: dict | None, skip: int) -> EpochState:
        self.model.train()
        device = self.accelerator.device
        epoch = EpochState(self.data_generator.get_state(), torch.zeros((), device=device))
        if resume is not None:  # continue the interrupted epoch's sums
            epoch.loss_sum = resume["loss_sum"].to(device)
            epoch.images, epoch.seconds_before = resume["epoch_images"], resume["epoch_seconds"]
            if skip == 0:
                restore_rng(resume["rng"])
        self.step.loss_sum = epoch.loss_sum
        return epoch

    def _train_epoch(self, number: int, skip: int, resume: dict | None) -> str:
        state = self._begin_epoch(resume, skip)
        control = self.control
        batches = len(self.loader)
        for index, batch in enumerate(self.loader, 1):
            if index <= skip:  # replay the interrupted epoch's order up to where the checkpoint was taken
                if index == skip:
                    restore_rng(resume["rng"])
                continue
            if self.steps_done == self.max_steps:  # the run's step budget ends this (last) epoch early
                self._leave_loader()
                break
            n = self.step(batch)  # no host sync inside the step loop
            state.images += n
            control.on_step(n)
            if self.accelerator.sync_gradients:
                self.steps_done += 1
                epoch_end = index == batches or self.steps_done == self.max_steps
                if not epoch_end and self._evaluates_after(epoch_end=False):
                    self._evaluate_within(number, index, state)
                if any_process(self.accelerator, control.stop.requested):
                    state.loss_sum = self.step.loss_sum
                    self._save(number, index, state)
                    raise Preempted(f"{control.stop.reason}: stopped in epoch {number} after step {index}")
            if index % DIVERGENCE_CHECK_STEPS == 0 and any_process(self.accelerator, self.step.nonfinite):
                return f"training loss became NaN/Inf in epoch {number} (by step {index})"
        return self._end_epoch(number, state)

    def _leave_loader(self) -> None:
        """Leaving an epoch's batches early: an Accelerate loader must stop being the active one (its
        gradient state would otherwise keep pointing at it)."""
        end = getattr(self.loader, "end", None)
        if end is not None:
            end()

    def _evaluate_within(self, number: int, index: int, state: EpochState) -> None:
        """An evaluation inside epoch `number` after its `index`-th batch: its own record, then a checkpoint."""
        started = time.perf_counter()
        record = {"epoch": number, "step": self.steps_done}
        self.evaluate(number, record)
        self.model.train()  # the evaluation switched the model to eval mode
        self.history.append(record)
        self.control.on_eval(record)
        state.started += time.perf_counter() - started  # evaluation time is not training time
        state.loss_sum = self.step.loss_sum
        self._save(number, index, state, routine=True)

    def _end_epoch(self, number: int, state: EpochState) -> str:
        accelerator = self.accelerator
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)
        seconds = state.seconds()
        self.images_seen += state.images
        self.train_seconds += seconds
        totals = accelerator.reduce(torch.stack([self.step.loss_sum, torch.tensor(float(state.images), device=accelerator.device)]), "sum")
        train_loss = float(totals[0] / totals[1])
        if not math.isfinite(train_loss):
            return f"training loss became {train_loss} in epoch {number}"
        record = {
            "epoch": number,
            "step": self.steps_done,
            "train_loss": train_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "train_images_per_s": state.images * accelerator.num_processes / seconds,
        }
        if self._evaluates_after(epoch_end=True):
            self.evaluate(number, record)
        self.history.append(record)
        self.control.on_epoch(record)
        last = number == self.epochs or self.steps_done == self.max_steps
        stopping = any_process(accelerator, self.control.stop.requested)
        self._save(number + 1, 0, EpochState(self.data_generator.get_state(), torch.zeros(())), routine=not (last or stopping))
        if stopping:
            raise Preempted(f"{self.control.stop.reason}: stopped after epoch {number}")
        return ""

    def _save(self, epoch: int, step: int, state: EpochState, routine: bool = False) -> None:
        """Checkpoint "continue in `epoch` after `step` batches"; a `routine` one only when it is due
        (decided alike on every process: each waits for the others after a save)."""
        checkpoint = self.control.checkpoint
        if checkpoint is None or (routine and not any_process(self.accelerator, checkpoint.due())):
            return
        checkpoint.save({
            "epoch": epoch, "step": step, "accelerator_step": self.accelerator.step, "optimizer_steps": self.steps_done,
            "model": {k: v.detach().cpu().clone() for k, v in trainable_state(self.unwrapped).items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "data_generator": state.generator, "rng": rng_state(),
            "loss_sum": state.loss_sum.detach().cpu(), "epoch_images": state.images,
            "epoch_seconds": state.seconds() if step else 0.0,
            "history": self.history, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            **(self.extra.state() if self.extra is not None else {}),
        })  # fmt: skip
        self.accelerator.wait_for_everyone()
