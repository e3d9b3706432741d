"""Checkpoint and resume of a training run, and stopping cleanly when the scheduler asks.

A checkpoint holds everything the loop needs to continue exactly where it was: the trainable
state (train/checkpoint.py `trainable_state`), optimizer, scheduler, the RNG states of torch (CPU and
CUDA), numpy and Python, the data-order generator's state at the start of the current epoch, the
epoch and the number of batches already done in it, the best-so-far state and the history. It is
written to `runs/.partial/<run_key>/checkpoint.pt` through a temporary file and `os.replace`, so a
kill at any moment leaves the previous checkpoint or the new one, never half a file; the runner
removes it once the run is stored.

Checkpoints hold only tensors and plain Python values and are read with `torch.load(weights_only=True)`:
a checkpoint that needs arbitrary unpickling is refused.

SIGTERM and SIGUSR1 (what Slurm sends before it kills or requeues a job) set a flag; the loop
(train/loop.py) finishes the current optimizer step, checkpoints and raises `errors.Preempted`, which
the CLI turns into exit code 75 (EX_TEMPFAIL: "try again later") so a job script can requeue the task.

This module imports torch only inside functions.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError

PARTIAL_DIR = ".partial"
# Routine checkpoints (epoch ends, evaluations) are written at most this often: a run of tiny epochs (5 %
# of a small dataset: one optimizer step each) otherwise spends a third of its time writing them. A stop
# signal and the last epoch always write one; a crash loses at most this much training.
CHECKPOINT_INTERVAL_S = 30.0
INTERVAL_ENV = "MEDPEFT_CHECKPOINT_INTERVAL_S"  # overrides it (0: after every epoch and evaluation)
CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "medpeft-checkpoint-v1"
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (or by `request()`); the training loop checks it after each optimizer step."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        self.requested = True
        self.reason = reason

    @contextmanager
    def on_signals(self) -> Iterator[StopFlag]:
        """Catch SIGTERM and SIGUSR1 while the block runs (main thread only; signals can only be handled there)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {}
        for name in STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, lambda num, frame: self.request(f"received {signal.Signals(num).name}"))
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


@dataclass
class Control:
    """What the run orchestrator hands a task's training: checkpointing, the loaded checkpoint to
    continue from, the stop flag, and progress hooks (per batch: its size; per epoch: its record; per
    evaluation inside an epoch: its record)."""

    checkpoint: Checkpointer | None = None
    resume: dict | None = None
    stop: StopFlag = field(default_factory=StopFlag)
    on_step: Callable[[int], None] = lambda n_images: None
    on_epoch: Callable[[dict], None] = lambda record: None
    on_eval: Callable[[dict], None] = lambda record: None  # an evaluation inside an epoch (train/loop.py)


def partial_dir(runs_dir: Path, run_key: str) -> Path:
    return Path(runs_dir) / PARTIAL_DIR / run_key


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, Python) as tensors and plain values."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def frozen_fingerprint(model, trainable_keys: set[str]) -> str:
    """Hash of every tensor a checkpoint does not hold (frozen weights): they must be rebuilt identically."""
    import hashlib

    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name in trainable_keys:
            continue
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_interval() -> float:
    """Seconds between routine checkpoints: $MEDPEFT_CHECKPOINT_INTERVAL_S or CHECKPOINT_INTERVAL_S."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return CHECKPOINT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise UserError(f"{INTERVAL_ENV}={text!r} is not a number of seconds >= 0; unset it or set e.g. 30")
    return value


class Checkpointer:
    """Writes and reads the checkpoint of one run key (only the main process writes)."""

    def __init__(
        self, runs_dir: Path, run_key: str, write: bool = True,
        min_interval_s: float | None = None, clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        self.run_key = run_key
        self.directory = partial_dir(runs_dir, run_key)
        self.path = self.directory / CHECKPOINT_FILE
        self.write = write
        self.fingerprint = ""  # set by the loop before the first save
        self.min_interval_s = checkpoint_interval() if min_interval_s is None else min_interval_s
        self.clock = clock
        self.last_saved: float | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    def due(self) -> bool:
        """Whether a routine checkpoint should be written now: the run's first, or `min_interval_s` after the last."""
        return self.last_saved is None or self.clock() - self.last_saved >= self.min_interval_s

    def save(self, state: dict[str, Any]) -> None:
        import torch

        if not self.write:  # another process writes it; the same clock keeps `due` alike on all
            self.last_saved = self.clock()
            return
        state = {"format": FORMAT, "run_key": self.run_key, "frozen_fingerprint": self.fingerprint, **state}
        tmp = self.path.with_name(f".{CHECKPOINT_FILE}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self.last_saved = self.clock()
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write checkpoint {self.path}: {exc.strerror or exc}; free disk space or choose another --runs-dir") from None

    def load(self) -> dict[str, Any]:
        """The checkpoint, refused unless it loads weights-only and belongs to this run key."""
        import pickle

        import torch

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = f"the Python object {found.group(1)}" if found else "Python objects"
            raise UserError(
                f"refusing to load checkpoint {self.path}: it holds {what}, which only unsafe (pickle) loading could restore; "
                "delete it or rerun with --force to start over"
            ) from None
        except Exception as exc:  # noqa: BLE001 (truncated, or not a torch file at all: any reader error means damaged)
            raise UserError(f"checkpoint {self.path} is damaged ({type(exc).__name__}); delete it or rerun with --force to start over") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"{self.path} is not a medpeft checkpoint ({FORMAT}); delete it or rerun with --force to start over")
        if state.get("run_key") != self.run_key:
            raise UserError(f"checkpoint {self.path} belongs to run {state.get('run_key')}, not {self.run_key}; delete it or rerun with --force")
        return state

    def check_matches(self, state: dict[str, Any], model) -> None:
        """`check_model` against a model before training (so a mismatch is a user error, not a failed run)."""
        from medpeft_cli.train.checkpoint import trainable_state

        keys = set(trainable_state(model))
        self.fingerprint = frozen_fingerprint(model, keys)
        self.check_model(state, keys)

    def check_model(self, state: dict[str, Any], trainable_keys: set[str]) -> None:
        """Refuse a checkpoint made for another architecture, method or frozen weights."""
        saved = set(state["model"])
        missing, unexpected = trainable_keys - saved, saved - trainable_keys
        if missing or unexpected:
            example = ", ".join(sorted(missing | unexpected)[:3])
            raise UserError(
                f"checkpoint {self.path} does not match this run's model ({len(missing)} missing, {len(unexpected)} unexpected "
                f"tensors, e.g. {example}); rerun with --force to start over"
            )
        if state.get("frozen_fingerprint") != self.fingerprint:
            raise UserError(
                f"checkpoint {self.path} was made from other frozen weights than this run builds (another timm/medpeft "
                "version or weights file?); rerun with --force to start over"
            )

    def discard(self) -> None:
        import shutil

        if self.write:
            shutil.rmtree(self.directory, ignore_errors=True)
            _remove_if_empty(self.directory.parent)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
