"""Grid files: a run config (the base of every run) plus `grid:`, `exclude:` and `tune:`.

    name: vit-peft                     # optional: names the manifest and the Slurm jobs
    dataset: synthetic-lesions         # any run.yaml key: shared by every run of the grid
    train: {epochs: 5}                 # or {steps: 600}: the same optimizer steps at every data_fraction
    grid:                              # spec key (dotted, or a train option name) -> values
      backbone: [test_vit, test_resnet]
      method: [full, linear, {name: lora, rank: 8}]
      data_fraction: [0.1, 1.0]
      seed: {range: [0, 3]}            # 0, 1, 2 (Python's range); also {linspace|logspace: [a, b, n]}
      lr: tuned                        # the lr tuned by `medpeft tune` (only allowed in grid files)
    exclude:                           # drop every point that matches all keys of an entry
      - {method: lora, backbone: test_resnet}
    tune: {trials: 20, lr_min: 1.0e-5, lr_max: 1.0e-1}

Expansion is the cartesian product of the axes; each point is validated as a `RunSpec` and
normalised exactly as `medpeft train` normalises it, so a grid point and the same run started by
hand have the same run key.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medpeft_cli.config import RunSpec, TrainOptions, format_validation_error, load_yaml, run_key, set_path
from medpeft_cli.errors import UserError
from medpeft_cli.numbers import NoBoolNumbers

TUNED = "tuned"
GENERATORS = ("range", "linspace", "logspace")
_TRAIN_FIELDS = tuple(TrainOptions.model_fields)
_TOP_FIELDS = tuple(f for f in RunSpec.model_fields if f != "output")


class TuneSettings(NoBoolNumbers):
    """How learning rates are tuned (the study's protocol: Optuna on the validation split)."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(20, ge=1, le=10_000, description="finished trials per study")
    lr_min: float = Field(1e-5, gt=0)
    lr_max: float = Field(1e-1, gt=0)
    epochs: int | None = Field(None, ge=1, description="epochs per trial (default: the runs' epochs)")
    data_fraction: float | Literal["per-run"] = Field(
        1.0, description="training fraction the lr is tuned on; 'per-run' tunes one lr per data fraction"
    )
    seed: int = Field(0, ge=0, description="seed of the trials' runs and of the TPE sampler")
    pruner: Literal["median", "none"] = "median"
    storage: str = Field(
        "results/optuna-journal.log",
        description="a file path (Optuna journal storage, safe on shared filesystems) or an RDB URL (sqlite:///..., postgresql://...)",
    )

    @model_validator(mode="after")
    def _check(self) -> TuneSettings:
        if self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min:g}) must be smaller than lr_max ({self.lr_max:g})")
        if isinstance(self.data_fraction, float) and not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1] or 'per-run', got {self.data_fraction}")
        return self


@dataclass(frozen=True)
class GridPoint:
    spec: RunSpec  # normalised; for a tuned point train.lr is None until the study has an answer
    tuned: bool
    values: dict[str, Any]  # this point's value of every grid axis (for messages)
    lr_source: str = "given"  # given | method-default | tuned: recorded on the run's row

    def describe(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.values.items()) or "the base run"


@dataclass
class Grid:
    name: str
    path: Path
    points: list[GridPoint]
    tune: TuneSettings
    excluded: int = 0
    duplicates: int = 0
    axes: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def any_tuned(self) -> bool:
        return any(p.tuned for p in self.points)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def canonical_key(key: Any, where: str) -> str:
    """`lr` -> `train.lr`; checks that the key names a run spec field (output locations excluded)."""
    if not isinstance(key, str) or not key.strip():
        raise UserError(f"{where}: {key!r} is not a spec key; use names like backbone, method.rank or lr")
    key = key.strip()
    if key in _TRAIN_FIELDS:
        key = f"train.{key}"
    parts = key.split(".")
    head = parts[0]
    if head == "output":
        raise UserError(f"{where}: {key} cannot vary within a grid; set `output:` once at the top of the grid file")
    if head not in _TOP_FIELDS:
        known = ", ".join((*_TOP_FIELDS, *_TRAIN_FIELDS))
        raise UserError(f"{where}: unknown key {key!r}; grid keys are spec fields ({known}) or dotted paths like method.rank")
    if head == "train" and (len(parts) != 2 or parts[1] not in _TRAIN_FIELDS):
        raise UserError(f"{where}: unknown key {key!r}; train options are {', '.join(_TRAIN_FIELDS)}")
    if len(parts) > 1 and head not in ("train", "method"):
        raise UserError(f"{where}: {head} has no sub-keys, so {key!r} is not a spec key")
    return key


def _clean_float(x: float) -> float:
    # 12 significant digits: 0.1 * 3 gives 0.3, not 0.30000000000000004, so run keys stay readable and stable.
    return float(f"{x:.12g}")


def _generate(kind: str, args: Any, where: str) -> list[Any]:
    if not isinstance(args, list) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise UserError(f"{where}: {kind} takes a list of numbers, e.g. {{{kind}: [0, 3]}}")
    if kind == "range":
        if len(args) not in (2, 3) or not all(isinstance(a, int) for a in args) or (len(args) == 3 and args[2] == 0):
            raise UserError(f"{where}: range takes [start, stop] or [start, stop, step] integers (stop excluded, step not 0)")
        values: list[Any] = list(range(*args))
    else:
        if len(args) != 3 or not isinstance(args[2], int) or args[2] < 1:
            raise UserError(f"{where}: {kind} takes [first, last, count] with an integer count >= 1")
        first, last, count = float(args[0]), float(args[1]), args[2]
        if kind == "logspace" and (first <= 0 or last <= 0):
            raise UserError(f"{where}: logspace needs positive first and last values (they are values, not exponents)")
        if count == 1:
            values = [first]
        elif kind == "linspace":
            values = [first + (last - first) * i / (count - 1) for i in range(count)]
        else:
            ratio = math.log(last / first)
            values = [first * math.exp(ratio * i / (count - 1)) for i in range(count)]
        values = [_clean_float(v) for v in values]
    if not values:
        raise UserError(f"{where}: {kind} {args} gives no values")
    return values


def axis_values(raw: Any, where: str) -> list[Any]:
    """A grid axis: a list of values, a {range|linspace|logspace: [...]} generator, or one value."""
    if isinstance(raw, list):
        if not raw:
            raise UserError(f"{where}: empty list; give at least one value or remove the key")
        return raw
    if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in GENERATORS:
        kind, args = next(iter(raw.items()))
        return _generate(kind, args, where)
    return [raw]


def _set_method(data: dict[str, Any], value: Any) -> None:
    """Set the method of a point; options of the base's method are kept when the name is the same."""
    current = data.get("method")
    current = {"name": current} if isinstance(current, str) else (current or {})
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise UserError(f"method values must be a name or a mapping with a name (e.g. {{name: lora, rank: 4}}), got {value!r}")
    base = current if current.get("name") == value["name"] else {}
    data["method"] = {**copy.deepcopy(base), **copy.deepcopy(value)}


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _value_matches(actual: Any, wanted: Any, key: str) -> bool:
    if key == "method" and isinstance(actual, dict):
        if isinstance(wanted, str):
            return actual.get("name") == wanted
        if isinstance(wanted, dict):
            return all(actual.get(k) == v for k, v in wanted.items())
        return False
    if isinstance(actual, (int, float)) and isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return math.isclose(actual, wanted, rel_tol=1e-9, abs_tol=0.0)
    return actual == wanted


class _Exclusion:
    def __init__(self, raw: Any, number: int, path: Path):
        where = f"{path}: exclude entry #{number}"
        if not isinstance(raw, dict) or not raw:
            raise UserError(f"{where} must be a mapping of spec keys to values, e.g. {{method: lora, backbone: resnet50}}")
        self.raw = raw
        self.number = number
        self.rules = {canonical_key(k, where): axis_values(v, f"{where}: {k}") for k, v in raw.items()}
        self.matched = 0

    def matches(self, tree: dict[str, Any]) -> bool:
        hit = all(any(_value_matches(_lookup(tree, k), w, k) for w in wanted) for k, wanted in self.rules.items())
        self.matched += hit
        return hit


def _point_tree(spec: RunSpec, tuned: bool) -> dict[str, Any]:
    tree = spec.model_dump(mode="json")
    if tuned:
        tree["train"]["lr"] = TUNED
    return tree


def _normalise(data: dict[str, Any], tuned: bool, values: dict[str, Any], path: Path) -> GridPoint:
    from medpeft_cli.run import resolve

    label = ", ".join(f"{k}={_short(v)}" for k, v in values.items()) or "the base run"
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, prefix=f"{path}: invalid run at {label}")) from None
    try:
        normalised, _, _ = resolve(spec)
    except UserError as exc:
        raise UserError(f"{path}: {label}: {exc}") from None
    if tuned:
        normalised = normalised.model_copy(update={"train": normalised.train.model_copy(update={"lr": None})})
    source = "tuned" if tuned else ("given" if spec.train.lr is not None else "method-default")
    return GridPoint(normalised, tuned, values, source)


def load_grid(path: Path) -> Grid:
    """Parse, expand, normalise and filter a grid file; every problem is one UserError line."""
    path = Path(path)
    data = load_yaml(path)
    name = data.pop("name", None) or path.stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"{path}: name {name!r} must be letters, digits, '.', '_' or '-' (it names files and Slurm jobs)")
    axes_raw = data.pop("grid", None) or {}
    if not isinstance(axes_raw, dict):
        raise UserError(f"{path}: `grid:` must map spec keys to lists of values, e.g. grid: {{method: [lora, full]}}")
    exclude_raw = data.pop("exclude", None) or []
    if not isinstance(exclude_raw, list):
        raise UserError(f"{path}: `exclude:` must be a list of mappings, e.g. exclude: [{{method: lora, backbone: resnet50}}]")
    try:
        tune = TuneSettings.model_validate(data.pop("tune", None) or {})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, prefix=f"{path}: invalid tune settings")) from None

    base = data  # what is left is a run config, shared by every point
    base_tuned = isinstance(base.get("train"), dict) and base["train"].get("lr") == TUNED
    if base_tuned:
        base["train"] = {k: v for k, v in base["train"].items() if k != "lr"}

    axes: dict[str, list[Any]] = {}
    for key, raw in axes_raw.items():
        canon = canonical_key(key, f"{path}: grid")
        if canon in axes:
            raise UserError(f"{path}: grid gives {canon} twice (as {key!r} and another spelling); keep one")
        axes[canon] = axis_values(raw, f"{path}: grid.{key}")
    # The method itself is set before its dotted options (method.rank, ...), whatever the file order.
    order = sorted(axes, key=lambda k: k != "method")
    exclusions = [_Exclusion(raw, i + 1, path) for i, raw in enumerate(exclude_raw)]

    points: list[GridPoint] = []
    seen: set[tuple[str, bool]] = set()
    excluded = duplicates = 0
    for combo in itertools.product(*(axes[k] for k in order)):
        point_data = copy.deepcopy(base)
        tuned = base_tuned
        values = dict(zip(order, combo))
        for key, value in values.items():
            if key == "train.lr":
                tuned = value == TUNED
                value = None if tuned else value
            if key == "method":
                try:
                    _set_method(point_data, value)
                except UserError as exc:
                    raise UserError(f"{path}: grid.method: {exc}") from None
            else:
                set_path(point_data, key.split("."), copy.deepcopy(value))
        point = _normalise(point_data, tuned, values, path)
        tree = _point_tree(point.spec, point.tuned)
        if any([e.matches(tree) for e in exclusions]):  # a list, so every exclusion counts its matches
            excluded += 1
            continue
        identity = (run_key(point.spec), point.tuned)
        if identity in seen:
            duplicates += 1  # e.g. lr: [null, 1e-3] where 1e-3 is the method's default
            continue
        seen.add(identity)
        points.append(point)

    unused = [e for e in exclusions if e.matched == 0]
    if unused:
        e = unused[0]
        raise UserError(f"{path}: exclude entry #{e.number} {e.raw} matches no point of the grid; fix its keys/values or remove it")
    if not points:
        raise UserError(f"{path}: the exclusions remove every point of the grid; nothing to run")
    return Grid(name=name, path=path, points=points, tune=tune, excluded=excluded, duplicates=duplicates, axes=axes)


def check_backbone_support(points: list[GridPoint]) -> None:
    """Every (method, backbone) pair must be supported: checked on meta-device models (no weights, no memory).

    Fails with one line naming the unsupported pairs and the exclusion that removes them.
    """
    from medpeft_cli.methods import get_method
    from medpeft_cli.models.backbones import shape_backbone
    from medpeft_cli.models.sources import parse_backbone

    families: dict[tuple[str, int, str | None], str] = {}
    bad: dict[tuple[str, str, str], int] = {}  # (method, backbone, family) -> number of runs
    for point in points:
        spec = point.spec
        if spec.task != "classification":
            continue  # a text-to-image method applies to the U-Net of any pipeline; the run checks the pipeline
        if parse_backbone(spec.backbone).needs_hub:
            continue  # hf-hub: / transformers hub ids need the hub to build; checked when the run starts
        size_key = (spec.backbone, spec.image_size, spec.head)
        if size_key not in families:
            families[size_key] = shape_backbone(spec.backbone, spec.image_size, head=spec.head).family
        family = families[size_key]
        if family not in get_method(spec.method.name).families:
            pair = (spec.method.name, spec.backbone, family)
            bad[pair] = bad.get(pair, 0) + 1
    if bad:
        pairs = "; ".join(f"{m} on {b} (family {f}, {n} runs)" for (m, b, f), n in bad.items())
        m, b, _ = next(iter(bad))
        raise UserError(
            f"the grid pairs methods with backbones they do not support: {pairs}; "
            f"add exclusions such as `exclude: [{{method: {m}, backbone: {b}}}]` (`medpeft methods` shows what applies to each family)"
        )


def check_datasets(points: list[GridPoint]) -> None:
    """Every dataset must be one `medpeft train` would load under that name (data/load.py): a registered
    one, or one the user prepared under the data directory. A classification run needs a multiclass set.

    Nothing is loaded or downloaded: `medpeft prefetch` does that; this only refuses names no run could use.
    """
    from medpeft_cli.data.load import default_data_dir
    from medpeft_cli.data.prepared import available_resolutions
    from medpeft_cli.data.registry import get_dataset_entry

    seen: set[tuple[str, str, str]] = set()
    for point in points:
        spec = point.spec
        key = (spec.dataset, str(spec.output.data_dir), spec.task)
        if key in seen:
            continue
        seen.add(key)
        try:
            entry = get_dataset_entry(spec.dataset)
        except UserError as unknown:
            data_dir = Path(spec.output.data_dir) if spec.output.data_dir else default_data_dir()
            if available_resolutions(data_dir, spec.dataset):
                continue  # the user's own prepared dataset
            raise UserError(
                f"{point.describe()}: {unknown} or prepare your own under {data_dir} with "
                f"`medpeft datasets prepare {spec.dataset} --raw DIR --from imagefolder|manifest`"
            ) from None
        if spec.task == "classification" and entry.task != "multiclass":
            raise UserError(f"{point.describe()}: {spec.dataset} is a {entry.task} dataset; `medpeft train` fine-tunes single-label classifiers (multiclass datasets)")
