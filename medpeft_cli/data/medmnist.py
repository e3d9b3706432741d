"""MedMNIST .npz files: find, download, verify (MD5) and load with the official splits."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from medpeft_cli.errors import UserError

from .bundle import SPLIT_NAMES, DatasetBundle, make_split
from .checksum import dataset_checksum
from .prepared import PrepareResult, load_prepared, move_into_place, prepared_dir, prepared_root, read_info, write_prepared_dir
from .registry import MedMNISTEntry, MedMNISTSource

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60


def candidate_paths(entry: MedMNISTSource, data_dir: Path) -> list[Path]:
    """Where the file may be, in search order."""
    return [data_dir / entry.file, data_dir / entry.name / entry.file, data_dir / "medmnist" / entry.file]


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    """UserError unless the file's MD5 is `md5` (the official one from datasets.yaml)."""
    try:
        got = file_md5(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check that the file is readable") from None
    if got != md5:
        raise UserError(
            f"{path} has MD5 {got}, expected {md5} (official MedMNIST); the file is corrupt or not the "
            f"official release: delete it and download again"
        )


def download_file(entry: MedMNISTSource, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch entry.download_url to dest via a temp file; the MD5 is checked before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        log.info("downloading %s from %s", entry.file, entry.download_url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.download_url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
        got = file_md5(Path(tmp))
        if got != entry.md5:
            raise UserError(
                f"downloaded {entry.file} from {entry.download_url} has MD5 {got}, expected {entry.md5} "
                f"(official MedMNIST); try again, or download the file by hand and pass --data-dir"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data dir should stay readable
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def locate(entry: MedMNISTSource, data_dir: Path, download_missing: bool, packaged: bool = True) -> Path:
    """The path of entry.file under data_dir, else the copy shipped with medpeft (when `packaged`), else
    downloaded when allowed."""
    paths = candidate_paths(entry, data_dir)
    for path in paths:
        if path.is_file():
            return path
    if packaged and entry.packaged is not None and entry.packaged.is_file():  # shipped with medpeft: no download needed
        return entry.packaged
    searched = ", ".join(str(p) for p in paths)
    todo = (
        f"place the official file at one of those paths or pass --data-dir to the folder that holds it "
        f"(official download: {entry.download_url})"
    )
    if not download_missing:
        raise UserError(f"{entry.name}: {entry.file} not found (searched {searched}) and download is off; {todo}")
    dest = paths[-1]
    try:
        download_file(entry, dest)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise UserError(
            f"{entry.name}: {entry.file} not found (searched {searched}) and downloading it to {dest} failed "
            f"({reason}); {todo}"
        ) from None
    return dest


def _images(path: Path, key: str, array: np.ndarray, entry: MedMNISTSource) -> np.ndarray:
    """(N, H, W) grayscale or (N, H, W, 3) RGB uint8 -> (N, H, W, 3) uint8."""
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] != 3):
        raise UserError(
            f"{path}: {key} is {array.dtype} {array.shape}, expected uint8 (N, H, W) or (N, H, W, 3); "
            f"it is not an official MedMNIST file: delete it and download again"
        )
    if array.shape[1:3] != (entry.resolution, entry.resolution):
        raise UserError(
            f"{path}: images are {array.shape[1]}x{array.shape[2]}, but datasets.yaml says {entry.name} is "
            f"{entry.resolution}x{entry.resolution}; use the file named in datasets.yaml ({entry.file})"
        )
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array


def _labels(path: Path, key: str, array: np.ndarray, n: int, entry: MedMNISTSource) -> np.ndarray:
    """(N, 1) or (N,) integer labels in [0, len(classes)) -> (N,) int64."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or len(array) != n or not np.issubdtype(array.dtype, np.integer):
        raise UserError(
            f"{path}: {key} is {array.dtype} {array.shape}, expected {n} integer labels (one per image); "
            f"multi-label MedMNIST files are not supported yet"
        )
    bad = array[(array < 0) | (array >= len(entry.classes))]
    if bad.size:
        raise UserError(
            f"{path}: {key} has label {bad[0]} outside 0..{len(entry.classes) - 1} ({len(entry.classes)} classes "
            f"in datasets.yaml for {entry.name}); the file does not belong to this dataset entry"
        )
    return array.astype(np.int64)


def load_medmnist_npz(path: Path, entry: MedMNISTSource) -> DatasetBundle:
    """Load an (already verified) MedMNIST .npz into a bundle, keeping the official splits."""
    required = [f"{s}_{kind}" for s in SPLIT_NAMES for kind in ("images", "labels")]
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not an .npz (zip) file; delete it and download the official {entry.file}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in required if k not in npz.files]
            if missing:
                raise UserError(
                    f"{path} lacks {', '.join(missing)} (has {', '.join(npz.files) or 'nothing'}); it is not a "
                    f"MedMNIST file: delete it and download the official {entry.file}"
                )
            arrays = {k: npz[k] for k in required}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        msg = f"cannot read {path} as .npz ({exc}); delete it and download the official {entry.file}"
        raise UserError(msg) from None

    splits = {}
    for s in SPLIT_NAMES:
        images = _images(path, f"{s}_images", arrays[f"{s}_images"], entry)
        labels = _labels(path, f"{s}_labels", arrays[f"{s}_labels"], len(images), entry)
        splits[s] = make_split(s, images, labels)
    return DatasetBundle(
        name=entry.name,
        task=entry.task,
        class_names=list(entry.classes),
        splits=splits,
        checksum=dataset_checksum(splits),
        source=f"file {path.resolve()} md5={entry.md5}",
    )


def check_trainable(entry: MedMNISTEntry) -> None:
    if entry.task != "multiclass":
        raise UserError(
            f"{entry.name} is a {entry.task} dataset ({len(entry.classes or [])} findings per image); medpeft's trainer takes "
            "single-label (multiclass) datasets only: `medpeft datasets download/verify` work for it, training does not yet"
        )


def load_medmnist(entry: MedMNISTEntry, data_dir: Path, download: bool = True, resolution: int | None = None) -> DatasetBundle:
    """The prepared copy when `medpeft datasets prepare` made one (memory-mapped, same checksum),
    else find (or download) the official file, check its MD5, then load it."""
    check_trainable(entry)
    source = entry.at(resolution)
    folder = prepared_dir(data_dir, entry.name, source.resolution)
    if (folder / "info.json").is_file():
        info = read_info(folder)
        if info.get("md5") != source.md5:
            raise UserError(f"{folder} was not prepared from the official {source.file} (MD5 {source.md5}); prepare it again with --force")
        return load_prepared(folder, list(entry.classes or []))
    path = locate(source, data_dir, download)
    verify_md5(path, source.md5)
    return load_medmnist_npz(path, source)


def prepare_medmnist(entry: MedMNISTEntry, raw: Path, data_dir: Path, resolutions: list[int] | None, force: bool) -> PrepareResult:
    """Write the prepared form (official arrays and splits, ids "<split>-<index>") of each resolution
    whose official file is in `raw` (checked against its MD5). Nothing is resized or re-split, so
    the prepared copy has the same dataset checksum as the .npz."""
    check_trainable(entry)
    start = time.perf_counter()
    sources = [entry.at(r) for r in (resolutions or [entry.resolution])]
    finals = [prepared_dir(data_dir, entry.name, src.resolution) for src in sources]
    existing = [d for d in finals if d.exists()]
    if existing and not force:
        raise UserError(f"{entry.name} is already prepared at {existing[0]}; pass --force to prepare it again (it replaces that folder)")
    bundles = []
    for src in sources:
        path = locate(src, Path(raw), download_missing=False, packaged=False)  # --raw names where the files are
        verify_md5(path, src.md5)
        bundles.append((src, path, load_medmnist_npz(path, src)))
    parent = prepared_root(data_dir, entry.name)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-prepare-", dir=parent))
    try:
        for src, path, bundle in bundles:
            parts = [bundle.splits[s] for s in SPLIT_NAMES]
            ids = np.concatenate([p.ids for p in parts])
            columns = {
                "index": np.arange(len(ids), dtype=np.int64),
                "id": ids,
                "split": np.concatenate([np.full(len(p), s) for s, p in zip(SPLIT_NAMES, parts, strict=True)]),
                "label": np.concatenate([p.labels for p in parts]),
                "label_name": np.array([bundle.class_names[i] for i in np.concatenate([p.labels for p in parts])], dtype=str),
                "group": ids,  # MedMNIST publishes no patient ids
                "path": np.array([f"{src.file}#{i}" for i in ids], dtype=str),
            }

            def fill(final: np.ndarray, parts=parts) -> None:
                at = 0
                for p in parts:
                    final[at : at + len(p)] = p.images
                    at += len(p)

            write_prepared_dir(
                tmp / str(src.resolution), src.resolution, fill, columns, bundle.class_names, name=entry.name, task=entry.task,
                source="medmnist", subgroups=(), split_how={"method": "official"}, group_by=None, raw_root=path.parent,
                extra_info={"md5": src.md5, "file": src.file},
            )
        for src, final in zip(sources, finals, strict=True):
            move_into_place(tmp / str(src.resolution), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = {s: np.bincount(bundles[0][2].splits[s].labels, minlength=len(entry.classes or [])).tolist() for s in SPLIT_NAMES}
    n = sum(len(bundles[0][2].splits[s]) for s in SPLIT_NAMES)
    return PrepareResult(entry.name, finals, n, list(entry.classes or []), counts, [], {}, bundles[0][2].split_checksum, time.perf_counter() - start)
