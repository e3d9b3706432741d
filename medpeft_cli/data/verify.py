"""`medpeft datasets verify`: checksums, class counts and split disjointness by group."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medpeft_cli.errors import UserError

from .bundle import SPLIT_NAMES, DatasetBundle
from .medmnist import check_trainable, file_md5, load_medmnist_npz, locate
from .prepared import _sha256_file, available_resolutions, load_prepared, prepared_dir, read_info
from .registry import DatasetEntry, MedMNISTEntry, PreparedEntry, SyntheticEntry, get_dataset_entry, list_datasets
from .splits import overlapping_groups


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    name: str
    location: str
    class_names: list[str]
    counts: dict[str, list[int]]
    split_checksum: str
    dataset_checksum: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _bundle_checks(bundle: DatasetBundle, expected_sizes: dict[str, int] | None) -> list[Check]:
    checks = []
    ids = np.concatenate([bundle.splits[s].ids for s in SPLIT_NAMES])
    dupes = len(ids) - len(set(ids.tolist()))
    checks.append(Check("unique ids", dupes == 0, f"{len(ids)} ids" if dupes == 0 else f"{dupes} duplicate ids"))
    by_group = {s: (bundle.splits[s].groups if bundle.splits[s].groups is not None else bundle.splits[s].ids) for s in SPLIT_NAMES}
    overlap = overlapping_groups(by_group)
    what = "groups" if bundle.splits["train"].groups is not None else "ids (no group ids in this dataset)"
    detail = f"no {what} shared between splits" if not overlap else "; ".join(
        f"{len(g)} shared by {a}/{b} (e.g. {g[0]})" for (a, b), g in overlap.items()
    )
    checks.append(Check("splits disjoint by group", not overlap, detail))
    if bundle.class_names:
        counts = {s: np.bincount(bundle.splits[s].labels, minlength=bundle.num_classes) for s in SPLIT_NAMES}
        empty = [f"{bundle.class_names[c]} in {s}" for s in SPLIT_NAMES for c in np.flatnonzero(counts[s] == 0)]
        checks.append(Check("every class in every split", not empty, "yes" if not empty else "missing: " + ", ".join(empty[:5])))
    if expected_sizes:
        got = {s: len(bundle.splits[s]) for s in SPLIT_NAMES}
        ok = got == expected_sizes
        checks.append(Check("official split sizes", ok, f"{got['train']}/{got['val']}/{got['test']}" + ("" if ok else f", expected {expected_sizes['train']}/{expected_sizes['val']}/{expected_sizes['test']}")))
    return checks


def _report(name: str, location: str, bundle: DatasetBundle, checks: list[Check]) -> VerifyReport:
    counts = {s: np.bincount(bundle.splits[s].labels, minlength=bundle.num_classes).tolist() if bundle.class_names else [len(bundle.splits[s])] for s in SPLIT_NAMES}
    return VerifyReport(name, location, list(bundle.class_names), counts, bundle.split_checksum, bundle.checksum, checks)


def verify_prepared_dir(folder: Path, entry: DatasetEntry | None) -> VerifyReport:
    info = read_info(folder)
    checks = []
    images_sum = _sha256_file(folder / "images.npy")
    checks.append(Check("images.npy checksum", images_sum == info.get("images_sha256"), images_sum[:23] + "..."))
    expected_classes = None
    if isinstance(entry, (PreparedEntry, MedMNISTEntry)) and not getattr(entry, "classes_from_data", False):
        expected_classes = list(entry.classes or [])
    bundle = load_prepared(folder, expected_classes)  # also checks the split file against the manifest
    checks.append(Check("dataset checksum", bundle.checksum == info.get("dataset_checksum"), bundle.checksum[:23] + "..."))
    checks.append(Check("split file checksum", bundle.split_checksum == info.get("split_checksum"), bundle.split_checksum[:23] + "..."))
    if isinstance(entry, MedMNISTEntry):
        src = entry.at(int(info["resolution"]))
        checks.append(Check("prepared from the official file", info.get("md5") == src.md5, f"{info.get('file')} md5={info.get('md5')}"))
    sizes = entry.split_sizes.model_dump() if isinstance(entry, MedMNISTEntry) else None
    checks += _bundle_checks(bundle, sizes)
    skipped = info.get("skipped_unreadable", {}).get("count", 0)
    excluded = sum(info.get("excluded", {}).values())
    if skipped or excluded:
        checks.append(Check("left out at prepare", True, f"{skipped} unreadable (--skip-corrupt), {excluded} excluded by the layout: {info.get('excluded')}"))
    return _report(info["name"], str(folder), bundle, checks)


def verify_dataset(name: str, data_dir: Path, resolution: int | None = None) -> VerifyReport:
    data_dir = Path(data_dir)
    registered = {e.name for e in list_datasets()}
    if name not in registered:
        have = available_resolutions(data_dir, name)
        if not have:
            get_dataset_entry(name)  # raises the unknown-dataset error
        res = resolution or (have[0] if len(have) == 1 else None)
        if res is None:
            raise UserError(f"{name} is prepared at {', '.join(map(str, have))} px; choose one with --resolution")
        return verify_prepared_dir(prepared_dir(data_dir, name, res), None)
    entry = get_dataset_entry(name)
    if isinstance(entry, SyntheticEntry):
        from .load import load_dataset

        bundle = load_dataset(name, data_dir)
        return _report(name, f"generated ({entry.generator}, seed {entry.seed})", bundle, _bundle_checks(bundle, entry.split_sizes.model_dump()))
    if isinstance(entry, MedMNISTEntry):
        src = entry.at(resolution)
        folder = prepared_dir(data_dir, name, src.resolution)
        if (folder / "info.json").is_file():
            return verify_prepared_dir(folder, entry)
        path = locate(src, data_dir, download_missing=False)
        got = file_md5(path)
        checks = [Check("MD5 of the official file", got == src.md5, f"{path.name} md5={got}")]
        if got != src.md5:
            return VerifyReport(name, str(path), list(entry.classes or []), {}, "", "", checks)
        check_trainable(entry)
        bundle = load_medmnist_npz(path, src)
        return _report(name, str(path), bundle, checks + _bundle_checks(bundle, entry.split_sizes.model_dump()))
    assert isinstance(entry, PreparedEntry)
    res = resolution or entry.resolution
    folder = prepared_dir(data_dir, name, res)
    if not (folder / "info.json").is_file():
        from .load import not_prepared_message

        raise UserError(not_prepared_message(entry, data_dir, res))
    return verify_prepared_dir(folder, entry)
