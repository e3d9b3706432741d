"""The dataset registry (datasets.yaml): contents, lookups and validation errors."""

from pathlib import Path

import pytest
import yaml

from medpeft_cli.data import default_data_dir, get_dataset_entry, list_datasets, load_dataset
from medpeft_cli.data.registry import MedMNISTEntry, PreparedEntry, SyntheticEntry, default_registry_path, read_registry
from medpeft_cli.errors import UserError

REPO_YAML = Path(__file__).resolve().parents[1] / "datasets.yaml"


def test_packaged_registry_is_the_repo_file():
    assert default_registry_path().read_text() == REPO_YAML.read_text()


def test_list_datasets_names_in_file_order():
    names = [e.name for e in list_datasets()]
    assert names[0] == "synthetic-lesions" and "breastmnist" in names
    assert len(names) == len(set(names))
    raw_order = [d["name"] for d in yaml.safe_load(REPO_YAML.read_text())["datasets"]]
    assert names == raw_order


def test_every_entry_has_provenance():
    for entry in list_datasets():
        assert entry.license and entry.citation and entry.description and entry.modality and entry.access
        if entry.task == "text-to-image":
            pass  # captions are the target; classes are optional
        elif getattr(entry, "classes_from_data", False):
            assert entry.expected_classes and entry.expected_classes >= 2
        else:
            assert len(entry.classes) >= 2


ISSUE_DATASETS = ["busi", "fitzpatrick17k", "fitzpatrick17k-9", "fitzpatrick17k-114", "ham10000", "smdg", "rsna-pneumonia", "mimic-cxr"]
MEDMNIST_2D = ["pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
               "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"]


def test_all_issue_datasets_are_registered():
    names = {e.name for e in list_datasets()}
    assert set(ISSUE_DATASETS) | set(MEDMNIST_2D) | {"synthetic-lesions"} <= names


@pytest.mark.parametrize("name", ISSUE_DATASETS)
def test_manual_datasets_say_how_to_get_them(name):
    entry = get_dataset_entry(name)
    assert isinstance(entry, PreparedEntry)
    assert entry.access in ("manual-download", "registration", "credentialed")
    assert "http" in entry.how_to_obtain and entry.raw_layout and entry.url


def test_grouping_and_subgroups_where_the_data_has_them():
    assert get_dataset_entry("ham10000").group_by == "lesion_id"
    assert get_dataset_entry("rsna-pneumonia").group_by == "patientId"
    assert get_dataset_entry("mimic-cxr").group_by == "subject_id" and get_dataset_entry("mimic-cxr").official_split
    assert get_dataset_entry("mimic-cxr").access == "credentialed"
    assert get_dataset_entry("fitzpatrick17k").subgroups == ["fitzpatrick"]
    assert set(get_dataset_entry("ham10000").subgroups) == {"sex", "age_bin", "site"}


@pytest.mark.parametrize("name", MEDMNIST_2D)
def test_medmnist_plus_files(name):
    entry = get_dataset_entry(name)
    assert isinstance(entry, MedMNISTEntry) and sorted(entry.files) == [28, 64, 128, 224]
    for res, f in entry.files.items():
        assert f.file == (f"{name}.npz" if res == 28 else f"{name}_{res}.npz")
        assert f.download_url == f"https://zenodo.org/records/10519652/files/{f.file}?download=1"
    assert len({f.md5 for f in entry.files.values()}) == 4


def test_medmnist_md5s_are_the_official_ones():
    # spot checks against the `medmnist` package's INFO (v3.0.2)
    assert get_dataset_entry("pathmnist").files[28].md5 == "a8b06965200029087d5bd730944a56c1"
    assert get_dataset_entry("dermamnist").files[224].md5 == "8974907d8e169bef5f5b96bc506ae45d"
    assert get_dataset_entry("chestmnist").task == "multilabel"


def test_breastmnist_entry():
    entry = get_dataset_entry("breastmnist")
    assert isinstance(entry, MedMNISTEntry)
    assert entry.classes == ["malignant", "normal, benign"]
    assert entry.at().md5 == "750601b1f35ba3300ea97c75c52ff8f6"
    assert entry.at().file == "breastmnist.npz" and entry.resolution == 28
    assert (entry.split_sizes.train, entry.split_sizes.val, entry.split_sizes.test) == (546, 78, 156)
    assert entry.license == "CC BY 4.0"
    assert "Scientific Data 10, 41 (2023)" in entry.citation
    assert "Data in Brief 28, 104863 (2020)" in entry.source_citation
    assert entry.at().download_url.startswith("https://zenodo.org/records/10519652/files/breastmnist.npz")


def test_synthetic_entry():
    entry = get_dataset_entry("synthetic-lesions")
    assert isinstance(entry, SyntheticEntry)
    assert entry.seed == 0 and entry.image_size == 64 and len(entry.classes) >= 4


@pytest.mark.parametrize("lookup", [get_dataset_entry, load_dataset])
def test_unknown_dataset_lists_known_names(lookup):
    with pytest.raises(UserError) as err:
        lookup("no-such-set")
    msg = str(err.value)
    assert "no-such-set" in msg and "\n" not in msg
    for entry in list_datasets():
        assert entry.name in msg


def _entry(raw, name):
    return next(d for d in raw["datasets"] if d["name"] == name)


def _write_registry(tmp_path, mutate):
    raw = yaml.safe_load(REPO_YAML.read_text())
    mutate(raw)
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_read_registry_accepts_the_repo_file():
    assert [e.name for e in read_registry(REPO_YAML).datasets] == [e.name for e in list_datasets()]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: _entry(r, "breastmnist").update(colour="red"), r"dataset 'breastmnist': unknown key 'colour'"),
        (lambda r: _entry(r, "synthetic-lesions").pop("license"), r"dataset 'synthetic-lesions': missing key 'license'"),
        (lambda r: _entry(r, "breastmnist").update(kind="dicom-zip"), r"dataset 'breastmnist':.*'synthetic', 'medmnist'"),
        (lambda r: _entry(r, "breastmnist")["files"][28].update(md5="not-a-md5"), r"dataset 'breastmnist': files\.28\.md5:"),
        (lambda r: _entry(r, "breastmnist").update(resolution=32), r"dataset 'breastmnist': resolution 32 has no entry in files"),
        (lambda r: _entry(r, "rsna-pneumonia").pop("how_to_obtain"), r"dataset 'rsna-pneumonia': missing key 'how_to_obtain'"),
        (lambda r: _entry(r, "rsna-pneumonia").pop("classes"), r"dataset 'rsna-pneumonia': classes: list the class names"),
        (lambda r: _entry(r, "breastmnist").update(name="synthetic-lesions"), r"repeated: synthetic-lesions"),
        (lambda r: _entry(r, "breastmnist").update(classes=["a", "a"]), r"class names must be unique"),
        (lambda r: r.update(extra=1), r"unknown key 'extra'"),
    ],
)
def test_invalid_registry_is_one_clear_line(tmp_path, mutate, expected):
    path = _write_registry(tmp_path, mutate)
    with pytest.raises(UserError, match=expected) as err:
        read_registry(path)
    msg = str(err.value)
    assert str(path) in msg and "fix the file" in msg and "\n" not in msg


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "datasets.yaml"
    path.write_text("datasets:\n  - name: x\n    kind: [unclosed\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+"):
        read_registry(path)


def test_missing_registry_file(tmp_path):
    with pytest.raises(UserError, match="cannot read the dataset registry"):
        read_registry(tmp_path / "absent.yaml")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDPEFT_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("MEDPEFT_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "medpeft" / "data"


def test_data_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, medpeft_cli.data; assert 'torch' not in sys.modules, 'medpeft_cli.data imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
