"""`prepare` on small fixtures that mimic each official raw layout (file names, CSV columns, DICOM
tags), then the loaded bundle: classes, counts, groups kept together, metadata, subgroups."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from raw_layouts import image, make_busi, make_fitzpatrick, make_ham10000, make_mimic, make_rsna, make_smdg

from medpeft_cli.data import load_dataset
from medpeft_cli.data.bundle import SPLIT_NAMES
from medpeft_cli.data.prepare import prepare
from medpeft_cli.data.splits import overlapping_groups
from medpeft_cli.data.verify import verify_dataset
from medpeft_cli.errors import UserError

RES = 16  # prepared resolution in these tests


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
