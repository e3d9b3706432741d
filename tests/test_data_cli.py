"""`medpeft datasets list/info/download/prepare/verify` and `train --shots/--class-weighting` on
prepared data with subgroups, end to end through the CLI."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import db_rows
from PIL import Image


def test_list_shows_every_dataset_and_how_to_get_it(cli):
    res = cli("datasets", "list")
    assert res.code == 0
    for name in ("synthetic-lesions", "breastmnist", "organsmnist", "busi", "fitzpatrick17k-114", "ham10000", "smdg", "rsna-pneumonia", "mimic-cxr"):
        assert name in res.stdout
    assert "credentialed" in res.stdout and "direct-download" in res.stdout and "registration" in res.stdout


def test_info_shows_licence_and_how_to_obtain(cli):
    res = cli("datasets", "info", "ham10000")
    assert res.code == 0 and "CC BY-NC 4.0" in res.stdout and "doi.org/10.7910/DVN/DBW86T" in res.stdout
    assert "lesion_id" in res.stdout and "prepared here: no" in res.stdout
    res = cli("datasets", "info", "pathmnist")
    assert "pathmnist_224.npz md5=2c51a510bcdc9cf8ddb2af93af1eadec" in res.stdout


def test_download_only_where_allowed(cli, tmp_path):
    res = cli("datasets", "download", "mimic-cxr")
    assert res.code == 2 and res.stderr.count("\n") == 1
    assert "medpeft cannot download mimic-cxr (credentialed)" in res.stderr and "physionet.org" in res.stderr
    assert cli("datasets", "download", "synthetic-lesions").code == 0
    offline = cli("datasets", "download", "breastmnist", "--resolution", "64", "--data-dir", tmp_path / "empty")
    assert offline.code == 2 and "download is off" in offline.stderr  # HF_HUB_OFFLINE=1 in tests
    shipped = cli("datasets", "download", "breastmnist", "--data-dir", tmp_path / "empty")  # 28 px ships with medpeft
    assert shipped.code == 0 and "750601b1f35ba3300ea97c75c52ff8f6 ok" in shipped.stdout.replace("\n", "")


def test_download_checks_a_present_file(cli, tmp_path, breastmnist_dir):
    (tmp_path / "d").mkdir()
    shutil.copyfile(breastmnist_dir / "breastmnist.npz", tmp_path / "d" / "breastmnist.npz")
    res = cli("datasets", "download", "breastmnist", "--data-dir", tmp_path / "d")
    assert res.code == 0 and "md5 750601b1f35ba3300ea97c75c52ff8f6 ok" in res.stdout


def test_prepare_and_verify_breastmnist(cli, tmp_path, breastmnist_dir):
    res = cli("datasets", "prepare", "breastmnist", "--raw", breastmnist_dir, "--data-dir", tmp_path / "d")
    assert res.code == 0, res.stderr
    assert "prepared breastmnist: 780 images, 2 classes" in res.stdout
    assert "train: 546 images, per class [147, 399]" in res.stdout and "test: 156 images, per class [42, 114]" in res.stdout
    ver = cli("datasets", "verify", "breastmnist", "--data-dir", tmp_path / "d")
    assert ver.code == 0 and "FAIL" not in ver.stdout and "official split sizes: 546/78/156" in ver.stdout
    again = cli("datasets", "prepare", "breastmnist", "--raw", breastmnist_dir, "--data-dir", tmp_path / "d")
    assert again.code == 2 and "--force" in again.stderr


def _subgroup_manifest(root):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(120):
        label = i % 2
        img = np.full((20, 20, 3), 60 + 120 * label, np.uint8) + rng.integers(0, 40, (20, 20, 3), dtype=np.uint8)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": ["benign", "malignant"][label], "group": f"pt{i // 2}", "sex": ["F", "M"][(i // 2) % 2]})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.slow
def test_train_on_prepared_data_records_shots_weighting_ece_and_subgroups(cli, tmp_path):
    _subgroup_manifest(tmp_path / "raw")
    prep = cli("datasets", "prepare", "lesions-sex", "--raw", tmp_path / "raw", "--from", "manifest", "--subgroups", "sex",
               "--resolution", "16", "--data-dir", tmp_path / "d")
    assert prep.code == 0, prep.stderr
    args = ["train", "--dataset", "lesions-sex", "--data-dir", tmp_path / "d", "--backbone", "test_vit", "--weights", "random", "--image-size", "32",
            "--epochs", "1", "--batch-size", "32", "--method", "linear", "-q", "--no-site", "--shots", "20", "--class-weighting", "sampler"]
    res = cli(*args)
    assert res.code == 0, res.stderr
    (row,) = db_rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["shots"] == 20 and row["train_images"] == 40 and row["class_weighting"] == "sampler"
    info = json.loads((tmp_path / "d" / "prepared" / "lesions-sex" / "16" / "info.json").read_text())
    assert row["split_checksum"] == info["split_checksum"] and row["dataset_checksum"] == info["dataset_checksum"]
    assert 0.0 <= row["test_ece"] <= 1.0
    subgroups = json.loads(row["metrics_json"])["test_subgroups"]
    assert set(subgroups["attributes"]["sex"]) == {"F", "M"}
    assert row["worst_group"] in ("sex=F", "sex=M") and row["worst_group_f1"] == pytest.approx(
        min(g["macro_f1"] for g in subgroups["attributes"]["sex"].values()))
    assert row["group_gap"] == pytest.approx(subgroups["group_gap"])
    spec = json.loads(row["spec_json"])
    assert spec["shots"] == 20 and spec["train"]["class_weighting"] == "sampler"
    # the other weighting is another run
    loss = cli(*args[:-1], "loss")
    assert loss.code == 0 and len(db_rows(tmp_path / "results" / "medpeft.duckdb")) == 2


def test_bad_class_weighting_is_one_error(cli):
    res = cli("train", "--class-weighting", "oversample", "-q", "--no-site")
    assert res.code == 2 and "train.class_weighting" in res.stderr


def test_new_fields_leave_existing_run_keys_alone():
    from medpeft_cli.config import build_spec, run_key

    plain = build_spec(flags={"seed": 1})
    spelled = build_spec(flags={"seed": 1, "train.class_weighting": "none"})
    assert run_key(plain) == run_key(spelled)
    assert "shots" not in plain.key_fields() and "class_weighting" not in plain.key_fields()["train"]
    assert run_key(build_spec(flags={"seed": 1, "shots": 5})) != run_key(plain)
    assert run_key(build_spec(flags={"seed": 1, "train.class_weighting": "loss"})) != run_key(plain)


@pytest.mark.slow
def test_text_to_image_data_is_refused_by_train(cli, tmp_path):
    from raw_layouts import make_mimic

    make_mimic(tmp_path / "raw")
    assert cli("datasets", "prepare", "mimic-cxr", "--raw", tmp_path / "raw", "-r", "16", "--data-dir", tmp_path / "d").code == 0
    res = cli("train", "--dataset", "mimic-cxr", "--data-dir", tmp_path / "d", "--data-resolution", "16", "-q", "--no-site")
    assert res.code == 2 and "mimic-cxr is a text-to-image dataset" in res.stderr
