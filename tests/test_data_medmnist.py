"""MedMNIST loading: the real BreastMNIST file, the search path, download and every user error."""

import shutil

import numpy as np
import pytest

from medpeft_cli.data import get_dataset_entry, load_dataset
from medpeft_cli.data.medmnist import file_md5, load_medmnist, load_medmnist_npz, verify_md5
from medpeft_cli.errors import UserError

ENTRY = get_dataset_entry("breastmnist")
SOURCE = ENTRY.at()  # the default (28 px) file, which ships inside the package
SHARED_DIR = SOURCE.packaged.parent


def _with(**changes):
    """ENTRY with its 28 px file's fields (download_url, md5) changed and no packaged copy (so it must be
    found in the data dir or downloaded)."""
    changes = {"packaged": False, **changes}
    return ENTRY.model_copy(update={"files": {**ENTRY.files, 28: ENTRY.files[28].model_copy(update=changes)}})


@pytest.fixture(scope="module")
def real_file():
    return SOURCE.packaged


def test_the_packaged_file_is_the_official_one():
    assert SOURCE.packaged.is_file() and SOURCE.packaged.name == "breastmnist.npz"
    assert file_md5(SOURCE.packaged) == "750601b1f35ba3300ea97c75c52ff8f6"  # the official MedMNIST MD5
    licence = (SOURCE.packaged.parent / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in licence and "doi:10.1038/s41597-022-01721-8" in licence


def test_packaged_copy_loads_offline_from_an_empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPEFT_OFFLINE", "1")
    bundle = load_dataset("breastmnist", tmp_path / "empty")
    assert str(SOURCE.packaged) in bundle.source and [len(bundle.splits[s]) for s in ("train", "val", "test")] == [546, 78, 156]
    assert not (tmp_path / "empty").exists()  # nothing downloaded or written


def test_a_file_in_the_data_dir_comes_before_the_packaged_copy(tmp_path):
    shutil.copyfile(SOURCE.packaged, tmp_path / SOURCE.file)
    assert str(tmp_path / SOURCE.file) in load_dataset("breastmnist", tmp_path, download=False).source


def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# --- the real file ------------------------------------------------------------------------------


def test_breastmnist_counts_and_arrays(real_file):
    bundle = load_dataset("breastmnist", SHARED_DIR, download=False)
    assert bundle.name == "breastmnist" and bundle.task == "multiclass" and bundle.num_classes == 2
    assert bundle.class_names == ["malignant", "normal, benign"]
    expected = {"train": (546, [147, 399]), "val": (78, [21, 57]), "test": (156, [42, 114])}
    for name, (n, per_class) in expected.items():
        split = bundle.splits[name]
        assert split.images.shape == (n, 28, 28, 3) and split.images.dtype == np.uint8
        assert split.labels.shape == (n,) and split.labels.dtype == np.int64
        assert np.bincount(split.labels, minlength=2).tolist() == per_class
        assert split.ids[0] == f"{name}-000000" and len(set(split.ids.tolist())) == n
        # grayscale repeated to 3 identical channels
        assert np.array_equal(split.images[..., 0], split.images[..., 2])
    assert "md5=750601b1f35ba3300ea97c75c52ff8f6" in bundle.source and str(real_file) in bundle.source


def test_breastmnist_md5_and_checksum_are_stable(real_file):
    verify_md5(real_file, SOURCE.md5)
    a = load_dataset("breastmnist", SHARED_DIR, download=False)
    b = load_dataset("breastmnist", SHARED_DIR, download=False)
    assert a.checksum == b.checksum and a.checksum.startswith("sha256:")


@pytest.mark.parametrize("layout", ["{file}", "breastmnist/{file}", "medmnist/{file}"])
def test_search_paths(real_file, tmp_path, layout):
    dest = tmp_path / layout.format(file=SOURCE.file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real_file, dest)
    bundle = load_dataset("breastmnist", tmp_path, download=False)
    assert str(dest.resolve()) in bundle.source and len(bundle.splits["train"]) == 546


def test_download_to_cache(real_file, tmp_path):
    entry = _with(**{"download_url": real_file.as_uri()})  # file:// stands in for Zenodo
    bundle = load_medmnist(entry, tmp_path, download=True)
    assert (tmp_path / "medmnist" / SOURCE.file).is_file()
    assert len(bundle.splits["test"]) == 156
    assert [p.name for p in (tmp_path / "medmnist").iterdir()] == [SOURCE.file]  # no temp files left


def test_download_with_wrong_md5_keeps_nothing(real_file, tmp_path):
    entry = _with(**{"download_url": real_file.as_uri(), "md5": "0" * 32})
    with pytest.raises(UserError, match="downloaded breastmnist.npz .* has MD5") as err:
        load_medmnist(entry, tmp_path, download=True)
    _one_line_error(err)
    assert list((tmp_path / "medmnist").iterdir()) == []


def test_changed_byte_fails_md5(real_file, tmp_path):
    data = bytearray(real_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / SOURCE.file).write_bytes(bytes(data))
    with pytest.raises(UserError, match="expected 750601b1f35ba3300ea97c75c52ff8f6 .*delete it") as err:
        load_dataset("breastmnist", tmp_path, download=False)
    _one_line_error(err)


# --- missing files and downloads that fail -----------------------------------------------------


def test_missing_file_without_download(tmp_path):
    with pytest.raises(UserError) as err:
        load_medmnist(_with(), tmp_path, download=False)
    msg = _one_line_error(err)
    assert "breastmnist.npz not found" in msg and "download is off" in msg and "--data-dir" in msg
    for searched in (tmp_path / "breastmnist.npz", tmp_path / "breastmnist" / "breastmnist.npz"):
        assert str(searched) in msg
    assert SOURCE.download_url in msg


def test_failed_download(tmp_path):
    entry = _with(**{"download_url": (tmp_path / "nowhere.npz").as_uri()})
    with pytest.raises(UserError, match="downloading it to .* failed") as err:
        load_medmnist(entry, tmp_path / "data", download=True)
    assert str(tmp_path / "data" / "medmnist" / "breastmnist.npz") in _one_line_error(err)


# --- content errors, on small hand-made files ----------------------------------------------------


def _npz(tmp_path, drop=(), labels=None, images=None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if images is None else images(n)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8) if labels is None else labels(n)
    for key in drop:
        del arrays[key]
    path = tmp_path / SOURCE.file
    np.savez(path, **arrays)
    return path, _with(**{"md5": file_md5(path)})


def test_small_valid_file(tmp_path):
    path, entry = _npz(tmp_path)
    bundle = load_medmnist(entry, tmp_path, download=False)
    assert bundle.splits["train"].images.shape == (8, 28, 28, 3)
    assert bundle.splits["val"].labels.dtype == np.int64


def test_rgb_images_are_kept(tmp_path):
    path, entry = _npz(tmp_path, images=lambda n: np.full((n, 28, 28, 3), 7, np.uint8))
    assert load_medmnist_npz(path, entry.at()).splits["test"].images.shape == (4, 28, 28, 3)


def test_missing_key(tmp_path):
    path, entry = _npz(tmp_path, drop=["val_labels"])
    with pytest.raises(UserError, match="lacks val_labels") as err:
        load_medmnist(entry, tmp_path, download=False)  # MD5 matches, so the content check speaks
    _one_line_error(err)


def test_label_out_of_range(tmp_path):
    path, entry = _npz(tmp_path, labels=lambda n: np.full((n, 1), 2, np.uint8))
    with pytest.raises(UserError, match=r"label 2 outside 0\.\.1") as err:
        load_medmnist_npz(path, entry.at())
    _one_line_error(err)


def test_multilabel_is_rejected(tmp_path):
    path, entry = _npz(tmp_path, labels=lambda n: np.zeros((n, 3), np.uint8))
    with pytest.raises(UserError, match="multi-label"):
        load_medmnist_npz(path, entry.at())


def test_wrong_resolution(tmp_path):
    path, entry = _npz(tmp_path, images=lambda n: np.zeros((n, 64, 64), np.uint8))
    with pytest.raises(UserError, match="64x64, but datasets.yaml says breastmnist is 28x28"):
        load_medmnist_npz(path, entry.at())


def test_not_an_npz(tmp_path):
    path = tmp_path / SOURCE.file
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(UserError, match=r"is not an \.npz \(zip\) file") as err:
        load_medmnist_npz(path, SOURCE)
    _one_line_error(err)


# --- prepare + verify on the real file ----------------------------------------------------------


def test_prepare_breastmnist_known_counts(real_file, tmp_path):
    from medpeft_cli.data.prepare import prepare
    from medpeft_cli.data.verify import verify_dataset

    result = prepare("breastmnist", SHARED_DIR, tmp_path)
    assert result.counts == {"train": [147, 399], "val": [21, 57], "test": [42, 114]}
    assert result.n_images == 780 and result.dirs == [tmp_path / "prepared" / "breastmnist" / "28"]
    report = verify_dataset("breastmnist", tmp_path)
    assert report.ok and {c.name for c in report.checks} >= {"official split sizes", "splits disjoint by group", "images.npy checksum"}
    prepared = load_dataset("breastmnist", tmp_path, download=False)
    official = load_dataset("breastmnist", SHARED_DIR, download=False)
    assert prepared.source.startswith("prepared ") and isinstance(prepared.splits["train"].images, np.memmap)
    # the same data either way: identical dataset and split checksums, so results stay comparable
    assert prepared.checksum == official.checksum and prepared.split_checksum == official.split_checksum
    for s in ("train", "val", "test"):
        assert np.array_equal(prepared.splits[s].images, official.splits[s].images)


def test_verify_the_official_file_without_preparing(real_file):
    from medpeft_cli.data.verify import verify_dataset

    report = verify_dataset("breastmnist", SHARED_DIR)
    assert report.ok and report.counts == {"train": [147, 399], "val": [21, 57], "test": [42, 114]}
    assert report.checks[0].name == "MD5 of the official file"


def test_prepare_needs_the_official_file(tmp_path):
    from medpeft_cli.data.prepare import prepare

    with pytest.raises(UserError, match="breastmnist.npz not found"):
        prepare("breastmnist", tmp_path, tmp_path / "data")
    assert not (tmp_path / "data" / "prepared").exists()


def test_resolutions_are_the_published_ones():
    assert sorted(ENTRY.files) == [28, 64, 128, 224]
    assert ENTRY.at(224).file == "breastmnist_224.npz" and ENTRY.at(224).md5 != SOURCE.md5
    with pytest.raises(UserError, match="no 32 px release; MedMNIST publishes it at 28, 64, 128, 224 px"):
        ENTRY.at(32)


def test_multilabel_chestmnist_is_not_trainable(tmp_path):
    with pytest.raises(UserError, match="chestmnist is a multilabel dataset .* single-label"):
        load_dataset("chestmnist", tmp_path, download=False)
