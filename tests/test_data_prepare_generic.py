"""Generic sources (ImageFolder tree, CSV/Parquet manifest) and everything `prepare` must refuse:
unsafe paths, unknown labels, duplicate ids, empty classes, unreadable images; nothing half-written."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpeft_cli.data import load_dataset
from medpeft_cli.data.bundle import SPLIT_NAMES
from medpeft_cli.data.prepare import prepare
from medpeft_cli.data.verify import verify_dataset
from medpeft_cli.errors import UserError

RES = 16


def image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)


def imagefolder(root: Path, counts=None, splits=False) -> Path:
    counts = counts or {"cyst": 9, "mass": 12, "normal": 10}
    for s in (["train", "val", "test"] if splits else [""]):
        for cls, n in counts.items():
            for i in range(n):
                image(root / s / cls / f"img{i}.png", seed=hash((s, cls, i)) % 2**31)
    return root


def manifest(root: Path, rows: list[dict], name="manifest.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / name


def manifest_rows(root: Path, n=30) -> list[dict]:
    rows = []
    for i in range(n):
        rel = f"imgs/{i}.jpg"
        image(root / rel, seed=i)
        rows.append({"path": rel, "label": ["a", "b"][i % 2], "group": f"patient{i // 3}", "sex": ["F", "M"][i % 2], "site": f"s{i % 3}"})
    return rows


def nothing_written(data: Path, name: str) -> bool:
    """No folder for `name`, and no empty prepared/ folder left behind either."""
    root = data / "prepared"
    return not (root / name).exists() and (not root.exists() or any(root.iterdir()))


# ---- ImageFolder -----------------------------------------------------------------------------


def test_imagefolder_classes_and_split(tmp_path):
    raw = imagefolder(tmp_path / "raw")
    result = prepare("my-us", raw, tmp_path / "data", [RES], source="imagefolder")
    bundle = load_dataset("my-us", tmp_path / "data")  # the only prepared resolution
    assert bundle.class_names == ["cyst", "mass", "normal"]
    assert sum(len(bundle.splits[s]) for s in SPLIT_NAMES) == 31 == result.n_images
    for s in SPLIT_NAMES:
        assert np.all(np.bincount(bundle.splits[s].labels, minlength=3) > 0)
    assert verify_dataset("my-us", tmp_path / "data").ok


def test_imagefolder_with_split_folders_keeps_them(tmp_path):
    raw = imagefolder(tmp_path / "raw", {"a": 3, "b": 2}, splits=True)
    prepare("folds", raw, tmp_path / "data", [RES], source="imagefolder")
    bundle = load_dataset("folds", tmp_path / "data", resolution=RES)
    for s in SPLIT_NAMES:
        assert all(i.startswith(f"{s}/") for i in bundle.splits[s].ids) and len(bundle.splits[s]) == 5


def test_imagefolder_class_order_from_classes_option(tmp_path):
    raw = imagefolder(tmp_path / "raw")
    prepare("ordered", raw, tmp_path / "data", [RES], source="imagefolder", classes=["normal", "cyst", "mass"])
    assert load_dataset("ordered", tmp_path / "data").class_names == ["normal", "cyst", "mass"]


# ---- manifests -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_groups_metadata_subgroups(tmp_path, fmt):
    raw = tmp_path / "raw"
    rows = manifest_rows(raw)
    path = manifest(raw, rows)
    if fmt == "parquet":
        import duckdb

        con = duckdb.connect()
        con.execute(f"COPY (SELECT * FROM read_csv('{path}', all_varchar=true)) TO '{raw / 'manifest.parquet'}' (FORMAT parquet)")
        con.close()
        path.unlink()
        path = raw / "manifest.parquet"
    prepare("tab", path, tmp_path / "data", [RES], source="manifest", subgroups=["sex"])
    bundle = load_dataset("tab", tmp_path / "data")
    assert bundle.class_names == ["a", "b"] and bundle.subgroups == ("sex",)
    assert set(bundle.splits["train"].meta) == {"sex", "site"}
    groups = {s: set(bundle.splits[s].groups.tolist()) for s in SPLIT_NAMES}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    # every row's metadata travelled with its image
    for s in SPLIT_NAMES:
        for i, sex in zip(bundle.splits[s].ids, bundle.splits[s].meta["sex"], strict=True):
            assert sex == ["F", "M"][int(Path(i).stem) % 2]


def test_manifest_official_split_column(tmp_path):
    raw = tmp_path / "raw"
    rows = manifest_rows(raw, 12)
    for i, r in enumerate(rows):
        r["split"] = ["train", "train", "validation", "test"][(i // 3) % 4]
    prepare("given", manifest(raw, rows), tmp_path / "data", [RES], source="manifest")
    bundle = load_dataset("given", tmp_path / "data")
    assert [len(bundle.splits[s]) for s in SPLIT_NAMES] == [6, 3, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda rows, raw: rows[3].update(path="../outside.jpg"), r"path '\.\./outside\.jpg' is not a relative path inside the raw root"),
        (lambda rows, raw: rows[3].update(path="/etc/passwd"), r"path '/etc/passwd' is not a relative path inside"),
        (lambda rows, raw: rows[4].update(label="c"), r"has label 'c', which is not one of the classes a, b"),
        (lambda rows, raw: rows.append(dict(rows[0])), r"duplicate sample id 'imgs/0\.jpg'"),
        (lambda rows, raw: [r.update(label="a") for r in rows], r"class\(es\) b have no images in the raw data"),
        (lambda rows, raw: [r.update(split="train") for r in rows[:5]], r"some samples have a split and others"),
        (lambda rows, raw: [r.update(split=["train", "test"][i % 2]) for i, r in enumerate(rows)], r"group 'patient0' has samples in both train and test"),
    ],
    ids=["dotdot", "absolute", "unknown-label", "duplicate-id", "empty-class", "partial-split", "group-leak"],
)
def test_manifest_errors_write_nothing(tmp_path, change, message):
    raw = tmp_path / "raw"
    rows = manifest_rows(raw, 12)
    change(rows, raw)
    if "split" in rows[-1] or "split" in rows[0]:
        for r in rows:
            r.setdefault("split", "")
    with pytest.raises(UserError, match=message) as err:
        prepare("bad", manifest(raw, rows), tmp_path / "data", [RES], source="manifest", classes=["a", "b"])
    assert "\n" not in str(err.value)
    assert nothing_written(tmp_path / "data", "bad")


def test_symlink_escaping_the_root_is_refused(tmp_path):
    raw = tmp_path / "raw"
    rows = manifest_rows(raw, 6)
    image(tmp_path / "elsewhere" / "x.jpg", seed=9)
    os.symlink(tmp_path / "elsewhere", raw / "link")
    rows[0]["path"] = "link/x.jpg"
    with pytest.raises(UserError, match="leads outside the raw root"):
        prepare("sym", manifest(raw, rows), tmp_path / "data", [RES], source="manifest")


# ---- unreadable images -----------------------------------------------------------------------


def _corrupt(raw: Path) -> list[str]:
    (raw / "mass" / "img3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    truncated = (raw / "cyst" / "img1.png").read_bytes()
    (raw / "cyst" / "img1.png").write_bytes(truncated[: len(truncated) // 2])
    return ["cyst/img1.png", "mass/img3.png"]


def test_unreadable_images_fail_with_their_paths(tmp_path):
    raw = imagefolder(tmp_path / "raw")
    bad = _corrupt(raw)
    with pytest.raises(UserError, match=r"2 of 31 images are missing or unreadable") as err:
        prepare("broken", raw, tmp_path / "data", [RES], source="imagefolder")
    msg = str(err.value)
    assert all(p in msg for p in bad) and "--skip-corrupt" in msg and "\n" not in msg
    assert nothing_written(tmp_path / "data", "broken")


def test_skip_corrupt_records_the_count(tmp_path):
    import json

    raw = imagefolder(tmp_path / "raw")
    bad = _corrupt(raw)
    result = prepare("broken", raw, tmp_path / "data", [RES], source="imagefolder", skip_corrupt=True)
    assert [p for p, _ in result.skipped] == bad and result.n_images == 29
    info = json.loads((tmp_path / "data" / "prepared" / "broken" / str(RES) / "info.json").read_text())
    assert info["skipped_unreadable"] == {"count": 2, "paths": bad}
    bundle = load_dataset("broken", tmp_path / "data")
    ids = np.concatenate([bundle.splits[s].ids for s in SPLIT_NAMES]).tolist()
    assert not set(bad) & set(ids) and len(ids) == 29


def test_missing_image_is_reported_like_a_corrupt_one(tmp_path):
    raw = tmp_path / "raw"
    rows = manifest_rows(raw, 9)
    (raw / rows[2]["path"]).unlink()
    with pytest.raises(UserError, match=r"imgs/2\.jpg \(file not found\)"):
        prepare("gone", manifest(raw, rows), tmp_path / "data", [RES], source="manifest")


# ---- re-preparing ----------------------------------------------------------------------------


def test_existing_needs_force_and_force_replaces(tmp_path):
    raw = imagefolder(tmp_path / "raw")
    first = prepare("again", raw, tmp_path / "data", [RES], source="imagefolder")
    with pytest.raises(UserError, match="already prepared.*--force"):
        prepare("again", raw, tmp_path / "data", [RES], source="imagefolder")
    second = prepare("again", raw, tmp_path / "data", [RES], source="imagefolder", force=True, seed=3)
    assert second.split_checksum != first.split_checksum
    assert load_dataset("again", tmp_path / "data").split_checksum == second.split_checksum
    assert sorted(p.name for p in (tmp_path / "data" / "prepared" / "again").iterdir()) == [str(RES)]  # no temp/old dirs


def test_verify_detects_a_changed_image(tmp_path):
    raw = imagefolder(tmp_path / "raw")
    prepare("tamper", raw, tmp_path / "data", [RES], source="imagefolder")
    images = np.load(tmp_path / "data" / "prepared" / "tamper" / str(RES) / "images.npy", mmap_mode="r+")
    images[0, 0, 0, 0] ^= 0xFF
    images.flush()
    del images
    report = verify_dataset("tamper", tmp_path / "data")
    assert not report.ok and {c.name for c in report.failures()} == {"images.npy checksum", "dataset checksum"}


def test_split_file_edited_by_hand_is_refused(tmp_path):
    import json

    raw = imagefolder(tmp_path / "raw")
    prepare("edited", raw, tmp_path / "data", [RES], source="imagefolder")
    path = tmp_path / "data" / "prepared" / "edited" / str(RES) / "splits.json"
    doc = json.loads(path.read_text())
    doc["splits"]["test"].append(doc["splits"]["train"].pop())
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="edited or damaged"):
        load_dataset("edited", tmp_path / "data")


def test_user_names_and_registry_names(tmp_path):
    raw = imagefolder(tmp_path / "raw")
    with pytest.raises(UserError, match="pass --from imagefolder or --from manifest"):
        prepare("mine", raw, tmp_path / "data", [RES])
    with pytest.raises(UserError, match="registry dataset with a fixed layout"):
        prepare("busi", raw, tmp_path / "data", [RES], source="imagefolder")
    with pytest.raises(UserError, match="must be lower-case"):
        prepare("My Data", raw, tmp_path / "data", [RES], source="imagefolder")
    with pytest.raises(UserError, match="generated by medpeft"):
        prepare("synthetic-lesions", raw, tmp_path / "data", [RES])
