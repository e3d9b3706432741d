"""The plan of a sweep: one entry per run (normalised spec + run key), saved as JSON.

A manifest is what array tasks read: `medpeft sweep run-one MANIFEST --index I` runs entry I. Output
locations are made absolute when the plan is made, so a task finds the same files from any working
directory. A run whose grid says `lr: tuned` has no key until its tuning study has an answer; it is
resolved when it runs (`Resolver`), and its row records the tuned lr and the number of trials.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from medpeft_cli.config import PROTOCOL_VERSION, RunSpec, run_key
from medpeft_cli.errors import UserError
from medpeft_cli.sweep.tune import TuneGroup, best_lr, study_progress, tune_group_for

FORMAT = "medpeft-sweep-manifest-v1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Entry(_Model):
    index: int
    run_key: str | None  # None until the tuned lr is known
    spec: dict[str, Any]  # normalised RunSpec (train.lr None when tuned)
    study: str | None = None  # the study whose best lr this run uses
    lr_source: str = "given"  # given | method-default | tuned


class Manifest(_Model):
    format: Literal["medpeft-sweep-manifest-v1"] = FORMAT
    name: str
    grid_file: str
    grid_sha256: str
    created_at: str
    medpeft_version: str
    protocol_version: int
    excluded: int = 0  # grid points removed by `exclude:`
    duplicates: int = 0  # grid points that normalise to a run already in the plan
    tune_storage: str | None = None
    entries: list[Entry]
    tune_groups: list[TuneGroup] = []

    def group(self, study: str) -> TuneGroup:
        for group in self.tune_groups:
            if group.study == study:
                return group
        raise UserError(f"manifest {self.name} names study {study!r} but does not define it; make the plan again with `medpeft sweep plan`")

    @property
    def db(self) -> Path:
        return Path(self.entries[0].spec["output"]["db"])


def _absolute_outputs(spec: RunSpec) -> RunSpec:
    out = spec.output
    update: dict[str, Any] = {"runs_dir": Path(out.runs_dir).expanduser().resolve(), "db": Path(out.db).expanduser().resolve()}
    if out.data_dir is not None:
        update["data_dir"] = Path(out.data_dir).expanduser().resolve()
    return spec.model_copy(update={"output": out.model_copy(update=update)})


def absolute_storage(storage: str) -> str:
    """A journal file path is made absolute; an RDB URL is kept as written."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def plan(grid_path: Path, check_support: bool = True) -> Manifest:
    """Expand a grid file into a manifest (nothing is written)."""
    import medpeft_cli
    from medpeft_cli.sweep.grid import check_backbone_support, check_datasets, load_grid

    grid = load_grid(grid_path)
    if check_support:  # what `medpeft train` would refuse, refused before anything is written
        check_datasets(grid.points)
        check_backbone_support(grid.points)
    entries: list[Entry] = []
    groups: dict[str, TuneGroup] = {}
    for index, point in enumerate(grid.points):
        spec = _absolute_outputs(point.spec)
        study = None
        if point.tuned:
            group = tune_group_for(spec, grid.tune)
            groups.setdefault(group.study, group)
            study = group.study
        key = None if point.tuned else run_key(spec)
        entries.append(Entry(index=index, run_key=key, spec=spec.model_dump(mode="json"), study=study, lr_source=point.lr_source))
    return Manifest(
        name=grid.name,
        grid_file=str(Path(grid_path).resolve()),
        grid_sha256=hashlib.sha256(Path(grid_path).read_bytes()).hexdigest(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        medpeft_version=medpeft_cli.__version__,
        protocol_version=PROTOCOL_VERSION,
        excluded=grid.excluded,
        duplicates=grid.duplicates,
        tune_storage=absolute_storage(grid.tune.storage) if groups else None,
        entries=entries,
        tune_groups=list(groups.values()),
    )


def write_manifest(manifest: Manifest, path: Path) -> Path:
    """Write atomically (temp file + rename): array tasks may be reading the old one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"cannot write the manifest {path}: {exc.strerror or exc}; pass a writable --manifest path") from None
    return path


def read_manifest(path: Path) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read manifest {path}: {exc.strerror or exc}; make one with `medpeft sweep plan GRID`") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not a manifest (invalid JSON: {exc.msg}); make one with `medpeft sweep plan GRID`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a medpeft sweep manifest ({FORMAT}); make one with `medpeft sweep plan GRID`")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path} is a damaged manifest ({exc.error_count()} problems, first: {exc.errors()[0]['msg']}); make it again") from None
    if manifest.protocol_version != PROTOCOL_VERSION:
        raise UserError(
            f"{path} was planned for protocol version {manifest.protocol_version} but this medpeft runs version "
            f"{PROTOCOL_VERSION}; plan the grid again so the run keys match what would run"
        )
    return manifest


def is_manifest_file(path: Path) -> bool:
    if Path(path).suffix != ".json":
        return False
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_plan(path: Path) -> Manifest:
    """A manifest file as it is, or a grid file planned now."""
    return read_manifest(path) if is_manifest_file(path) else plan(path)


def default_manifest_path(manifest: Manifest) -> Path:
    return Path("sweeps") / f"{manifest.name}.manifest.json"


@dataclass
class ReadyRun:
    index: int
    spec: RunSpec
    run_key: str
    lr_origin: dict[str, Any]  # where the lr came from, for the row (lr_source, tuned_lr_trials, tune_study)

    @property
    def done(self) -> bool:
        from medpeft_cli.store import RESULT_FILE

        return (Path(self.spec.output.runs_dir) / self.run_key / RESULT_FILE).is_file()


class Resolver:
    """Turns entries into runnable specs; tuned lrs come from the study storage (read once per study)."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self._tuned: dict[str, Any] = {}

    def tuned(self, study: str):
        """The study's answer (`TunedLR`), or None while it is not finished."""
        if study not in self._tuned:
            self._tuned[study] = best_lr(self.manifest.tune_storage or "", self.manifest.group(study))
        return self._tuned[study]

    def ready(self, entry: Entry) -> ReadyRun | None:
        """The run of `entry`, or None when it waits for its tuning study."""
        spec = RunSpec.model_validate(entry.spec)
        if entry.study is None:
            return ReadyRun(entry.index, spec, entry.run_key or run_key(spec), {"lr_source": entry.lr_source})
        answer = self.tuned(entry.study)
        if answer is None:
            return None
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"lr": answer.lr})})
        origin = {"lr_source": "tuned", "tuned_lr_trials": answer.trials, "tune_study": entry.study}
        return ReadyRun(entry.index, spec, run_key(spec), origin)

    def require(self, entry: Entry) -> ReadyRun:
        ready = self.ready(entry)
        if ready is None:
            group = self.manifest.group(entry.study or "")
            finished = study_progress(self.manifest.tune_storage or "", group)
            raise UserError(
                f"run {entry.index} uses the tuned lr of study {group.study}, which has {finished} of {group.trials} trials "
                f"finished; run `medpeft tune` on this manifest or grid first"
            )
        return ready


@dataclass
class Status:
    done: list[int]
    todo: list[int]
    waiting: list[int]  # runs whose tuned lr is not known yet
    studies_waiting: list[str]


def status(manifest: Manifest) -> Status:
    resolver = Resolver(manifest)
    done, todo, waiting, studies = [], [], [], []
    for entry in manifest.entries:
        ready = resolver.ready(entry)
        if ready is None:
            waiting.append(entry.index)
            if entry.study not in studies:
                studies.append(entry.study)
        elif ready.done:
            done.append(entry.index)
        else:
            todo.append(entry.index)
    return Status(done, todo, waiting, studies)
