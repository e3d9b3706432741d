"""The in-memory form of a dataset: uint8 images, int64 labels and ids per split, plus optional
per-sample group ids (patient / lesion) and metadata (sex, age bin, skin type, site, view, caption)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def split_checksum(ids_by_split: Mapping[str, Sequence[str] | np.ndarray]) -> str:
    """sha256 of the assignment {split: sorted ids}: the same partition gives the same checksum,
    however the file that holds it is formatted or ordered."""
    canonical = {s: sorted(str(i) for i in ids_by_split[s]) for s in SPLIT_NAMES}
    payload = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Split:
    """One split. Treat the arrays as read-only: the bundle checksum covers their bytes."""

    images: np.ndarray  # uint8, (N, H, W, 3)
    labels: np.ndarray  # int64, (N,)
    ids: np.ndarray  # str, (N,), stable per-sample ids such as "train-000123"
    groups: np.ndarray | None = None  # str, (N,): samples sharing a group (patient, lesion) share a split
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # column -> str (N,); "" = unknown

    def __post_init__(self) -> None:
        n = len(self.labels)
        for key, column in {"groups": self.groups, **{f"meta[{k!r}]": v for k, v in self.meta.items()}}.items():
            if column is not None and (column.ndim != 1 or len(column) != n):
                raise ValueError(f"{key} must have one value per sample ({n}), got shape {column.shape}")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {self.labels.shape}")
        if self.ids.ndim != 1 or len(self.images) != n or len(self.ids) != n:
            raise ValueError(
                f"split arrays disagree in length: images {len(self.images)}, labels {n}, ids {len(self.ids)}"
            )

    def __len__(self) -> int:
        return len(self.labels)


def make_split(name: str, images: np.ndarray, labels: np.ndarray) -> Split:
    """Build a split with ids "<name>-<index:06d>" in array order."""
    ids = np.array([f"{name}-{i:06d}" for i in range(len(labels))], dtype=str)
    return Split(images=np.ascontiguousarray(images), labels=labels.astype(np.int64, copy=False), ids=ids)


@dataclass(frozen=True, eq=False)
class DatasetBundle:
    """A loaded dataset: its splits plus what a result row needs for provenance."""

    name: str
    task: str
    class_names: list[str]
    splits: dict[str, Split]
    checksum: str  # "sha256:<hex>", see checksum.py
    source: str  # human-readable origin
    split_checksum: str = ""  # "sha256:<hex>" of the split assignment (splits.split_checksum)
    subgroups: tuple[str, ...] = ()  # meta columns that evaluation reports per subgroup

    def __post_init__(self) -> None:
        if tuple(self.splits) != SPLIT_NAMES:
            raise ValueError(f"splits must be exactly {SPLIT_NAMES}, got {tuple(self.splits)}")
        if not self.split_checksum:
            object.__setattr__(self, "split_checksum", split_checksum({s: self.splits[s].ids for s in SPLIT_NAMES}))
        missing = [c for c in self.subgroups if any(c not in self.splits[s].meta for s in SPLIT_NAMES)]
        if missing:
            raise ValueError(f"subgroup columns {missing} are not in every split's metadata")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
