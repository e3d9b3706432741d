"""End to end through the `medpeft` command: train -> DuckDB row -> eval -> report, listings."""

import json

import pytest
import torch
from helpers import TINY, db_rows

from medpeft_cli.report.runpage import run_href, shard


def rows(db="results/medpeft.duckdb"):
    return db_rows(db)


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from medpeft_cli.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_store_eval_report(cli, tmp_path):
    res = cli("train", *TINY, "--method", "lora", "--quiet")
    assert res.code == 0, res.stderr
    [row] = rows()
    key = row["run_key"]
    assert f"run_key {key}" in res.stdout and "site:" in res.stdout
    assert row["status"] == "ok" and row["method"] == "lora" and row["backbone"] == "test_vit"
    assert row["weights_source"] == "random-init (seed 0)"
    assert row["dataset_checksum"].startswith("sha256:") and row["backbone_checksum"].startswith("sha256:")
    assert row["torch_version"] == torch.__version__.split("+")[0] or row["torch_version"].startswith(torch.__version__.split("+")[0])
    assert row["trainable_params"] == 6 * (8 * 64 + 192 * 8) + 64 * 4 + 4 and row["total_params"] > row["trainable_params"]
    assert 0 <= row["test_macro_f1"] <= 1 and row["wall_time_s"] > 0 and row["train_images_per_s"] > 0
    assert row["train_images"] == 480  # 20 % of 2400, stratified
    run_dir = tmp_path / "runs" / key
    for name in ("spec.json", "metrics.json", "result.json", "predictions_test.csv", "train.log", "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert len((run_dir / "predictions_test.csv").read_text().splitlines()) == 600 + 1

    evaluated = cli("eval", f"runs/{key}", "--json")
    assert evaluated.code == 0, evaluated.stderr
    data = json.loads(evaluated.stdout)
    assert data["matches_stored"] is True
    assert data["metrics"]["macro_f1"] == pytest.approx(row["test_macro_f1"], abs=1e-9)
    assert data["metrics"]["auroc"] == pytest.approx(row["test_auroc"], abs=1e-6)

    site = cli("report", "--out", "site2")
    assert site.code == 0, site.stderr
    index = (tmp_path / "site2" / "index.html").read_text()
    assert "synthetic-lesions" in index and "lora" in index and run_href(key) in index
    assert f'id="{key}"' in (tmp_path / "site2" / "runs" / f"{shard(key)}.html").read_text()


@pytest.mark.slow
def test_rerun_is_skipped_and_force_replaces(cli):
    assert cli("train", *TINY, "--method", "linear", "-q", "--no-site").code == 0
    again = cli("train", *TINY, "--method", "linear", "-q", "--no-site")
    assert again.code == 0 and "already finished" in again.stdout
    assert len(rows()) == 1
    forced = cli("train", *TINY, "--method", "linear", "-q", "--no-site", "--force")
    assert forced.code == 0 and "already finished" not in forced.stdout
    assert len(rows()) == 1


@pytest.mark.slow
def test_bitfit_seed_and_config_with_override(cli, tmp_path):
    assert cli("train", *TINY, "--method", "bitfit", "--seed", "1", "-q", "--no-site").code == 0
    (tmp_path / "run.yaml").write_text("dataset: synthetic-lesions\nweights: random\nbackbone: test_vit\nimage_size: 32\ndata_fraction: 0.2\nmethod: {name: lora, rank: 16}\ntrain: {epochs: 1}\n")
    assert cli("train", "--config", "run.yaml", "--set", "method.rank=4", "-q", "--no-site").code == 0
    by_method = {r["method"]: r for r in rows()}
    assert by_method["bitfit"]["seed"] == 1
    assert json.loads(by_method["lora"]["spec_json"])["method"] == {"name": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["qkv"]}


@pytest.mark.slow
def test_store_rebuild_restores_every_row(cli, tmp_path):
    for method in ("linear", "bitfit"):
        assert cli("train", *TINY, "--method", method, "-q", "--no-site").code == 0
    before = {r["run_key"]: r["test_macro_f1"] for r in rows()}
    (tmp_path / "results" / "medpeft.duckdb").unlink()
    res = cli("store", "rebuild")
    assert res.code == 0 and "2 runs" in res.stdout
    assert {r["run_key"]: r["test_macro_f1"] for r in rows()} == before


def test_breastmnist_from_the_shared_file(cli, breastmnist_dir):
    res = cli("train", *TINY, "--dataset", "breastmnist", "--data-dir", breastmnist_dir, "--method", "linear", "-q", "--no-site")
    assert res.code == 0, res.stderr
    [row] = rows()
    assert row["num_classes"] == 2 and json.loads(row["class_names_json"]) == ["malignant", "normal, benign"]
    assert "md5=750601b1f35ba3300ea97c75c52ff8f6" in row["dataset_source"] or "breastmnist.npz" in row["dataset_source"]


# Bad input of every kind (one clear line, exit 2, nothing written): tests/test_bad_inputs.py.


def test_methods_and_datasets_listings(cli):
    methods = cli("methods")
    assert methods.code == 0 and all(m in methods.stdout for m in ("full", "linear", "bitfit", "lora"))
    datasets = cli("datasets")
    assert datasets.code == 0 and "synthetic-lesions" in datasets.stdout and "breastmnist" in datasets.stdout
    info = cli("datasets", "info", "breastmnist")
    assert info.code == 0 and "CC BY 4.0" in info.stdout
