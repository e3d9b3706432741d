"""Readers of the official raw layouts: each turns the files a user downloaded into a list of
records (relative image path, label name, group id, metadata, official split where there is one).

One function per layout; `read_layout(name, root, entry)` picks it. Nothing here decodes pixels:
prepared.py does that once per image. Every path a reader returns is relative to `root` and is
checked by `safe_relative` not to escape it.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medpeft_cli import duck
from medpeft_cli.errors import UserError

from .images import IMAGE_SUFFIXES
from .metadata import age_bin, sex_code

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "validate": "val", "test": "test"}


@dataclass
class RawRecord:
    id: str
    path: str  # POSIX path relative to the raw root
    label: str | None  # class name (None for text-to-image data)
    group: str  # samples with the same group always share a split
    meta: dict[str, str] = field(default_factory=dict)  # "" = unknown
    split: str | None = None  # official split, where the data has one


@dataclass
class RawTable:
    records: list[RawRecord]
    class_names: list[str] | None = None  # None: the registry entry's classes
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows left out on purpose
    group_by: str | None = None
    subgroups: list[str] = field(default_factory=list)


# ---- helpers ---------------------------------------------------------------------------------


def safe_relative(root: Path, rel: str, where: str) -> str:
    """`rel` as a normalised POSIX path under `root`; UserError if it is absolute or escapes root
    (by '..' or through a symlink)."""
    text = str(rel).strip().replace("\\", "/")
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or re.match(r"^[A-Za-z]:", text) or ".." in pure.parts:
        raise UserError(
            f"{where}: path {rel!r} is not a relative path inside the raw root {root}; paths in a manifest must be "
            "relative to its folder and must not use '..' or start with '/'"
        )
    resolved_root = root.resolve()
    target = (root / pure).resolve()
    if target != resolved_root and resolved_root not in target.parents:
        raise UserError(f"{where}: path {rel!r} leads outside the raw root {root} (through a symlink); copy the file into it")
    return pure.as_posix()


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV / TSV (optionally .gz) file as dicts of stripped strings."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); download the file again") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return rows


def require_columns(rows: list[dict[str, str]], columns: Iterable[str], path: Path) -> None:
    have = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in have]
    if not rows:
        raise UserError(f"{path} has no data rows; download the official file again")
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)} (has {', '.join(sorted(have))}); is it the official file?")


def find_one(root: Path, candidates: list[str], what: str) -> Path:
    """The first existing file among `candidates` (relative to root); UserError naming them all."""
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise UserError(f"{what} not found under {root} (looked for {', '.join(candidates)}); pass --raw the folder of the official download")


def index_images(root: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, str]:
    """file stem -> relative POSIX path of every image below root; UserError on an ambiguous stem."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            rel = path.relative_to(root).as_posix()
            if path.stem in found:
                raise UserError(f"two images named {path.stem} under {root} ({found[path.stem]} and {rel}); keep one of them")
            found[path.stem] = rel
    return found


# ---- the registry's layouts ------------------------------------------------------------------


def read_busi(root: Path, entry) -> RawTable:
    if not all((root / c).is_dir() for c in entry.classes) and (root / "Dataset_BUSI_with_GT").is_dir():
        root_prefix = "Dataset_BUSI_with_GT/"
    else:
        root_prefix = ""
    records = []
    for cls in entry.classes:
        folder = root / root_prefix / cls
        if not folder.is_dir():
            raise UserError(f"busi: folder {folder} not found; --raw must be Dataset_BUSI_with_GT (with normal/, benign/, malignant/) or its parent")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() != ".png" or re.search(r"_mask(_\d+)?$", path.stem):
                continue
            rel = f"{root_prefix}{cls}/{path.name}"
            records.append(RawRecord(id=f"{cls}/{path.stem}", path=rel, label=cls, group=f"{cls}/{path.stem}"))
    return RawTable(records)


def read_fitzpatrick17k(root: Path, entry) -> RawTable:
    csv_path = find_one(root, ["fitzpatrick17k.csv"], "fitzpatrick17k.csv")
    rows = read_table(csv_path)
    column = entry.label_column or "three_partition_label"
    require_columns(rows, ["md5hash", "fitzpatrick_scale", column], csv_path)
    images = index_images(root)
    records = []
    for row in rows:
        md5 = row["md5hash"]
        skin = row["fitzpatrick_scale"]
        meta = {"fitzpatrick": skin if skin in {"1", "2", "3", "4", "5", "6"} else "", "qc": row.get("qc", "")}
        # A missing image is reported like an unreadable one (prepare fails unless --skip-corrupt).
        path = images.get(md5, f"images/{md5}.jpg")
        records.append(RawRecord(id=md5, path=path, label=row[column], group=md5, meta=meta))
    return RawTable(records)


def read_ham10000(root: Path, entry) -> RawTable:
    csv_path = find_one(root, ["HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab"], "HAM10000 metadata")
    rows = read_table(csv_path)
    require_columns(rows, ["lesion_id", "image_id", "dx", "age", "sex", "localization"], csv_path)
    images = index_images(root, (".jpg", ".jpeg", ".png"))
    records = []
    for row in rows:
        site = row["localization"] if row["localization"].lower() != "unknown" else ""
        meta = {"sex": sex_code(row["sex"]), "age_bin": age_bin(row["age"]), "site": site}
        path = images.get(row["image_id"], f"HAM10000_images/{row['image_id']}.jpg")
        records.append(RawRecord(id=row["image_id"], path=path, label=row["dx"], group=row["lesion_id"], meta=meta))
    return RawTable(records, group_by="lesion_id")


SMDG_LABELS = {"0": "non-glaucoma", "1": "glaucoma"}


def read_smdg(root: Path, entry) -> RawTable:
    csv_path = find_one(root, ["metadata - standardized.csv"], "SMDG metadata")
    rows = read_table(csv_path)
    require_columns(rows, ["names", "types"], csv_path)
    records, excluded = [], Counter()
    for row in rows:
        name, kind = row["names"], row["types"].split(".")[0]
        if kind == "-1":
            excluded["glaucoma suspect (types = -1)"] += 1
            continue
        fundus = (row.get("fundus") or f"full-fundus/{name}.png").lstrip("/")
        candidates = [fundus, f"full-fundus/{fundus}"]
        path = next((c for c in candidates if (root / c).is_file()), candidates[0])
        label = SMDG_LABELS.get(kind, f"types={row['types']}")  # an unknown code fails the class check
        meta = {"site": name.split("-")[0], "sex": sex_code(row.get("gender", "")), "age_bin": age_bin(row.get("age", "")), "eye": row.get("eye", "")}
        records.append(RawRecord(id=name, path=path, label=label, group=name, meta=meta))
    return RawTable(records, excluded=dict(excluded))


def read_rsna_pneumonia(root: Path, entry) -> RawTable:
    csv_path = find_one(root, ["stage_2_train_labels.csv", "stage_1_train_labels.csv"], "RSNA labels CSV")
    rows = read_table(csv_path)
    require_columns(rows, ["patientId", "Target"], csv_path)
    image_dir = "stage_2_train_images" if csv_path.name.startswith("stage_2") else "stage_1_train_images"
    target: dict[str, int] = {}
    for row in rows:  # one row per box; Target is 1 on every box row of a positive image
        if row["Target"] not in ("0", "1"):
            raise UserError(f"{csv_path}: Target {row['Target']!r} for {row['patientId']} is not 0 or 1; is it the official file?")
        target[row["patientId"]] = max(target.get(row["patientId"], 0), int(row["Target"]))
    # sex, age bin and view come from each DICOM header while it is decoded (prepared.py)
    records = [
        RawRecord(id=pid, path=f"{image_dir}/{pid}.dcm", label=entry.classes[t], group=pid, meta={})
        for pid, t in sorted(target.items())
    ]
    return RawTable(records, group_by="patientId")


_SECTION = re.compile(r"^\s*([A-Z][A-Z /&()-]{2,}):", re.MULTILINE)


def impression(report: str) -> str:
    """The IMPRESSION section of a radiology report (up to the next heading), whitespace collapsed."""
    match = re.search(r"^\s*IMPRESSION\s*:", report, re.MULTILINE)
    if not match:
        return ""
    rest = report[match.end() :]
    nxt = _SECTION.search(rest)
    return " ".join((rest[: nxt.start()] if nxt else rest).split())


def read_mimic_cxr(root: Path, entry) -> RawTable:
    meta_path = find_one(root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"], "MIMIC-CXR-JPG metadata")
    split_path = find_one(root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"], "MIMIC-CXR-JPG split file")
    rows = read_table(meta_path)
    require_columns(rows, ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta_path)
    split_rows = read_table(split_path)
    require_columns(split_rows, ["dicom_id", "split"], split_path)
    split_of = {r["dicom_id"]: r["split"] for r in split_rows}
    records, excluded = [], Counter()
    reports: dict[str, str] = {}
    for row in rows:
        view = row["ViewPosition"].upper()
        if view not in ("PA", "AP"):
            excluded[f"not a frontal view ({view or 'unknown'})"] += 1
            continue
        sid, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
        folder = f"p{sid[:2]}/p{sid}"
        if study not in reports:
            report_candidates = [f"mimic-cxr-reports/files/{folder}/s{study}.txt", f"files/{folder}/s{study}.txt"]
            report = next((root / c for c in report_candidates if (root / c).is_file()), None)
            reports[study] = impression(report.read_text(encoding="utf-8", errors="replace")) if report else "\0missing"
        caption = reports[study]
        if caption == "\0missing":
            excluded["report file missing"] += 1
            continue
        if not caption:
            excluded["report has no IMPRESSION section"] += 1
            continue
        split = SPLIT_ALIASES.get(split_of.get(dicom, ""))
        if split is None:
            raise UserError(f"{split_path} has no valid split for dicom_id {dicom} (got {split_of.get(dicom)!r}); use the official split file")
        records.append(
            RawRecord(id=dicom, path=f"files/{folder}/s{study}/{dicom}.jpg", label=None, group=sid, meta={"view": view, "caption": caption}, split=split)
        )
    return RawTable(records, excluded=dict(excluded), group_by="subject_id")


LAYOUTS: dict[str, Callable[[Path, object], RawTable]] = {
    "busi": read_busi,
    "fitzpatrick17k": read_fitzpatrick17k,
    "ham10000": read_ham10000,
    "smdg": read_smdg,
    "rsna-pneumonia": read_rsna_pneumonia,
    "mimic-cxr": read_mimic_cxr,
}


# ---- generic sources any user can point at ---------------------------------------------------


def read_imagefolder(root: Path) -> RawTable:
    """root/<class>/**/<image>, or root/{train,val,test}/<class>/**/<image> for a given split.
    Classes are the sorted folder names (as torchvision's ImageFolder); each file is its own group."""
    top = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = set(top) & set(SPLIT_ALIASES)
    if split_dirs and set(top) - set(SPLIT_ALIASES):
        raise UserError(f"{root} mixes split folders ({', '.join(sorted(split_dirs))}) with class folders; use root/<class>/ or root/<split>/<class>/")
    bases = [(d, SPLIT_ALIASES[d]) for d in top] if split_dirs else [("", None)]
    if split_dirs and {SPLIT_ALIASES[d] for d in top} != {"train", "val", "test"}:
        raise UserError(f"{root} has split folders {', '.join(top)}; give all of train, val and test (or no split folders, and medpeft splits)")
    records, classes = [], set()
    for base, split in bases:
        base_dir = root / base if base else root
        for cls_dir in sorted(p for p in base_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            classes.add(cls_dir.name)
            for path in sorted(cls_dir.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    rel = path.relative_to(root).as_posix()
                    records.append(RawRecord(id=rel, path=rel, label=cls_dir.name, group=rel, split=split))
    if not records:
        raise UserError(f"no images found under {root}; an ImageFolder tree is root/<class>/<image>.png|jpg|dcm")
    return RawTable(records, class_names=sorted(classes))


def _read_manifest_rows(path: Path) -> list[dict[str, str]]:
    if path.suffix.lower() == ".parquet":
        import duckdb

        try:
            con = duck.connect()
            cur = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
            names = [d[0] for d in cur.description]
            rows = [{n: "" if v is None else str(v).strip() for n, v in zip(names, values)} for values in cur.fetchall()]
            con.close()
        except duckdb.Error as exc:
            raise UserError(f"cannot read {path} as Parquet ({exc}); write the manifest as CSV or Parquet") from None
        return rows
    return read_table(path)


def read_manifest(manifest: Path, classes: list[str] | None = None) -> tuple[Path, RawTable]:
    """A CSV/Parquet manifest with columns path, label[, group][, split][, id]; other columns are kept
    as metadata. Paths are relative to the manifest's folder, which is the raw root."""
    root = manifest.parent
    rows = _read_manifest_rows(manifest)
    require_columns(rows, ["path", "label"], manifest)
    has_split = "split" in rows[0]
    extra = [c for c in rows[0] if c not in ("path", "label", "group", "split", "id")]
    reserved = [c for c in extra if c in ("index", "label_name")]
    if reserved:
        raise UserError(f"{manifest}: column name(s) {', '.join(reserved)} are reserved by medpeft's manifest; rename them")
    records = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{manifest.name} row {i}"
        rel = safe_relative(root, row["path"], where)
        split = None
        if has_split and row["split"]:  # empty: no split given for this row
            split = SPLIT_ALIASES.get(row["split"].lower())
            if split is None:
                raise UserError(f"{where}: split {row['split']!r} is not train, val or test; fix the manifest")
        if not row["label"]:
            raise UserError(f"{where}: the label of {rel!r} is empty; give every row a label (or leave the row out of the manifest)")
        sample_id = row.get("id") or rel
        records.append(RawRecord(id=sample_id, path=rel, label=row["label"], group=row.get("group") or sample_id, meta={c: row[c] for c in extra}, split=split))
    names = classes if classes else sorted({r.label for r in records})
    return root, RawTable(records, class_names=names, group_by="group" if "group" in rows[0] else None)
