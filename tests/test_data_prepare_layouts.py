"""`prepare` on small fixtures that mimic each official raw layout (file names, CSV columns, DICOM
tags), then the loaded bundle: classes, counts, groups kept together, metadata, subgroups."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpeft_cli.data import load_dataset
from medpeft_cli.data.bundle import SPLIT_NAMES
from medpeft_cli.data.prepare import prepare
from medpeft_cli.data.splits import overlapping_groups
from medpeft_cli.data.verify import verify_dataset
from medpeft_cli.errors import UserError

RES = 16  # prepared resolution in these tests


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


def _prepared(name, make, tmp_path, **kw):
    raw, data = tmp_path / "raw", tmp_path / "data"
    facts = make(raw)
    result = prepare(name, raw, data, [RES], **kw)
    return facts, result, data


def _assert_group_disjoint(bundle):
    groups = {s: (bundle.splits[s].groups if bundle.splits[s].groups is not None else bundle.splits[s].ids) for s in SPLIT_NAMES}
    assert overlapping_groups(groups) == {}


def _assert_images(bundle):
    for s in SPLIT_NAMES:
        images = bundle.splits[s].images
        assert images.dtype == np.uint8 and images.shape[1:] == (RES, RES, 3) and len(images) == len(bundle.splits[s])


def test_busi(tmp_path):
    facts, result, data = _prepared("busi", make_busi, tmp_path)
    bundle = load_dataset("busi", data, resolution=RES)
    assert bundle.class_names == facts["classes"]
    assert sum(len(bundle.splits[s]) for s in SPLIT_NAMES) == facts["total"]  # masks skipped
    ids = np.concatenate([bundle.splits[s].ids for s in SPLIT_NAMES])
    assert not any("mask" in i for i in ids)
    _assert_images(bundle)
    assert np.array_equal(bundle.splits["train"].images[..., 0], bundle.splits["train"].images[..., 1])  # grayscale
    assert verify_dataset("busi", data, RES).ok


@pytest.mark.parametrize("name, classes", [
    ("fitzpatrick17k", ["non-neoplastic", "benign", "malignant"]),
    ("fitzpatrick17k-9", None),
    ("fitzpatrick17k-114", ["basal cell carcinoma", "dermatofibroma", "melanoma", "psoriasis"]),
])
def test_fitzpatrick17k_label_sets(tmp_path, monkeypatch, name, classes):
    if name == "fitzpatrick17k-114":  # the fixture has 4 conditions, the real CSV 114
        from medpeft_cli.data import registry

        entry = registry.get_dataset_entry(name).model_copy(update={"expected_classes": 4})
        monkeypatch.setattr("medpeft_cli.data.prepare.get_dataset_entry", lambda n: entry)
    if name == "fitzpatrick17k-9":  # the fixture has 4 of the 9 partitions: give the others one image
        raw = tmp_path / "raw"
        make_fitzpatrick(raw)
        extra = [("x", p, "benign") for p in ("benign epidermal", "benign melanocyte", "genodermatoses", "malignant cutaneous lymphoma", "malignant dermal")]
        with open(raw / "fitzpatrick17k.csv", "a", newline="") as f:
            for j, (cond, nine, three) in enumerate(extra * 3):
                md5 = f"f{j:031x}"
                csv.writer(f).writerow([md5, 2, 2, cond, nine, three, "", "", ""])
                image(raw / "images" / f"{md5}.jpg", seed=100 + j)
        prepare(name, raw, tmp_path / "data", [RES])
        data = tmp_path / "data"
    else:
        _, _, data = _prepared(name, make_fitzpatrick, tmp_path)
    bundle = load_dataset(name, data, resolution=RES)
    if classes:
        assert bundle.class_names == classes
    assert bundle.subgroups == ("fitzpatrick",)
    skin = np.concatenate([bundle.splits[s].meta["fitzpatrick"] for s in SPLIT_NAMES])
    assert set(skin.tolist()) == {"1", "2", "3", "4", "5", "6", ""}  # -1 (unknown) -> ""
    _assert_images(bundle)


def test_fitzpatrick17k_114_needs_114_conditions(tmp_path):
    with pytest.raises(UserError, match="4 distinct labels, the registry expects 114"):
        _prepared("fitzpatrick17k-114", make_fitzpatrick, tmp_path)


def test_ham10000_grouped_by_lesion(tmp_path):
    facts, result, data = _prepared("ham10000", make_ham10000, tmp_path)
    bundle = load_dataset("ham10000", data, resolution=RES)
    assert bundle.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert sum(len(bundle.splits[s]) for s in SPLIT_NAMES) == facts["total"]
    _assert_group_disjoint(bundle)
    for s in SPLIT_NAMES:
        split = bundle.splits[s]
        assert [facts["lesions"][i] for i in split.ids] == split.groups.tolist()
    assert bundle.subgroups == ("sex", "age_bin", "site")
    meta = bundle.splits["train"].meta
    assert set(meta["sex"].tolist()) <= {"M", "F", ""} and "" in np.concatenate([bundle.splits[s].meta["site"] for s in SPLIT_NAMES])
    assert verify_dataset("ham10000", data, RES).ok


def test_smdg_leaves_out_suspects(tmp_path):
    facts, result, data = _prepared("smdg", make_smdg, tmp_path)
    bundle = load_dataset("smdg", data, resolution=RES)
    assert bundle.class_names == ["non-glaucoma", "glaucoma"]
    assert sum(len(bundle.splits[s]) for s in SPLIT_NAMES) == facts["total"]
    assert result.excluded == {"glaucoma suspect (types = -1)": facts["suspects"]}
    sites = set(np.concatenate([bundle.splits[s].meta["site"] for s in SPLIT_NAMES]).tolist())
    assert sites == {"BEH", "ORIGA", "REFUGE1"}


def test_rsna_pneumonia_dicom(tmp_path):
    facts, result, data = _prepared("rsna-pneumonia", make_rsna, tmp_path)
    bundle = load_dataset("rsna-pneumonia", data, resolution=RES)
    labels = np.concatenate([bundle.splits[s].labels for s in SPLIT_NAMES])
    assert len(labels) == facts["total"] and int(labels.sum()) == facts["positives"]  # boxes collapsed per patient
    _assert_group_disjoint(bundle)
    meta = {k: np.concatenate([bundle.splits[s].meta[k] for s in SPLIT_NAMES]) for k in ("sex", "age_bin", "view")}
    assert set(meta["sex"].tolist()) == {"M", "F"} and set(meta["view"].tolist()) == {"AP", "PA"}
    assert "20-39" in meta["age_bin"].tolist()
    assert bundle.subgroups == ("sex", "age_bin", "view")


def test_mimic_cxr_captions_and_official_split(tmp_path):
    facts, result, data = _prepared("mimic-cxr", make_mimic, tmp_path)
    bundle = load_dataset("mimic-cxr", data, resolution=RES)
    assert bundle.task == "text-to-image" and bundle.class_names == []
    n = sum(len(bundle.splits[s]) for s in SPLIT_NAMES)
    assert n == facts["total"]
    assert result.excluded == {"not a frontal view (LATERAL)": facts["lateral"], "report has no IMPRESSION section": facts["no_impression"]}
    caption = bundle.splits["train"].meta["caption"][0]
    assert caption.startswith("No acute process") and "RECOMMENDATION" not in caption
    # official split: subjects 0,1 (mod 4) train, 2 val, 3 test
    assert {g[-4:] for g in bundle.splits["val"].groups.tolist()} == {str(10000032 + s * 1000)[-4:] for s in (2, 6, 10)}
    _assert_group_disjoint(bundle)


def test_several_resolutions_from_one_decode(tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "data"
    make_busi(raw)
    result = prepare("busi", raw, data, [8, 24])
    a = load_dataset("busi", data, resolution=8)
    b = load_dataset("busi", data, resolution=24)
    assert a.splits["test"].images.shape[1:3] == (8, 8) and b.splits["test"].images.shape[1:3] == (24, 24)
    assert a.split_checksum == b.split_checksum == result.split_checksum
    assert a.splits["test"].ids.tolist() == b.splits["test"].ids.tolist()


def test_same_raw_data_same_split_and_checksums(tmp_path):
    raw = tmp_path / "raw"
    make_ham10000(raw)
    r1 = prepare("ham10000", raw, tmp_path / "d1", [RES])
    r2 = prepare("ham10000", raw, tmp_path / "d2", [RES], workers=1)
    assert r1.split_checksum == r2.split_checksum
    a, b = load_dataset("ham10000", tmp_path / "d1", resolution=RES), load_dataset("ham10000", tmp_path / "d2", resolution=RES)
    assert a.checksum == b.checksum
    r3 = prepare("ham10000", raw, tmp_path / "d3", [RES], seed=1)
    assert r3.split_checksum != r1.split_checksum


def test_not_prepared_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match=r"ham10000 is not prepared at 224 px.*Dataverse.*medpeft datasets prepare ham10000 --raw PATH") as err:
        load_dataset("ham10000", tmp_path)
    assert "\n" not in str(err.value)
