"""load_dataset: registry entry -> the loader for its kind -> DatasetBundle.

Names that are not in the registry are looked up among the user's own prepared datasets
(`medpeft datasets prepare NAME --raw DIR --from imagefolder|manifest`).
"""

from __future__ import annotations

import os
from pathlib import Path

from medpeft_cli.errors import UserError

from .bundle import DatasetBundle
from .medmnist import load_medmnist
from .prepared import available_resolutions, load_prepared, prepared_dir, prepared_root, read_info
from .registry import NAME_RULE, DatasetEntry, MedMNISTEntry, PreparedEntry, SyntheticEntry, get_dataset_entry, suggested_name, valid_dataset_name
from .synthetic import load_synthetic


def default_data_dir() -> Path:
    """$MEDPEFT_DATA_DIR if set, else ~/.cache/medpeft/data."""
    env = os.environ.get("MEDPEFT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "medpeft" / "data"


def offline() -> bool:
    """True when the user asked for no network: MEDPEFT_OFFLINE=1 or HF_HUB_OFFLINE=1 (compute nodes)."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes") for var in ("MEDPEFT_OFFLINE", "HF_HUB_OFFLINE"))


def not_prepared_message(entry: PreparedEntry, data_dir: Path, resolution: int) -> str:
    have = available_resolutions(data_dir, entry.name)
    other = f" (prepared at {', '.join(map(str, have))} px: pass --data-resolution)" if have else ""
    return (
        f"{entry.name} is not prepared at {resolution} px under {prepared_root(data_dir, entry.name)}{other}; medpeft cannot download it "
        f"({entry.access}): {entry.how_to_obtain.strip()} Then run `medpeft datasets prepare {entry.name} --raw PATH --resolution {resolution}`"
    )


def load_registered_prepared(entry: PreparedEntry, data_dir: Path, resolution: int | None) -> DatasetBundle:
    res = resolution or entry.resolution
    folder = prepared_dir(data_dir, entry.name, res)
    if not (folder / "info.json").is_file():
        raise UserError(not_prepared_message(entry, data_dir, res))
    return load_prepared(folder, None if entry.classes_from_data else list(entry.classes or []))


def load_user_prepared(name: str, data_dir: Path, resolution: int | None) -> DatasetBundle | None:
    """A dataset the user prepared from an ImageFolder tree or a manifest; None if there is none."""
    have = available_resolutions(data_dir, name)
    if not have:
        return None
    if resolution is None:
        if len(have) > 1:
            raise UserError(f"{name} is prepared at {', '.join(map(str, have))} px; choose one with --data-resolution")
        resolution = have[0]
    folder = prepared_dir(data_dir, name, resolution)
    if resolution not in have:
        raise UserError(f"{name} is not prepared at {resolution} px (prepared: {', '.join(map(str, have))} px); run `medpeft datasets prepare` with --resolution {resolution}")
    read_info(folder)
    return load_prepared(folder)


def load_dataset(
    name: str, data_dir: str | Path | None = None, download: bool = True, resolution: int | None = None
) -> DatasetBundle:
    """Load a dataset with its fixed train/val/test splits (downloads are off when offline()).

    `resolution` picks the prepared / MedMNIST file resolution (None: the registry's default)."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    try:
        entry: DatasetEntry = get_dataset_entry(name)
    except UserError as unknown:
        bundle = load_user_prepared(name, root, resolution) if valid_dataset_name(name) else None
        if bundle is None:
            # the hint names a dataset that `prepare` accepts (the name asked for, when it is valid)
            suggested = name if valid_dataset_name(name) else suggested_name(name)
            rule = "" if suggested == name else f" (a dataset name is {NAME_RULE})"
            raise UserError(
                f"{unknown} or prepare your own under --data-dir with `medpeft datasets prepare {suggested} --raw DIR --from imagefolder|manifest`{rule}"
            ) from None
        return bundle
    if isinstance(entry, SyntheticEntry):
        if resolution not in (None, entry.image_size):
            raise UserError(f"{name} is generated at {entry.image_size} px only; drop --data-resolution (use --image-size to resize for the model)")
        if entry.generator == "captioned-lesions-v1":  # synthetic-captions, the text-to-image track's embedded set
            from medpeft_cli.t2i.captions import load_captioned_lesions

            return load_captioned_lesions(entry, root, download and not offline())
        return load_synthetic(entry, root, download and not offline())
    if isinstance(entry, MedMNISTEntry):
        return load_medmnist(entry, root, download and not offline(), resolution)
    if isinstance(entry, PreparedEntry):
        return load_registered_prepared(entry, root, resolution)
    raise AssertionError(f"no loader for kind {entry.kind!r}")
