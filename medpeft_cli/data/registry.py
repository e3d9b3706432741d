"""The dataset registry: datasets.yaml, validated with pydantic.

Each source kind has its own entry model; adding a kind means adding a model to `AnyEntry`
and a loader in load.py.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medpeft_cli.errors import UserError

_NAME = r"^[a-z0-9][a-z0-9_-]*$"
MAX_NAME = 64  # a dataset name is a folder name (prepared/<name>/): well under any file system's limit
NAME_RULE = f"lower-case letters, digits, '-' or '_', starting with a letter or digit, at most {MAX_NAME} characters"


def valid_dataset_name(name: str) -> bool:
    return len(name) <= MAX_NAME and re.match(_NAME, name) is not None


def suggested_name(name: str) -> str:
    """A valid dataset name close to `name` (lower-cased, other characters as '-', shortened)."""
    text = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).lstrip("-_")[:MAX_NAME].rstrip("-_")
    return text or "my-data"


def shown_name(name: str) -> str:
    """`name` for a one-line message: a very long one is shortened, with its length."""
    return repr(name) if len(name) <= 80 else f"{name[:40]!r}... ({len(name)} characters)"


def check_dataset_name(name: str) -> None:
    """One line when `name` cannot name a dataset of your own (the name of its folder under prepared/)."""
    if not valid_dataset_name(name):
        raise UserError(f"dataset name {shown_name(name)} must be {NAME_RULE}; e.g. {suggested_name(name)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetEntry(_Strict):
    """Fields every dataset has, whatever its source kind."""

    name: str = Field(pattern=_NAME)
    kind: str
    modality: str
    # binary datasets are multiclass with 2 classes; multilabel and text-to-image entries can be
    # downloaded, prepared and verified, but the classification trainer takes multiclass only.
    task: Literal["multiclass", "multilabel", "text-to-image"] = "multiclass"
    classes: list[str] | None = Field(default=None, min_length=2)  # label i is classes[i]
    license: str
    citation: str
    source_citation: str | None = None  # the original data a derived dataset was built from
    url: str | None = None  # homepage or official source (None for generated data)
    description: str

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str] | None) -> list[str] | None:
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {classes}")
        return classes

    @model_validator(mode="after")
    def _classes_named(self) -> DatasetEntry:
        # Classes may only be left out where they are read from the data (classes_from_data) or
        # where the task has none (text-to-image).
        if self.classes is None and self.task != "text-to-image" and not getattr(self, "classes_from_data", False):
            raise ValueError("classes: list the class names (label i is classes[i])")
        return self


class SplitSizes(_Strict):
    train: int = Field(ge=1)
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class SyntheticEntry(DatasetEntry):
    """A dataset generated from a seed by one of medpeft's generators (no download)."""

    kind: Literal["synthetic"]
    generator: Literal["lesions-v1", "captioned-lesions-v1"]  # captioned-lesions-v1: medpeft_cli/t2i/captions.py
    seed: int = Field(ge=0)
    image_size: int = Field(default=64, ge=32, le=512)
    split_sizes: SplitSizes

    @property
    def access(self) -> str:
        return "generated"


class MedMNISTFile(_Strict):
    """One official MedMNIST .npz file (one resolution); the MD5 is the one the `medmnist` package lists."""

    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.npz$")
    download_url: str
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    # The file ships inside the package (resources/data/<name>/<file>): found offline, MD5 checked as usual.
    packaged: bool = False


@dataclass(frozen=True)
class MedMNISTSource:
    """A MedMNIST entry at one resolution: what the loader needs to find, check and read the file."""

    name: str
    task: str
    classes: list[str]
    resolution: int
    file: str
    download_url: str
    md5: str
    split_sizes: SplitSizes
    packaged: Path | None = None  # the copy shipped inside the package, if there is one


class MedMNISTEntry(DatasetEntry):
    """A MedMNIST(+) dataset: one official .npz per resolution, used with its official splits."""

    kind: Literal["medmnist"]
    resolution: int = Field(ge=1)  # the default resolution (the MedMNIST v2 28 px file)
    files: dict[int, MedMNISTFile] = Field(min_length=1)  # resolution in pixels -> official file
    split_sizes: SplitSizes  # official split sizes (checked by `medpeft datasets verify`)

    @model_validator(mode="after")
    def _default_resolution_listed(self) -> MedMNISTEntry:
        if self.resolution not in self.files:
            raise ValueError(f"resolution {self.resolution} has no entry in files (have {sorted(self.files)})")
        return self

    @property
    def access(self) -> str:
        return "direct-download"

    def at(self, resolution: int | None = None) -> MedMNISTSource:
        """This dataset at `resolution` pixels (None: the default); UserError if there is no such file."""
        res = self.resolution if resolution is None else resolution
        if res not in self.files:
            have = ", ".join(str(r) for r in sorted(self.files))
            raise UserError(f"{self.name} has no {res} px release; MedMNIST publishes it at {have} px (choose one of those)")
        f = self.files[res]
        shipped = Path(str(importlib.resources.files("medpeft_cli") / "resources" / "data" / self.name / f.file)) if f.packaged else None
        return MedMNISTSource(
            self.name, self.task, list(self.classes or []), res, f.file, f.download_url, f.md5, self.split_sizes, shipped
        )


class SplitPolicy(_Strict):
    """How medpeft splits a dataset that has no official split: seeded, stratified by label, grouped."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitPolicy:
        if abs(self.train + self.val + self.test - 1.0) > 1e-9:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


Layout = Literal["busi", "fitzpatrick17k", "ham10000", "smdg", "rsna-pneumonia", "mimic-cxr"]


class PreparedEntry(DatasetEntry):
    """A dataset the user downloads from its official source; `medpeft datasets prepare` converts the
    raw layout once into uint8 arrays + a Parquet manifest + a split file under <data_dir>/prepared/."""

    kind: Literal["prepared"]
    layout: Layout  # which reader in data/layouts.py understands the official raw files
    label_column: str | None = None  # for layouts with several label columns (fitzpatrick17k)
    classes_from_data: bool = False  # classes = sorted unique labels found at prepare (too many to list)
    expected_classes: int | None = Field(default=None, ge=2)  # with classes_from_data: how many there must be
    access: Literal["manual-download", "registration", "credentialed"]  # medpeft never downloads these
    how_to_obtain: str  # where and how to get the raw files (shown by info/download)
    raw_layout: str  # the files `prepare --raw` expects
    resolution: int = Field(224, ge=8, le=4096)  # default resolution to prepare and load
    group_by: str | None = None  # the id that keeps a patient/lesion in one split (None: each image)
    subgroups: list[str] = Field(default_factory=list)  # metadata columns reported as subgroups
    split: SplitPolicy = Field(default_factory=SplitPolicy)
    official_split: bool = False  # use the split file shipped with the raw data (mimic-cxr)


AnyEntry = Annotated[SyntheticEntry | MedMNISTEntry | PreparedEntry, Field(discriminator="kind")]


class Registry(_Strict):
    datasets: list[AnyEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Registry:
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique, repeated: {', '.join(dupes)}")
        return self


def _describe_errors(err: ValidationError, raw: Any) -> str:
    """Turn pydantic's errors into one line that names the dataset and the key."""
    parts = []
    for e in err.errors():
        loc = list(e["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "datasets" and isinstance(loc[1], int):
            index = loc[1]
            entries = raw.get("datasets") if isinstance(raw, dict) else None
            entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"dataset {name!r}" if name else f"dataset #{index + 1}"
            loc = loc[2:]
            if loc and loc[0] in ("synthetic", "medmnist", "prepared"):  # the discriminator's tag
                loc = loc[1:]
        key = ".".join(str(x) for x in loc)
        if e["type"] == "extra_forbidden":
            what = f"unknown key {key!r}"
        elif e["type"] == "missing":
            what = f"missing key {key!r}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            what = f"{key}: {msg}" if key else msg
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)


def default_registry_path() -> Path:
    return Path(str(importlib.resources.files("medpeft_cli") / "resources" / "datasets.yaml"))


def read_registry(path: str | Path | None = None) -> Registry:
    """Read and validate a registry file (the packaged datasets.yaml by default)."""
    path = Path(path) if path is not None else default_registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read the dataset registry {path}: {exc.strerror or exc}; reinstall medpeft") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path} is not valid YAML{at}: {problem}; fix the file") from None
    try:
        return Registry.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path} is invalid: {_describe_errors(exc, raw)}; fix the file") from None


@functools.lru_cache(maxsize=1)
def _packaged_registry() -> Registry:
    return read_registry()


def list_datasets() -> list[DatasetEntry]:
    """All registered datasets, in file order."""
    return list(_packaged_registry().datasets)


def get_dataset_entry(name: str) -> DatasetEntry:
    """The registry entry called `name`; UserError listing the known names otherwise."""
    for entry in _packaged_registry().datasets:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in _packaged_registry().datasets)
    raise UserError(f"unknown dataset {shown_name(name)}; known datasets: {known} (see datasets.yaml)")
