"""What a grid will cost before it is submitted: device-hours from measured throughput.

Measurements, per (backbone, method, image size, device):

    finished runs    rows of the grid's results database with status ok: their training img/s, and the
                     rest of their wall time (evaluation, loading, start-up) per evaluated image
    benchmark files  JSON written by benchmarks/train_step.py (`--throughput FILE or DIR`): training
                     and evaluation img/s of medpeft's own loop

A run costs (images trained) / (training img/s) + (images evaluated) x (seconds per evaluated image):
images trained = epochs x training images (a fraction of the official training split, or shots x classes),
or steps x batch size; images evaluated = validation split x evaluations (one per epoch unless the run
sets eval_every_steps / evals_per_run) + the test split. A tuning study costs `trials` trial runs (an
upper bound: pruned trials stop early). Runs with no measurement on the device, or whose dataset's
split sizes are not known before it is prepared, are listed with the reason instead of being guessed.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.sweep.manifest import Manifest

Setting = tuple[str, str, int]  # (backbone, method, image size)


@dataclass(frozen=True)
class Measure:
    device: str
    train_img_s: float
    eval_s_per_image: float  # evaluation (and, from runs, loading and start-up) seconds per evaluated image
    source: str


@dataclass(frozen=True)
class Sizes:
    train: int
    val: int
    test: int
    classes: int


@dataclass
class Cost:
    what: str  # "run" | "tune"
    setting: Setting
    count: int  # runs (or trial runs) this cost stands for
    seconds: float | None  # None: not estimated (see `why`)
    train_s: float = 0.0
    why: str = ""


@dataclass
class Estimate:
    device: str | None
    devices: list[str]  # every device something was measured on
    sources: list[str]
    costs: list[Cost] = field(default_factory=list)

    def total_s(self, what: str | None = None) -> float:
        return sum(c.seconds for c in self.costs if c.seconds is not None and what in (None, c.what))

    def missing(self) -> dict[str, list[int]]:
        """Reason -> [runs, trial runs] not estimated for it."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for cost in self.costs:
            if cost.seconds is None:
                out[cost.why][cost.what == "tune"] += cost.count
        return dict(out)


def _dataset_sizes(dataset: str, data_dir: Path | None, resolution: int | None) -> Sizes | str:
    """The split sizes of a dataset, or why they are not known before it is loaded."""
    from medpeft_cli.data.load import default_data_dir
    from medpeft_cli.data.prepared import INFO_FILE, available_resolutions, prepared_dir
    from medpeft_cli.data.registry import (
        MedMNISTEntry,
        SyntheticEntry,
        get_dataset_entry,
    )

    try:
        entry = get_dataset_entry(dataset)
    except UserError:
        entry = None
    if isinstance(entry, (SyntheticEntry, MedMNISTEntry)):
        s = entry.split_sizes
        return Sizes(s.train, s.val, s.test, len(entry.classes or []))
    root = Path(data_dir) if data_dir else default_data_dir()
    have = available_resolutions(root, dataset)
    res = resolution or getattr(entry, "resolution", None) or (have[0] if have else None)
    if res is None or res not in have:
        return f"{dataset} is not prepared under {root}: its split sizes are known once it is"
    info = json.loads((prepared_dir(root, dataset, res) / INFO_FILE).read_text(encoding="utf-8"))
    counts = {split: sum(per_class) for split, per_class in info["counts"].items()}
    return Sizes(counts["train"], counts["val"], counts["test"], len(info["class_names"]))


def _work(spec: RunSpec, sizes: Sizes) -> tuple[int, int]:
    """(images trained, images evaluated) of one run."""
    t = spec.train
    train_images = spec.shots * sizes.classes if spec.shots else max(1, round(spec.data_fraction * sizes.train))
    steps_per_epoch = math.ceil(train_images / t.batch_size)
    steps = t.steps or t.epochs * steps_per_epoch
    trained = steps * t.batch_size if t.steps else t.epochs * train_images
    if t.evals_per_run:
        evals = t.evals_per_run
    elif t.eval_every_steps:
        evals = math.ceil(steps / t.eval_every_steps)
    else:
        evals = math.ceil(steps / steps_per_epoch)
    return trained, evals * sizes.val + sizes.test


def _from_rows(db: Path) -> dict[Setting, list[Measure]]:
    """Measurements from finished runs of a results database (none when it does not exist)."""
    from medpeft_cli.store import query

    if not Path(db).is_file():
        return {}
    found: dict[Setting, list[Measure]] = defaultdict(list)
    sizes_cache: dict[str, Sizes | str] = {}
    for row in query(db, "status = 'ok' AND train_images_per_s > 0"):
        if row.get("dataset") not in sizes_cache:
            sizes_cache[row["dataset"]] = _dataset_sizes(row["dataset"], None, None)
        sizes = sizes_cache[row["dataset"]]
        trained = (row.get("epochs") or 0) * (row.get("train_images") or 0)
        train_s = trained / row["train_images_per_s"]
        evaluated = (row.get("epochs") or 1) * sizes.val + sizes.test if isinstance(sizes, Sizes) else 0
        rest = max((row.get("wall_time_s") or 0.0) - train_s, 0.0)
        per_image = rest / evaluated if evaluated else 0.0
        setting = (row["backbone"], row["method"], int(row["image_size"]))
        found[setting].append(Measure(row.get("device") or "unknown device", row["train_images_per_s"], per_image, f"runs in {db}"))
    return found


def _from_benchmarks(path: Path) -> dict[Setting, list[Measure]]:
    """Measurements from benchmarks/train_step.py JSON files (a file, or every *.json in a folder)."""
    files = sorted(Path(path).glob("*.json")) if Path(path).is_dir() else [Path(path)]
    if not files or not files[0].is_file():
        raise UserError(f"--throughput {path}: no benchmark JSON there; write one with benchmarks/train_step.py")
    found: dict[Setting, list[Measure]] = defaultdict(list)
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"--throughput {file}: not readable JSON ({exc}); pass files written by benchmarks/train_step.py") from None
        if not isinstance(data, dict) or "rows" not in data or "backbone" not in data:
            continue  # another benchmark's output
        for row in data["rows"]:
            if row.get("medpeft_img_s"):
                eval_rate = row.get("medpeft_eval_img_s") or 0.0
                measure = Measure(data.get("device", "unknown device"), row["medpeft_img_s"], 1.0 / eval_rate if eval_rate else 0.0, str(file))
                found[(data["backbone"], row["method"], int(data["img_size"]))].append(measure)
    return found


def _pick_device(measures: dict[Setting, list[Measure]], settings: set[Setting], wanted: str | None) -> tuple[str | None, list[str]]:
    devices = sorted({m.device for ms in measures.values() for m in ms})
    if wanted:
        chosen = [d for d in devices if wanted.lower() in d.lower()]
        if not chosen:
            raise UserError(f"no measurement on a device matching {wanted!r}; measured: {', '.join(devices) or 'none'}")
        return chosen[0], devices
    # The device with measurements for the most settings of this grid.
    cover = {d: sum(any(m.device == d for m in measures.get(s, [])) for s in settings) for d in devices}
    return (max(devices, key=lambda d: (cover[d], d)) if devices else None), devices


def estimate(manifest: Manifest, throughput: list[Path], device: str | None = None) -> Estimate:
    """The device-hours of every run of `manifest` and of its tuning studies."""
    measures: dict[Setting, list[Measure]] = defaultdict(list)
    for found in [_from_rows(manifest.db), *(_from_benchmarks(p) for p in throughput)]:
        for setting, ms in found.items():
            measures[setting] += ms
    jobs: list[tuple[str, RunSpec, int]] = [("run", RunSpec.model_validate(e.spec), 1) for e in manifest.entries]
    jobs += [("tune", RunSpec.model_validate(g.spec), g.trials) for g in manifest.tune_groups]
    settings = {(s.backbone, s.method.name, s.image_size) for _, s, _ in jobs}
    chosen, devices = _pick_device(measures, settings, device)
    result = Estimate(chosen, devices, sorted({m.source for ms in measures.values() for m in ms if m.device == chosen}))
    sizes_cache: dict[tuple, Sizes | str] = {}
    for what, spec, count in jobs:
        setting = (spec.backbone, spec.method.name, spec.image_size)
        here = [m for m in measures.get(setting, []) if m.device == chosen]
        size_key = (spec.dataset, spec.output.data_dir, spec.data_resolution)
        if size_key not in sizes_cache:
            sizes_cache[size_key] = _dataset_sizes(*size_key)
        sizes = sizes_cache[size_key]
        if not here:
            why = f"no measured throughput for {setting[0]} / {setting[1]} at {setting[2]} px on {chosen or 'any device'}"
            result.costs.append(Cost(what, setting, count, None, why=why))
        elif isinstance(sizes, str):
            result.costs.append(Cost(what, setting, count, None, why=sizes))
        else:
            trained, evaluated = _work(spec, sizes)
            train_s = trained / statistics.median(m.train_img_s for m in here)
            seconds = train_s + evaluated * statistics.median(m.eval_s_per_image for m in here)
            result.costs.append(Cost(what, setting, count, seconds * count, train_s * count))
    return result


def duration(seconds: float) -> str:
    """Seconds in the unit that reads best: '40 s', '12.5 min', '1,234.5 h'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"


def summary(result: Estimate, max_parallel: int | None = None) -> list[str]:
    """The estimate in a few lines: runs, lr search, total, and what could not be estimated."""
    runs = [c for c in result.costs if c.what == "run"]
    tune = [c for c in result.costs if c.what == "tune"]
    done_runs = [c for c in runs if c.seconds is not None]
    lines = [f"estimate on {result.device or 'no measured device'} (measurements: {', '.join(result.sources) or 'none'})"]
    others = [d for d in result.devices if d != result.device]
    if others:
        lines.append(f"  also measured on: {', '.join(others)} (choose with --device)")
    training = sum(c.train_s for c in done_runs)
    lines.append(
        f"  runs: {len(done_runs)} of {len(runs)} estimated: {duration(result.total_s('run'))} of device time "
        f"(training {duration(training)}, evaluation and start-up {duration(result.total_s('run') - training)})"
    )
    if tune:
        trials = sum(c.count for c in tune)
        done_trials = sum(c.count for c in tune if c.seconds is not None)
        lines.append(
            f"  lr search: {len(tune)} studies, {done_trials} of {trials} trial runs estimated: {duration(result.total_s('tune'))} "
            "of device time (an upper bound: pruned trials stop early)"
        )
    total = result.total_s()
    wall = f"; with {max_parallel} tasks at once about {duration(total / max_parallel)} of wall-clock time" if max_parallel else ""
    lines.append(f"  total: {duration(total)} of device time{wall}")
    for why, (n_runs, n_trials) in sorted(result.missing().items(), key=lambda kv: (-sum(kv[1]), kv[0])):
        trials = f" and {n_trials} trial runs" if n_trials else ""
        lines.append(f"  not estimated: {n_runs} runs{trials}: {why}")
    return lines
