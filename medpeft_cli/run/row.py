"""The result row's fields every task shares (one builder; each task adds its own columns, run/task.py)."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from medpeft_cli.config import PROTOCOL_VERSION
from medpeft_cli.run.task import Fitted, Prepared
from medpeft_cli.store.provenance import collect, device_name


@dataclass
class Clock:
    """When a run started (wall clock, for the row) and how long it has taken (monotonic)."""

    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    start: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def shared_fields(prepared: Prepared, fitted: Fitted, clock: Clock) -> dict[str, Any]:
    """What was run, how it went, what it cost and where it came from: the columns of every task."""
    run, accelerator, data = prepared.run, prepared.accelerator, prepared.data
    spec, t = run.spec, run.spec.train
    finished = dt.datetime.now(dt.timezone.utc)
    return {
        "run_key": run.key,
        "protocol_version": PROTOCOL_VERSION,
        "status": "diverged" if fitted.diverged else "ok",  # diverged: stored with NULL metrics
        "status_detail": fitted.diverged or None,
        "task": spec.task,
        "dataset": spec.dataset,
        "backbone": spec.backbone,
        "weights": spec.weights,
        "method": run.info.name,
        "data_fraction": spec.data_fraction,
        "seed": spec.seed,
        "epochs": t.epochs,
        "lr": t.lr,
        **{k: run.lr_origin.get(k) for k in ("lr_source", "tuned_lr_trials", "tune_study")},
        "batch_size": t.batch_size,
        "image_size": spec.image_size,
        "precision": accelerator.mixed_precision,
        "spec_json": json.dumps(spec.key_fields(), sort_keys=True),
        "speed_json": json.dumps(spec.speed_fields(), sort_keys=True),
        "split_checksum": data.split_checksum,
        "train_images": int(prepared.train_images),
        **prepared.params,
        "wall_time_s": clock.seconds(),
        "train_images_per_s": fitted.train_images_per_s,
        "peak_memory_mb": fitted.peak_memory_mb,
        "memory_kind": fitted.memory_kind,
        **collect(device_name(accelerator), accelerator.num_processes),
        "dataset_checksum": data.checksum,
        "dataset_source": data.source,
        "weights_source": prepared.weights_source,
        "backbone_checksum": prepared.backbone_checksum,
        **prepared.provenance,
        "started_at": clock.started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
    }
