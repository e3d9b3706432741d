"""load_dataset: registry entry -> the loader for its kind -> DatasetBundle."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .bundle import DatasetBundle
from .medmnist import load_medmnist
from .registry import get_dataset_entry
from .synthetic import load_synthetic

# kind -> loader(entry, data_dir, download); one per source kind in datasets.yaml
_LOADERS: dict[str, Callable[..., DatasetBundle]] = {
    "synthetic": load_synthetic,
    "medmnist": load_medmnist,
}


def default_data_dir() -> Path:
    """$MEDPEFT_DATA_DIR if set, else ~/.cache/medpeft/data."""
    env = os.environ.get("MEDPEFT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "medpeft" / "data"


def offline() -> bool:
    """True when the user asked for no network: MEDPEFT_OFFLINE=1 or HF_HUB_OFFLINE=1 (compute nodes)."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes") for var in ("MEDPEFT_OFFLINE", "HF_HUB_OFFLINE"))


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> DatasetBundle:
    """Load a registered dataset with its fixed train/val/test splits (downloads are off when offline())."""
    entry = get_dataset_entry(name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return _LOADERS[entry.kind](entry, root, download and not offline())
