"""Fake raw downloads in each dataset's published layout (tiny, deterministic): the files `medpeft
datasets prepare` reads. `make_<name>(root)` writes one under root and returns facts to check against
(e.g. the total image count); `image`, `write_csv`, `write_dicom` write single files.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
from PIL import Image


def image(path: Path, seed: int, size=(40, 30), mode="RGB") -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def write_csv(path: Path, header: list[str], rows: list[list], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_dicom(path: Path, pixels: np.ndarray, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None, sex="F", age="045Y", view="PA"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientSex, ds.PatientAge, ds.ViewPosition, ds.Modality = sex, age, view, "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---- one fixture builder per official layout --------------------------------------------------


def make_busi(root: Path) -> dict:
    base = root / "Dataset_BUSI_with_GT"
    n = {"normal": 6, "benign": 8, "malignant": 7}
    for cls, count in n.items():
        for i in range(1, count + 1):
            image(base / cls / f"{cls} ({i}).png", seed=hash((cls, i)) % 2**31, mode="L")
            image(base / cls / f"{cls} ({i})_mask.png", seed=1, mode="L")
            if i == 2:
                image(base / cls / f"{cls} ({i})_mask_1.png", seed=2, mode="L")
    return {"total": sum(n.values()), "classes": ["normal", "benign", "malignant"]}


FITZ_HEADER = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label", "three_partition_label", "qc", "url", "url_alphanum"]
FITZ_ROWS = [  # (condition, nine, three)
    ("psoriasis", "inflammatory", "non-neoplastic"),
    ("melanoma", "malignant melanoma", "malignant"),
    ("dermatofibroma", "benign dermal", "benign"),
    ("basal cell carcinoma", "malignant epidermal", "malignant"),
]


def make_fitzpatrick(root: Path) -> dict:
    rows = []
    for i in range(40):
        cond, nine, three = FITZ_ROWS[i % 4]
        md5 = f"{i:032x}"
        skin = [1, 2, 3, 4, 5, 6, -1][i % 7]
        rows.append([md5, skin, skin, cond, nine, three, "", f"https://example.org/{i}.jpg", f"x{i}.jpg"])
        image(root / "images" / f"{md5}.jpg", seed=i)
    write_csv(root / "fitzpatrick17k.csv", FITZ_HEADER, rows)
    return {"total": 40}


def make_ham10000(root: Path) -> dict:
    dx = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows, lesions = [], {}
    k = 0
    for lesion in range(35):
        n_images = 1 + lesion % 3  # several images of one lesion
        for _ in range(n_images):
            image_id = f"ISIC_{24306 + k:07d}"
            part = "HAM10000_images_part_1" if k % 2 else "HAM10000_images_part_2"
            image(root / part / f"{image_id}.jpg", seed=k, size=(60, 45))
            rows.append([f"HAM_{lesion:07d}", image_id, dx[lesion % 7], "histo", f"{20 + lesion * 2}.0", ["male", "female", "unknown"][lesion % 3], ["back", "face", "unknown"][lesion % 3]])
            lesions[image_id] = f"HAM_{lesion:07d}"
            k += 1
    write_csv(root / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], rows)
    return {"total": k, "lesions": lesions}


def make_smdg(root: Path) -> dict:
    rows, suspects = [], 0
    for i in range(30):
        prefix = ["BEH", "ORIGA", "REFUGE1"][i % 3]
        name = f"{prefix}-{i}"
        kind = -1 if i % 10 == 9 else i % 2
        suspects += kind == -1
        image(root / "full-fundus" / "full-fundus" / f"{name}.png", seed=i)  # the Kaggle zip's nesting
        rows.append([name, kind, f"/full-fundus/{name}.png", "", ""])
    write_csv(root / "metadata - standardized.csv", ["names", "types", "fundus", "fundus_oc_seg", "fundus_od_seg"], rows)
    return {"total": 30 - suspects, "suspects": suspects}


def make_rsna(root: Path) -> dict:
    rows = []
    rng = np.random.default_rng(0)
    for i in range(24):
        pid = f"{i:08x}-0000-0000-0000-000000000000"
        target = i % 3 == 0
        if target:  # one row per box, two boxes for some
            rows += [[pid, 10, 20, 30, 40, 1]] * (1 + i % 2)
        else:
            rows.append([pid, "", "", "", "", 0])
        pixels = rng.integers(0, 4096, (48, 40))
        write_dicom(
            root / "stage_2_train_images" / f"{pid}.dcm", pixels, photometric="MONOCHROME1" if i % 4 == 0 else "MONOCHROME2",
            slope=1.0, intercept=-1024.0 if i % 2 else 0.0, window=(1000, 3000) if i % 5 == 0 else None,
            sex="M" if i % 2 else "F", age=f"{20 + i * 3:03d}Y", view="AP" if i % 3 else "PA",
        )
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    return {"total": 24, "positives": 8}


def make_mimic(root: Path) -> dict:
    meta, split, k = [], [], 0
    for s in range(12):
        sid = str(10000032 + s * 1000)
        official = ["train", "train", "validate", "test"][s % 4]
        for st in range(2):
            study = str(50000000 + s * 10 + st)
            folder = root / "files" / f"p{sid[:2]}" / f"p{sid}"
            report = "FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS: Clear lungs.\n\n"
            if not (s == 5 and st == 1):  # one study without an impression
                report += f" IMPRESSION: \n No acute process {s}-{st}.\n\n RECOMMENDATION(S): none\n"
            (root / "mimic-cxr-reports" / "files" / f"p{sid[:2]}" / f"p{sid}").mkdir(parents=True, exist_ok=True)
            (root / "mimic-cxr-reports" / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}.txt").write_text(report)
            for view in ("PA", "LATERAL"):
                dicom_id = f"d{k:06d}"
                image(folder / f"s{study}" / f"{dicom_id}.jpg", seed=k, mode="L", size=(50, 60))
                meta.append([dicom_id, sid, study, "CHEST", view, 60, 50])
                split.append([dicom_id, study, sid, official])
                k += 1
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"], meta, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split, gz=True)
    return {"total": 12 * 2 - 1, "lateral": 24, "no_impression": 1}
