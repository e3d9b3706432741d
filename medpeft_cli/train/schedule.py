"""A classification run's schedule: how many optimizer steps and epochs it trains, and after which
steps it evaluates on the validation split (TrainOptions: epochs or steps, eval_every_steps or
evals_per_run). No torch here: the task checks a schedule before it loads the model.

    protocol 1 (the defaults)   `epochs` epochs; an evaluation after every epoch
    train.steps S               S optimizer steps whatever the training subset's size: ceil(S / steps
                                per epoch) epochs, the last one cut at step S (a data-volume grid with
                                `steps` trains every fraction for the same number of steps)
    train.eval_every_steps N    evaluations after steps N, 2N, ... and after the last step
    train.evals_per_run K       evaluations after steps round(i * S / K), i = 1..K (the last at step S)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medpeft_cli.config import TrainOptions
from medpeft_cli.errors import UserError


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int  # optimizer steps of a whole epoch
    epochs: int  # epochs trained (the last may be cut, with train.steps)
    total_steps: int  # optimizer steps of the run: the learning-rate schedule's length
    eval_steps: frozenset[int] | None  # evaluate after these optimizer steps; None: after every epoch
    warmup_steps: int

    def evaluates_after(self, step: int, epoch_end: bool) -> bool:
        """Whether the run evaluates after optimizer step `step` (the epoch's last when `epoch_end`)."""
        return epoch_end if self.eval_steps is None else step in self.eval_steps

    @property
    def evaluations(self) -> int:
        return self.epochs if self.eval_steps is None else len(self.eval_steps)


def training_schedule(options: TrainOptions, batches_per_epoch: int) -> Schedule:
    """The schedule of a run whose training loader yields `batches_per_epoch` batches per epoch."""
    steps_per_epoch = max(math.ceil(batches_per_epoch / options.grad_accum_steps), 1)
    if options.steps is not None:
        total, epochs = options.steps, math.ceil(options.steps / steps_per_epoch)
    else:
        total, epochs = steps_per_epoch * options.epochs, options.epochs
    eval_steps = None
    if options.evals_per_run is not None:
        k = options.evals_per_run
        if k > total:
            raise UserError(f"train.evals_per_run {k} is more than the run's {total} optimizer steps; ask for at most {total} evaluations")
        eval_steps = frozenset(round(total * i / k) for i in range(1, k + 1))
    elif options.eval_every_steps is not None:
        eval_steps = frozenset(range(options.eval_every_steps, total + 1, options.eval_every_steps)) | {total}
    warmup = round(options.warmup_epochs * steps_per_epoch)
    return Schedule(steps_per_epoch, epochs, total, eval_steps, warmup)
