"""The prepared form of a dataset and the `prepare` pipeline.

    <data_dir>/prepared/<name>/<resolution>/
        images.npy       uint8 (N, R, R, 3), rows ordered by (split, id): each split is one
                         contiguous slice, so a loaded split is a zero-copy memory map
        manifest.parquet index, id, split, label, label_name, group, path, metadata columns
        splits.json      the split file (splits.py), checksum inside
        info.json        classes, counts, checksums, what was skipped or left out, provenance

`prepare` decodes every image once (images.py), resizes it to each requested resolution, splits
the samples that decoded (official split or seeded, stratified, grouped), and writes everything to
a temporary folder that is renamed into place only when complete: a failure leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medpeft_cli import duck
from medpeft_cli.errors import UserError
from medpeft_cli.hashing import file_sha256

from .bundle import SPLIT_NAMES, DatasetBundle, Split
from .checksum import dataset_checksum
from .images import RESIZE_POLICY, ImageDecodeError, decode_resized
from .layouts import RawTable, safe_relative
from .splits import grouped_stratified_split, overlapping_groups, read_split_file, split_checksum, write_split_file

PREPARED_FORMAT = "medpeft-prepared-v1"
INFO_FILE, IMAGES_FILE, MANIFEST_FILE, SPLITS_FILE = "info.json", "images.npy", "manifest.parquet", "splits.json"
BASE_COLUMNS = ("index", "id", "split", "label", "label_name", "group", "path")
MAX_LISTED = 5  # failing paths named in a one-line error


def prepared_root(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "prepared" / name


def prepared_dir(data_dir: Path, name: str, resolution: int) -> Path:
    return prepared_root(data_dir, name) / str(int(resolution))


def available_resolutions(data_dir: Path, name: str) -> list[int]:
    root = prepared_root(data_dir, name)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / INFO_FILE).is_file())


@dataclass
class PrepareSpec:
    """Everything `prepare_table` needs besides the records; the registry entry or the CLI fills it."""

    name: str
    task: str  # multiclass | multilabel | text-to-image
    source: str  # layout name, "imagefolder", "manifest" or "medmnist"
    class_names: list[str] | None  # None: sorted labels found in the data
    expected_classes: int | None = None
    resolutions: Sequence[int] = (224,)
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    subgroups: Sequence[str] = ()
    skip_corrupt: bool = False
    force: bool = False
    workers: int = 0  # 0: one per CPU core
    extra_info: dict = field(default_factory=dict)


@dataclass
class PrepareResult:
    name: str
    dirs: list[Path]
    n_images: int
    class_names: list[str]
    counts: dict[str, list[int]]  # split -> images per class
    skipped: list[tuple[str, str]]  # (path, reason) left out with --skip-corrupt
    excluded: dict[str, int]
    split_checksum: str
    seconds: float

    @property
    def images_per_s(self) -> float:
        return (self.n_images + len(self.skipped)) / max(self.seconds, 1e-9)


# ---- validation -----------------------------------------------------------------------------


def _class_names(table: RawTable, spec: PrepareSpec) -> list[str]:
    if spec.task == "text-to-image":
        return []
    unlabelled = next((r for r in table.records if r.label is None or not str(r.label).strip()), None)
    if unlabelled is not None:  # never a hidden class "": the run would be an N+1-class problem
        raise UserError(f"{spec.name}: sample {unlabelled.id!r} ({unlabelled.path}) has an empty label; give every sample a label (or leave it out of the data)")
    names = table.class_names or spec.class_names
    if names is None:  # classes_from_data
        names = sorted({r.label for r in table.records if r.label is not None})
        if spec.expected_classes is not None and len(names) != spec.expected_classes:
            raise UserError(
                f"{spec.name}: the raw data has {len(names)} distinct labels, the registry expects {spec.expected_classes}; "
                "is it the official release?"
            )
    if any(not str(n).strip() for n in names):
        raise UserError(f"{spec.name}: the class list {list(names)} holds an empty name; name every class (e.g. --classes a,b)")
    return list(names)


def validate_records(root: Path, table: RawTable, spec: PrepareSpec) -> tuple[list[str], np.ndarray]:
    """Class names and int64 labels; UserError on an unsafe path, unknown label, duplicate id or empty class."""
    if not table.records:
        raise UserError(f"{spec.name}: no images found under {root}; check --raw (expected layout: `medpeft datasets info {spec.name}`)")
    names = _class_names(table, spec)
    index = {c: i for i, c in enumerate(names)}
    labels = np.zeros(len(table.records), dtype=np.int64)
    seen: dict[str, str] = {}
    for i, rec in enumerate(table.records):
        rec.path = safe_relative(root, rec.path, f"{spec.name} sample {rec.id!r}")
        if rec.id in seen:
            raise UserError(f"{spec.name}: duplicate sample id {rec.id!r} ({seen[rec.id]} and {rec.path}); ids must be unique")
        seen[rec.id] = rec.path
        if spec.task != "text-to-image":
            if rec.label not in index:
                raise UserError(
                    f"{spec.name}: sample {rec.id!r} has label {rec.label!r}, which is not one of the classes "
                    f"{', '.join(names)}; fix the label or the class list"
                )
            labels[i] = index[rec.label]
    _check_no_empty_class(spec.name, names, labels, "in the raw data")
    return names, labels


def _check_no_empty_class(name: str, names: list[str], labels: np.ndarray, where: str) -> None:
    if not names:
        return
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(f"{name}: class(es) {', '.join(empty)} have no images {where}; every class needs images (check --raw and the labels)")


# ---- decoding -------------------------------------------------------------------------------


def _decode_all(root: Path, records, resolutions: Sequence[int], tmp: Path, workers: int, progress: Callable[[int], None]):
    """Decode every record once into one memory-mapped array per resolution (record order).
    Returns (arrays, header metadata per record, failures as (index, reason))."""
    n = len(records)
    arrays = {
        r: np.lib.format.open_memmap(tmp / f"decoded-{r}.npy", mode="w+", dtype=np.uint8, shape=(n, r, r, 3)) for r in resolutions
    }
    headers: list[dict[str, str]] = [{} for _ in range(n)]
    failures: list[tuple[int, str]] = []

    def work(i: int):
        path = root / records[i].path
        if not path.is_file():
            return i, None, None, "file not found"
        try:
            images, header = decode_resized(path, resolutions)
        except ImageDecodeError as exc:
            return i, None, None, str(exc)
        return i, images, header, None

    workers = workers or min(os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow and zlib release the GIL
        for i, images, header, error in pool.map(work, range(n), chunksize=16):
            if error is not None:
                failures.append((i, error))
            else:
                for r, image in zip(resolutions, images, strict=True):
                    arrays[r][i] = image
                headers[i] = header
            progress(1)
    return arrays, headers, failures


# ---- splitting ------------------------------------------------------------------------------


def _assign_splits(name: str, table_records, labels: np.ndarray, spec: PrepareSpec, num_classes: int) -> tuple[np.ndarray, dict]:
    given = [r.split for r in table_records]
    groups = np.array([r.group for r in table_records], dtype=str)
    if all(s is not None for s in given):
        split_idx = np.array([SPLIT_NAMES.index(s) for s in given], dtype=np.int64)
        how = {"method": "official"}
    elif any(s is not None for s in given):
        missing = next(r.id for r in table_records if r.split is None)
        raise UserError(f"{name}: some samples have a split and others (e.g. {missing!r}) do not; give every sample a split or none")
    else:
        split_idx = grouped_stratified_split(labels, groups, spec.split_fractions, spec.split_seed, max(num_classes, 1))
        how = {"method": "stratified-grouped-v1", "seed": spec.split_seed, "fractions": dict(zip(SPLIT_NAMES, spec.split_fractions, strict=True))}
    overlap = overlapping_groups({s: groups[split_idx == i] for i, s in enumerate(SPLIT_NAMES)})
    if overlap:
        (a, b), shared = next(iter(overlap.items()))
        raise UserError(f"{name}: group {shared[0]!r} has samples in both {a} and {b} ({len(shared)} shared groups); a patient or lesion must stay in one split")
    for i, s in enumerate(SPLIT_NAMES):
        if not np.any(split_idx == i):
            raise UserError(f"{name}: the {s} split is empty ({len(labels)} images); the dataset is too small to split")
    return split_idx, how


# ---- writing --------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    return "sha256:" + file_sha256(path)


def _write_manifest(path: Path, columns: dict[str, np.ndarray]) -> None:
    con = duck.connect()
    try:
        con.register("manifest_view", {k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in columns.items()})
        con.execute(f"COPY (SELECT * FROM manifest_view ORDER BY \"index\") TO '{path.as_posix()}' (FORMAT parquet)")
    finally:
        con.close()


def read_manifest_columns(path: Path) -> dict[str, np.ndarray]:
    """The manifest as {column: array}, rows in `index` order (strings as str arrays)."""
    import duckdb

    con = duck.connect()
    try:
        cur = con.execute("SELECT * FROM read_parquet(?) ORDER BY \"index\"", [str(path)])
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    except duckdb.Error as exc:
        raise UserError(f"cannot read {path} ({exc}); prepare the dataset again with --force") from None
    finally:
        con.close()
    out = {}
    for j, n in enumerate(names):
        values = [r[j] for r in rows]
        if n in ("index", "label"):
            out[n] = np.array(values, dtype=np.int64)
        else:
            out[n] = np.array(["" if v is None else str(v) for v in values], dtype=str)
    return out


def _bundle_from(name, task, class_names, images, columns, meta_cols, subgroups, source, split_sum) -> DatasetBundle:
    # A group column equal to the ids means "no grouping": stored as None, as in loaders without groups.
    grouped = not np.array_equal(columns["group"], columns["id"])
    splits = {}
    for s in SPLIT_NAMES:
        rows = np.flatnonzero(columns["split"] == s)
        if rows.size == 0 or not np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
            raise UserError(f"{name}: the {s} rows of the prepared manifest are missing or not contiguous; prepare the dataset again with --force")
        part = slice(int(rows[0]), int(rows[-1]) + 1)
        splits[s] = Split(
            images=images[part],
            labels=columns["label"][part],
            ids=columns["id"][part],
            groups=columns["group"][part] if grouped else None,
            meta={c: columns[c][part] for c in meta_cols},
        )
    return DatasetBundle(
        name=name, task=task, class_names=list(class_names), splits=splits, checksum=dataset_checksum(splits),
        source=source, split_checksum=split_sum, subgroups=tuple(subgroups),
    )


def write_prepared_dir(
    out: Path, resolution: int, fill: Callable[[np.ndarray], None], columns: dict[str, np.ndarray], class_names: list[str], *,
    name: str, task: str, source: str, subgroups: Sequence[str], split_how: dict, group_by: str | None, raw_root: Path, extra_info: dict,
) -> str:
    """Write one resolution folder (images via `fill` into the memory-mapped images.npy, manifest,
    split file, info.json) and return the split checksum. `columns` are in final row order."""
    import medpeft_cli

    out.mkdir(parents=True)
    n = len(columns["index"])
    final = np.lib.format.open_memmap(out / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(n, resolution, resolution, 3))
    fill(final)
    final.flush()
    del final
    _write_manifest(out / MANIFEST_FILE, columns)
    split_names = columns["split"]
    ids_by_split = {s: columns["id"][split_names == s].tolist() for s in SPLIT_NAMES}
    split_sum = write_split_file(
        out / SPLITS_FILE, ids_by_split, dataset=name, stratified_by="label", grouped_by=group_by or "sample id", **split_how
    )
    meta_cols = [c for c in columns if c not in BASE_COLUMNS]
    images = np.load(out / IMAGES_FILE, mmap_mode="r")
    bundle = _bundle_from(name, task, class_names, images, columns, meta_cols, subgroups, "", split_sum)
    counts = {s: np.bincount(columns["label"][split_names == s], minlength=len(class_names)).tolist() for s in SPLIT_NAMES}
    info = {
        "format": PREPARED_FORMAT,
        "name": name,
        "task": task,
        "source": source,
        "class_names": list(class_names),
        "resolution": int(resolution),
        "resize_policy": RESIZE_POLICY if source != "medmnist" else "official MedMNIST arrays, not resized",
        "raw_root": str(Path(raw_root).resolve()),
        "group_by": group_by or "sample id",
        "subgroups": list(subgroups),
        "metadata_columns": meta_cols,
        "n_images": int(n),
        "counts": counts,
        "split": split_how,
        "split_checksum": split_sum,
        "dataset_checksum": bundle.checksum,
        "images_sha256": _sha256_file(out / IMAGES_FILE),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "medpeft_version": medpeft_cli.__version__,
        **extra_info,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return split_sum


def prepare_table(root: Path, table: RawTable, spec: PrepareSpec, data_dir: Path, progress: Callable[[int], None] = lambda n: None) -> PrepareResult:
    """Validate, decode, split and write `table` for every resolution in spec; atomic per dataset."""
    start = time.perf_counter()
    resolutions = sorted({int(r) for r in spec.resolutions})
    if not resolutions or any(r < 8 or r > 4096 for r in resolutions):
        raise UserError(f"resolutions must be between 8 and 4096 pixels, got {spec.resolutions}")
    finals = [prepared_dir(data_dir, spec.name, r) for r in resolutions]
    existing = [d for d in finals if d.exists()]
    if existing and not spec.force:
        raise UserError(f"{spec.name} is already prepared at {existing[0]}; pass --force to prepare it again (it replaces that folder)")
    class_names, labels = validate_records(root, table, spec)

    parent = prepared_root(data_dir, spec.name)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-prepare-", dir=parent))
    except OSError as exc:
        raise UserError(f"cannot write under {parent} ({exc.strerror or exc}); pass a writable --data-dir") from None
    try:
        decoded, headers, failures = _decode_all(root, table.records, resolutions, tmp, spec.workers, progress)
        skipped = [(table.records[i].path, reason) for i, reason in sorted(failures)]
        if skipped and not spec.skip_corrupt:
            listed = "; ".join(f"{p} ({why})" for p, why in skipped[:MAX_LISTED])
            more = f" and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
            raise UserError(
                f"{spec.name}: {len(skipped)} of {len(table.records)} images are missing or unreadable under {root}: {listed}{more}; "
                "replace them, or pass --skip-corrupt to leave them out (the count is recorded)"
            )
        failed = {i for i, _ in failures}
        keep = np.array([i for i in range(len(table.records)) if i not in failed], dtype=np.int64)
        records = [table.records[i] for i in keep]
        for rec, i in zip(records, keep, strict=True):  # DICOM header fields fill what the layout left empty
            for key, value in headers[i].items():
                if not rec.meta.get(key):
                    rec.meta[key] = value
        kept_labels = labels[keep]
        meta_cols = sorted({k for r in records for k in r.meta})
        absent = [c for c in spec.subgroups if c not in meta_cols]
        if absent:
            raise UserError(f"{spec.name}: subgroup column(s) {', '.join(absent)} are not in the data (metadata columns: {', '.join(meta_cols) or 'none'})")
        _check_no_empty_class(spec.name, class_names, kept_labels, "left after skipping unreadable files")
        split_idx, how = _assign_splits(spec.name, records, kept_labels, spec, len(class_names))

        order = np.lexsort(([r.id for r in records], split_idx))
        ids = np.array([records[j].id for j in order], dtype=str)
        split_names = np.array([SPLIT_NAMES[split_idx[j]] for j in order], dtype=str)
        columns = {
            "index": np.arange(len(order), dtype=np.int64),
            "id": ids,
            "split": split_names,
            "label": kept_labels[order],
            "label_name": np.array([class_names[kept_labels[j]] if class_names else "" for j in order], dtype=str),
            "group": np.array([records[j].group for j in order], dtype=str),
            "path": np.array([records[j].path for j in order], dtype=str),
            **{c: np.array([records[j].meta.get(c, "") for j in order], dtype=str) for c in meta_cols},
        }
        counts = {s: np.bincount(columns["label"][split_names == s], minlength=len(class_names)).tolist() for s in SPLIT_NAMES}
        rows_in_decoded = keep[order]
        for r in resolutions:

            def fill(final: np.ndarray, r: int = r) -> None:
                for lo in range(0, len(order), 1024):  # chunked gather keeps memory flat
                    final[lo : lo + 1024] = decoded[r][rows_in_decoded[lo : lo + 1024]]

            split_sum = write_prepared_dir(
                tmp / str(r), r, fill, columns, class_names, name=spec.name, task=spec.task, source=spec.source,
                subgroups=spec.subgroups, split_how=how, group_by=table.group_by, raw_root=root,
                extra_info={
                    "skipped_unreadable": {"count": len(skipped), "paths": [p for p, _ in skipped[:1000]]},
                    "excluded": dict(table.excluded),
                    **spec.extra_info,
                },
            )
        decoded.clear()  # drop the memory maps before their files are removed
        for r, final_dir in zip(resolutions, finals, strict=True):
            move_into_place(tmp / str(r), final_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in (parent, parent.parent):  # a failed first prepare leaves no empty folder behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return PrepareResult(spec.name, finals, int(len(keep)), class_names, counts, skipped, dict(table.excluded), split_sum, time.perf_counter() - start)


def move_into_place(new: Path, final: Path) -> None:
    """Rename `new` to `final`; an existing `final` (--force) is moved aside first and then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- loading --------------------------------------------------------------------------------


def read_info(directory: Path) -> dict:
    try:
        info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {directory / INFO_FILE} ({exc}); prepare the dataset again with --force") from None
    if info.get("format") != PREPARED_FORMAT:
        raise UserError(f"{directory} holds prepared data of format {info.get('format')!r}, this medpeft reads {PREPARED_FORMAT}; prepare it again with --force")
    return info


def check_labels(directory: Path, class_names: list[str], columns: dict[str, np.ndarray]) -> None:
    """Every label of a prepared manifest names one of its classes (a changed manifest or info.json, or a
    copy prepared before empty labels were refused, is caught here rather than deep inside training)."""
    if not class_names:  # text-to-image data: no labels
        return
    redo = "prepare the dataset again with --force"
    if any(not str(n).strip() for n in class_names):
        raise UserError(f"{directory}: its class list {class_names} holds an empty name (a sample without a label); fix the labels and {redo}")
    labels = columns["label"]
    outside = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if outside.size:
        i = int(outside[0])
        raise UserError(
            f"{directory}: manifest row {i} ({columns['id'][i]}) has label {int(labels[i])}, outside the {len(class_names)} classes "
            f"{', '.join(class_names)} of info.json ({outside.size} such rows); the prepared files disagree: {redo}"
        )
    names = columns.get("label_name")
    if names is not None:
        wrong = np.flatnonzero(np.asarray(class_names, dtype=object)[labels] != names.astype(object))
        if wrong.size:
            i = int(wrong[0])
            raise UserError(
                f"{directory}: manifest row {i} ({columns['id'][i]}) has label {int(labels[i])} = {class_names[labels[i]]!r} but label_name "
                f"{names[i]!r}, which is not that class ({wrong.size} such rows); the prepared files disagree: {redo}"
            )


def load_prepared(directory: Path, expected_classes: list[str] | None = None) -> DatasetBundle:
    """The bundle of one prepared resolution folder; images stay memory-mapped."""
    info = read_info(directory)
    if expected_classes is not None and list(info["class_names"]) != list(expected_classes):
        raise UserError(
            f"{directory} was prepared with classes {info['class_names']}, but datasets.yaml lists {expected_classes}; "
            "prepare the dataset again with --force"
        )
    try:
        images = np.load(directory / IMAGES_FILE, mmap_mode="c", allow_pickle=False)  # copy-on-write: torch wants writable arrays; the file is never changed
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {directory / IMAGES_FILE} ({exc}); prepare the dataset again with --force") from None
    columns = read_manifest_columns(directory / MANIFEST_FILE)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(columns["index"]):
        raise UserError(f"{directory}: images.npy ({images.dtype} {images.shape}) does not match the manifest ({len(columns['index'])} rows); prepare again with --force")
    splits_doc = read_split_file(directory / SPLITS_FILE)
    from_manifest = split_checksum({s: columns["id"][columns["split"] == s] for s in SPLIT_NAMES})
    if from_manifest != splits_doc["checksum"]:
        raise UserError(f"{directory}: the manifest's splits differ from {SPLITS_FILE}; prepare the dataset again with --force")
    check_labels(directory, list(info["class_names"]), columns)
    meta_cols = [c for c in columns if c not in BASE_COLUMNS]
    source = f"prepared {directory.resolve()} (from {info.get('raw_root')}, {info.get('created_at')})"
    return _bundle_from(info["name"], info["task"], info["class_names"], images, columns, meta_cols, info.get("subgroups", []), source, splits_doc["checksum"])
