"""The run key covers what was loaded (issue 18): a weights file enters it by its content hash, not its
path. A changed file at the same path is a new run (never the old model's metrics "already finished");
the same file at another path is the same run; `eval` and `export` agree (they check the file's hash
against the run's, and take `--weights` for a moved copy). Also: eval/export of a run whose saved
adapter is missing or empty, `eval --split val` against the stored validation metrics, `eval --json`
without NaN, and exported files that follow the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from helpers import db_rows

from medpeft_cli.config import build_spec, run_key
from medpeft_cli.run.spec import resolve

ARGS = ["--dataset", "synthetic-lesions", "--backbone", "test_vit", "--method", "lora", "--image-size", "32", "--epochs", "1",
        "--data-fraction", "0.2", "--batch-size", "64", "-q", "--no-site"]  # fmt: skip
DB = Path("results/medpeft.duckdb")


def save_weights(path: Path, seed: int) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    save_file(timm.create_model("test_vit", img_size=32, num_classes=4).state_dict(), str(path))
    return path


def key_of(weights: str | Path) -> str:
    return run_key(resolve(build_spec(None, {"dataset": "synthetic-lesions", "backbone": "test_vit", "method": "lora", "image_size": 32, "weights": str(weights)}))[0])


def one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith("medpeft: error: "), (res.code, res.stderr)
    return lines[0]


# ---- the key, without training -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_weights_file_enters_the_key_by_its_content(tmp_path):
    a = save_weights(tmp_path / "a.safetensors", seed=0)
    first = key_of(a)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(a, tmp_path / "elsewhere" / "renamed.pth")
    assert key_of(tmp_path / "elsewhere" / "renamed.pth") == first  # same bytes, other path: the same run
    save_weights(a, seed=1)
    assert key_of(a) != first  # other bytes, same path: a new run
    spec = build_spec(None, {"weights": str(a)})
    assert str(a) not in json.dumps(spec.key_fields()) and spec.key_fields()["weights"].startswith("file sha256:")


def test_a_missing_weights_file_is_one_line_before_any_work(cli, tmp_path):
    line = one_error_line(cli("train", *ARGS, "--weights", "nothere.safetensors"))
    assert "'nothere.safetensors' not understood" in line and "does not exist" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_keys_of_random_and_pretrained_runs_did_not_change():
    """Keys computed by medpeft before weights files were hashed (commit c2b6ff6's code): unchanged."""
    flags = {"dataset": "breastmnist", "backbone": "cifar_resnet20", "image_size": 32, "method": "bn", "train.epochs": 30,
             "train.batch_size": 32, "train.lr": 0.001, "seed": 0, "data_fraction": 1.0}  # fmt: skip
    keys = {w: run_key(resolve(build_spec(None, {**flags, "weights": w}))[0]) for w in ("random", "pretrained")}
    assert keys == {"random": "67cb5a7e362724cf", "pretrained": "f8df39bb5b5c7264"}


# ---- train, eval and export agree ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One lora run of test_vit from the weights file w.safetensors: (folder, run key)."""
    from medpeft_cli.cli import main

    root = tmp_path_factory.mktemp("trust-runkey")
    save_weights(root / "w.safetensors", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        try:
            main(["train", *ARGS, "--weights", "w.safetensors"])
        except SystemExit as done:
            assert done.code in (0, None)
    [row] = db_rows(root / DB)
    return root, row["run_key"]


@pytest.fixture
def here(trained, tmp_path, cli):
    """A copy of the trained folder as the working directory: (run key, cli)."""
    root, key = trained
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return key, cli


@pytest.mark.slow
def test_changed_weights_file_is_a_new_run_and_a_moved_one_the_same(here):
    key, cli = here
    shutil.copy("w.safetensors", "moved.safetensors")
    again = cli("train", *ARGS, "--weights", "moved.safetensors")
    assert again.code == 0 and f"run {key} is already finished" in again.stdout, again.stderr

    save_weights(Path("w.safetensors"), seed=1)  # other weights at the same path
    changed = cli("train", *ARGS, "--weights", "w.safetensors")
    assert changed.code == 0 and "already finished" not in changed.stdout, changed.stderr
    keys = [r["run_key"] for r in db_rows(DB)]
    assert len(keys) == 2 and key in keys
    sources = {r["run_key"]: r["weights_source"] for r in db_rows(DB)}
    assert sources[key].split("sha256:")[1][:64] != sources[next(k for k in keys if k != key)].split("sha256:")[1][:64]

    # eval of the first run agrees: the file at its path is no longer the one it was trained on
    line = one_error_line(cli("eval", f"runs/{key}"))
    assert f"weights file w.safetensors (sha256 " in line and f"is not the file run {key} was trained on" in line and "--weights FILE" in line
    ok = cli("eval", f"runs/{key}", "--weights", "moved.safetensors", "--json")
    assert ok.code == 0 and json.loads(ok.stdout)["matches_stored"] is True, ok.stderr


@pytest.mark.slow
def test_eval_val_split_is_compared_with_the_stored_validation_metrics(here):
    key, cli = here
    res = cli("eval", f"runs/{key}", "--split", "val", "--json")
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"eval --json printed {c}"))
    stored_val = json.loads(Path(f"runs/{key}/metrics.json").read_text())["val"]
    assert result["stored"]["macro_f1"] == stored_val["macro_f1"] and result["matches_stored"] is True
    table = cli("eval", f"runs/{key}", "--split", "val")
    assert "matches the stored val metrics" in table.stdout
    train_split = cli("eval", f"runs/{key}", "--split", "train")
    assert "stored: training stores no metrics of the train split" in train_split.stdout


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty", "missing", "garbage"])
def test_eval_and_export_of_a_run_with_a_damaged_adapter_are_one_line(here, damage):
    key, cli = here
    adapter = Path(f"runs/{key}/adapter/adapter_model.safetensors")
    if damage == "missing":
        adapter.unlink()
    else:
        adapter.write_bytes(b"" if damage == "empty" else b"not a safetensors file at all")
    expected = {"empty": "adapter_model.safetensors is empty", "missing": "has no adapter/adapter_model.safetensors", "garbage": "is not a valid safetensors file"}[damage]
    for command in (["eval", f"runs/{key}"], ["export", f"runs/{key}", "--merge", "--out", "m.safetensors"]):
        line = one_error_line(cli(*command))
        assert expected in line and "rerun the run with --force" in line
    assert not Path("m.safetensors").exists()


@pytest.mark.slow
def test_exported_file_follows_the_umask(here):
    key, cli = here
    old = os.umask(0o022)
    try:
        res = cli("export", f"runs/{key}", "--merge", "--out", "out/m.safetensors")
    finally:
        os.umask(old)
    assert res.code == 0, res.stderr
    assert stat.S_IMODE(Path("out/m.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE(Path(f"runs/{key}/adapter/adapter_model.safetensors").stat().st_mode) == 0o644  # written by train
