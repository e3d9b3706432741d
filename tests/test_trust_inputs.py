"""Validate before any work (issue 18): each case is one line on stderr, exit code 2 and nothing written.

ViT image sizes its patches do not divide; a prepared manifest whose labels leave its class list (train
and `datasets verify`); empty labels (never a hidden class ""); dataset names `prepare` cannot use (the
300-character name, the hint after an unknown dataset); `--raw` given MedMNIST's .npz file itself.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import BREASTMNIST_DIR
from PIL import Image

from medpeft_cli import duck
from medpeft_cli.errors import UserError

VIT = ["--backbone", "test_vit", "--weights", "random", "--method", "lora", "--epochs", "1", "-q"]


def one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith("medpeft: error: "), (res.code, res.stderr)
    return lines[0]


def nothing_but(root: Path, *names: str) -> None:
    assert sorted(p.name for p in root.iterdir()) == sorted(names)


def manifest_dataset(root: Path, labels: list[str], name: str = "manifest.csv") -> Path:
    """Images 0..n-1 with these labels, and a manifest.csv naming them."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / name, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for i, label in enumerate(labels):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"{i}.png")
            writer.writerow([f"{i}.png", label])
    return root / name


# ---- image size vs patch size -----------------------------------------------------------------------


@pytest.mark.parametrize(("size", "valid"), [(28, "16 or 32"), (40, "32 or 48"), (12, "16")])
def test_vit_image_size_not_a_multiple_of_the_patch_is_refused_before_any_work(cli, tmp_path, size, valid):
    line = one_error_line(cli("train", "--dataset", "synthetic-lesions", *VIT, "--image-size", str(size)))
    assert f"image size {size} is not a multiple of the 16x16 px patches of test_vit" in line
    assert f"use --image-size {valid} (any multiple of 16)" in line
    nothing_but(tmp_path)  # no run directory, no database, no failure record


def test_patch_size_check_leaves_cnns_and_padding_vits_alone():
    import timm

    from medpeft_cli.models.input_size import check_input_size, patch_size

    vit = timm.create_model("test_vit", img_size=32)
    assert patch_size(vit) == (16, 16)
    with pytest.raises(UserError, match="not a multiple"):
        check_input_size(vit, "vit", 28, "test_vit")
    check_input_size(vit, "vit", 48, "test_vit")
    check_input_size(vit, "cnn", 28, "test_vit")  # only transformers cut images into patches
    padded = timm.create_model("test_vit", img_size=32, dynamic_img_pad=True)
    assert patch_size(padded) is None
    check_input_size(padded, "vit", 28, "test_vit")


def test_cnn_takes_any_image_size():
    from medpeft_cli.models import shape_backbone

    assert shape_backbone("test_resnet", 28).family == "cnn"


# ---- labels ----------------------------------------------------------------------------------------


def test_empty_label_in_a_manifest_is_refused(cli, tmp_path):
    labels = ["a", "b"] * 10
    labels[5] = ""
    manifest_dataset(tmp_path / "raw", labels)
    line = one_error_line(cli("datasets", "prepare", "mine", "--raw", "raw/manifest.csv", "--from", "manifest", "--data-dir", "data", "-r", "16"))
    assert "manifest.csv row 7: the label of '5.png' is empty" in line
    assert not (tmp_path / "data").exists()


def test_empty_class_name_is_refused(cli, tmp_path):
    manifest_dataset(tmp_path / "raw", ["a", "b"] * 10)
    line = one_error_line(cli("datasets", "prepare", "mine", "--raw", "raw/manifest.csv", "--from", "manifest", "--classes", "a,,b", "--data-dir", "data", "-r", "16"))
    assert "holds an empty name" in line
    assert not (tmp_path / "data").exists()


def _prepare_then_edit(cli, tmp_path, edit) -> Path:
    manifest_dataset(tmp_path / "raw", ["a", "b"] * 15)
    res = cli("datasets", "prepare", "mine", "--raw", "raw/manifest.csv", "--from", "manifest", "--data-dir", "data", "-r", "32")
    assert res.code == 0, res.stderr
    folder = tmp_path / "data" / "prepared" / "mine" / "32"
    edit(folder)
    return folder


def _label_outside(folder: Path) -> None:
    path = folder / "manifest.parquet"
    con = duck.connect()
    con.execute(f"COPY (SELECT * REPLACE (CASE WHEN \"index\" = 3 THEN 5 ELSE label END AS label) FROM read_parquet('{path}')) TO '{path}.new' (FORMAT parquet)")
    con.close()
    Path(f"{path}.new").replace(path)


def _label_name_changed(folder: Path) -> None:
    info = json.loads((folder / "info.json").read_text())
    info["class_names"] = ["b", "a"]  # class order changed by hand: every label now means the other class
    (folder / "info.json").write_text(json.dumps(info))


def _hidden_empty_class(folder: Path) -> None:
    info = json.loads((folder / "info.json").read_text())
    info["class_names"] = ["", "a"]  # as a copy prepared before empty labels were refused
    (folder / "info.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [(_label_outside, "has label 5, outside the 2 classes a, b"), (_label_name_changed, "but label_name"), (_hidden_empty_class, "holds an empty name")],
    ids=["label-outside", "class-order-changed", "empty-class"],
)
@pytest.mark.parametrize("command", ["train", "verify"])
def test_prepared_labels_outside_the_class_list_are_one_line(cli, tmp_path, edit, expected, command):
    _prepare_then_edit(cli, tmp_path, edit)
    args = (["train", "--dataset", "mine", *VIT, "--image-size", "32"] if command == "train" else ["datasets", "verify", "mine"])
    line = one_error_line(cli(*args, "--data-dir", "data"))
    assert expected in line and "prepare the dataset again with --force" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


# ---- dataset names and --raw -----------------------------------------------------------------------


def test_a_300_character_name_is_one_line_and_leaves_no_folder(cli, tmp_path):
    manifest_dataset(tmp_path / "raw", ["a", "b"] * 10)
    name = "x" * 300
    line = one_error_line(cli("datasets", "prepare", name, "--raw", "raw/manifest.csv", "--from", "manifest", "--data-dir", "data"))
    assert "(300 characters) must be lower-case letters" in line and "at most 64 characters" in line
    assert not (tmp_path / "data").exists()
    assert "(300 characters)" in one_error_line(cli("train", "--dataset", name, "-q"))  # no file-system error either


@pytest.mark.parametrize("name", ["My_Data", "x" * 100, "-lead"])
def test_the_hint_after_an_unknown_dataset_names_a_name_prepare_accepts(cli, tmp_path, name):
    line = one_error_line(cli("train", "--dataset", name, "-q"))
    suggested = line.split("`medpeft datasets prepare ", 1)[1].split(" ", 1)[0]
    assert suggested != name
    manifest_dataset(tmp_path / "raw", ["a", "b"] * 10)
    res = cli("datasets", "prepare", suggested, "--raw", "raw/manifest.csv", "--from", "manifest", "--data-dir", "data", "-r", "16")
    assert res.code == 0, res.stderr


def test_raw_given_the_npz_file_itself(cli, tmp_path):
    npz = BREASTMNIST_DIR / "breastmnist.npz"
    res = cli("datasets", "prepare", "breastmnist", "--raw", str(npz), "--data-dir", "data")
    assert res.code == 0 and "prepared breastmnist: 780 images" in res.stdout, res.stderr
    shutil.copy(BREASTMNIST_DIR / "README.md", tmp_path / "notes.md")
    line = one_error_line(cli("datasets", "prepare", "breastmnist", "--raw", "notes.md", "--data-dir", "other", "--force"))
    assert "is a file, not one of breastmnist's official files (breastmnist.npz" in line
    assert not (tmp_path / "other").exists()
