"""The dataset registry (datasets.yaml): contents, lookups and validation errors."""

from pathlib import Path

import pytest
import yaml

from medpeft_cli.data import default_data_dir, get_dataset_entry, list_datasets, load_dataset
from medpeft_cli.data.registry import MedMNISTEntry, SyntheticEntry, default_registry_path, read_registry
from medpeft_cli.errors import UserError

REPO_YAML = Path(__file__).resolve().parents[1] / "datasets.yaml"


def test_packaged_registry_is_the_repo_file():
    assert default_registry_path().read_text() == REPO_YAML.read_text()


def test_list_datasets_names_in_file_order():
    names = [e.name for e in list_datasets()]
    assert names[:2] == ["synthetic-lesions", "breastmnist"]
    assert len(names) == len(set(names))
    raw_order = [d["name"] for d in yaml.safe_load(REPO_YAML.read_text())["datasets"]]
    assert names == raw_order


def test_every_entry_has_provenance():
    for entry in list_datasets():
        assert entry.license and entry.citation and entry.description and entry.modality
        assert entry.task == "multiclass" and len(entry.classes) >= 2


def test_breastmnist_entry():
    entry = get_dataset_entry("breastmnist")
    assert isinstance(entry, MedMNISTEntry)
    assert entry.classes == ["malignant", "normal, benign"]
    assert entry.md5 == "750601b1f35ba3300ea97c75c52ff8f6"
    assert entry.file == "breastmnist.npz" and entry.resolution == 28
    assert entry.license == "CC BY 4.0"
    assert "Scientific Data 10, 41 (2023)" in entry.citation
    assert "Data in Brief 28, 104863 (2020)" in entry.source_citation
    assert entry.download_url.startswith("https://zenodo.org/records/10519652/files/breastmnist.npz")


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
        (lambda r: r["datasets"][1].update(colour="red"), r"dataset 'breastmnist': unknown key 'colour'"),
        (lambda r: r["datasets"][0].pop("license"), r"dataset 'synthetic-lesions': missing key 'license'"),
        (lambda r: r["datasets"][1].update(kind="dicom-zip"), r"dataset 'breastmnist':.*'synthetic', 'medmnist'"),
        (lambda r: r["datasets"][1].update(md5="not-a-md5"), r"dataset 'breastmnist': md5:"),
        (lambda r: r["datasets"][1].update(name="synthetic-lesions"), r"repeated: synthetic-lesions"),
        (lambda r: r["datasets"][1].update(classes=["a", "a"]), r"class names must be unique"),
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
