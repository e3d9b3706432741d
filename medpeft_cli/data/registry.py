"""The dataset registry: datasets.yaml, validated with pydantic.

Each source kind has its own entry model; adding a kind means adding a model to `AnyEntry`
and a loader in load.py.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medpeft_cli.errors import UserError

_NAME = r"^[a-z0-9][a-z0-9_-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetEntry(_Strict):
    """Fields every dataset has, whatever its source kind."""

    name: str = Field(pattern=_NAME)
    kind: str
    modality: str
    task: Literal["multiclass"] = "multiclass"  # binary datasets are multiclass with 2 classes
    classes: list[str] = Field(min_length=2)  # label i is classes[i]
    license: str
    citation: str
    source_citation: str | None = None  # the original data a derived dataset was built from
    url: str | None = None  # homepage or official source (None for generated data)
    description: str

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {classes}")
        return classes


class SplitSizes(_Strict):
    train: int = Field(ge=1)
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class SyntheticEntry(DatasetEntry):
    """A dataset generated from a seed by one of medpeft's generators (no download)."""

    kind: Literal["synthetic"]
    generator: Literal["lesions-v1"]
    seed: int = Field(ge=0)
    image_size: int = Field(default=64, ge=32, le=512)
    split_sizes: SplitSizes


class MedMNISTEntry(DatasetEntry):
    """One MedMNIST .npz file, used with its official splits."""

    kind: Literal["medmnist"]
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.npz$")
    download_url: str
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    resolution: int = Field(ge=1)  # native image side in pixels


AnyEntry = Annotated[SyntheticEntry | MedMNISTEntry, Field(discriminator="kind")]


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
            if loc and loc[0] in ("synthetic", "medmnist"):  # the discriminator's tag
                loc = loc[1:]
        key = ".".join(str(x) for x in loc)
        if e["type"] == "extra_forbidden":
            what = f"unknown key {key!r}"
        elif e["type"] == "missing":
            what = f"missing key {key!r}"
        else:
            what = f"{key}: {e['msg']}" if key else e["msg"]
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
    raise UserError(f"unknown dataset {name!r}; known datasets: {known} (see datasets.yaml)")
