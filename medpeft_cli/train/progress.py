"""Console progress for a training run: a rich bar per epoch on a terminal, one line per epoch otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress:
    """Shows a bar per epoch (images done, last loss, throughput) when stderr is a terminal.

    When it is not (Slurm logs, CI) only one summary line per epoch is printed; `quiet` prints nothing.
    `banner` (what is being trained) is printed before the first output, so a run refused while it
    loads shows only its error line.
    """

    def __init__(self, console: Console, quiet: bool = False, banner: str | None = None):
        self.console = console
        self.quiet = quiet
        self.banner = None if quiet else banner
        self.bars = console.is_terminal and not quiet
        self._progress: Progress | None = None
        self._task = None
        self._epochs = 0
        self._f1 = "-"

    def log(self, line: str) -> None:
        if not self.quiet:
            self._announce()
            self.console.print(line, highlight=False, markup=False)

    def _announce(self) -> None:
        if self.banner is not None:
            self.console.print(self.banner, highlight=False, markup=False)
            self.banner = None

    def start(self, epochs: int, images_per_epoch: int) -> None:
        self._epochs = epochs
        self._announce()
        if not self.bars:
            return
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val F1 {task.fields[f1]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=images_per_epoch, epoch=1, epochs=epochs, loss="-", f1="-", speed="")

    def step(self, n_images: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n_images)

    def epoch_done(self, record: dict, line: str) -> None:
        if self._progress is not None:
            if "val_macro_f1" in record:  # epochs without an evaluation (a step schedule) keep the last F1 shown
                self._f1 = f"{record['val_macro_f1']:.3f}"
            self._progress.update(self._task, loss=f"{record['train_loss']:.4f}", f1=self._f1, speed=f"{record['train_images_per_s']:.0f} img/s")
            if record["epoch"] < self._epochs:
                # Keep the finished epoch's bar on screen and start a fresh one.
                self._progress.stop_task(self._task)
                total = self._progress.tasks[self._task].total
                self._task = self._progress.add_task(
                    "train", total=total, epoch=record["epoch"] + 1, epochs=self._epochs, loss=f"{record['train_loss']:.4f}", f1=self._f1, speed="",
                )  # fmt: skip
        elif not self.quiet:
            self.console.print(line, highlight=False, markup=False)

    def evaluated(self, record: dict, line: str) -> None:
        """An evaluation inside an epoch (train.eval_every_steps / evals_per_run): one line; the bar shows its F1."""
        if self._progress is not None:
            self._f1 = f"{record['val_macro_f1']:.3f}"
            self._progress.update(self._task, f1=self._f1)
        if not self.quiet:
            self.console.print(line, highlight=False, markup=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class Report:
    """What a run shows while it works, through `progress` (an EpochProgress, a tuning trial's reporter,
    or None for nothing): log lines, a bar per epoch. Only the main process of a multi-process launch
    shows anything (`only_main`)."""

    def __init__(self, progress=None):
        self.progress = progress
        self.main = True

    def only_main(self, accelerator) -> None:
        self.main = accelerator.is_main_process

    @property
    def _on(self) -> bool:
        return self.main and self.progress is not None

    def log(self, line: str) -> None:
        if not self._on:
            return
        if hasattr(self.progress, "log"):
            self.progress.log(line)
            return
        console = getattr(self.progress, "console", None)
        if console is not None and not getattr(self.progress, "quiet", False):
            console.print(line, highlight=False)

    def start(self, epochs: int, images_per_epoch: int) -> None:
        if self._on:
            self.progress.start(epochs, images_per_epoch)

    def step(self, n_images: int) -> None:
        if self._on:
            self.progress.step(n_images)

    def epoch_done(self, record: dict, line: str) -> None:
        if self._on:
            self.progress.epoch_done(record, line)

    def evaluated(self, record: dict, line: str) -> None:
        """An evaluation inside an epoch; progress objects without `evaluated` get nothing."""
        if self._on and hasattr(self.progress, "evaluated"):
            self.progress.evaluated(record, line)

    def stop(self) -> None:
        if self._on:
            self.progress.stop()
