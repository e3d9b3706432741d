"""The bad-input catalogue: every case ends with exit code 2 and exactly one line on stderr starting
`medpeft: error:` that says what is wrong and what to do, and writes nothing (no database row, no
run directory, no site, no prepared data, no file changed).

Each case is (id, setup, expected text in the line): `setup(tmp_path, env)` prepares files in the
working directory and returns the command line. docs/reliability.md lists the messages.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import hold_until_killed

BASE = ["train", "--dataset", "synthetic-lesions", "--backbone", "test_vit", "--weights", "random", "--method", "lora", "--image-size", "32", "--epochs", "1", "-q"]
KEY_FLAGS = {"dataset": "synthetic-lesions", "backbone": "test_vit", "weights": "random", "method": "lora", "image_size": 32, "train.epochs": 1}


def train(*args):
    return lambda p, env: [*BASE, *args]


def run_key_of(flags: dict) -> str:
    from medpeft_cli.config import build_spec, run_key
    from medpeft_cli.run import resolve

    return run_key(resolve(build_spec(None, flags))[0])


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def png(path: Path, color: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), color, dtype=np.uint8)).save(path)


# ---- setups that need files ---------------------------------------------------------------------


def bad_yaml(p, env):
    write(p / "bad.yaml", "method: [lora\n")
    return [*BASE, "--config", "bad.yaml"]


def yaml_typo(p, env):
    write(p / "run.yaml", "backbone: test_vit\ntrain: {epoch: 3}\n")
    return [*BASE, "--config", "run.yaml"]


def wrong_md5(p, env):
    write(p / "bad" / "breastmnist.npz", b"PK\x03\x04 definitely not the official file")
    return [*BASE, "--dataset", "breastmnist", "--data-dir", "bad"]


def pickled_weights(p, env):
    torch.save({"state": argparse.Namespace(w=torch.zeros(2))}, p / "evil.pth")  # loading it would run pickle code
    return [*BASE, "--weights", "evil.pth"]


def wrong_architecture_weights(p, env):
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(p / "resnet.safetensors"))
    return [*BASE, "--weights", "resnet.safetensors"]


def not_a_safetensors_file(p, env):
    write(p / "w.safetensors", b"this is not a safetensors file")
    return [*BASE, "--weights", "w.safetensors"]


def runs_dir_under_a_file(p, env):
    write(p / "afile", "x")
    return [*BASE, "--runs-dir", "afile/runs"]


def db_under_a_file(p, env):
    write(p / "afile", "x")
    return [*BASE, "--db", "afile/results.duckdb"]


def runs_dir_is_a_file(p, env):
    write(p / "runsfile", "x")
    return [*BASE, "--runs-dir", "runsfile"]


def db_not_duckdb(p, env):
    write(p / "results" / "medpeft.duckdb", b"SQLite format 3\x00" + b"\x00" * 4000)
    return BASE


def db_locked(p, env):
    """Another process holds the database past the retry budget (shortened to 1 s here)."""
    db = p / "results" / "medpeft.duckdb"
    db.parent.mkdir()
    import duckdb

    duckdb.connect(str(db)).close()
    holder = subprocess.Popen([sys.executable, "-c", hold_until_killed(f"import duckdb; c = duckdb.connect({str(db)!r})")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    env["cleanup"].append(lambda: (holder.kill(), holder.wait()))
    assert holder.stdout.readline().strip() == "ready"
    env["monkeypatch"].setattr("medpeft_cli.store.results.LOCK_TIMEOUT_S", 1.0)
    return BASE


def run_key_locked(p, env):
    from medpeft_cli.store.locks import run_lock

    lock = run_lock(p / "runs", run_key_of(KEY_FLAGS))
    lock.__enter__()
    env["cleanup"].append(lambda: lock.__exit__(None, None, None))
    return BASE


def checkpoint(p, state) -> None:
    path = p / "runs" / ".partial" / run_key_of(KEY_FLAGS) / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)


def interrupted_without_resume(p, env):
    checkpoint(p, {"format": "medpeft-checkpoint-v1"})
    return BASE


def pickled_checkpoint(p, env):
    checkpoint(p, {"format": "medpeft-checkpoint-v1", "x": argparse.Namespace(w=1)})
    return [*BASE, "--resume"]


def damaged_checkpoint(p, env):
    checkpoint(p, {})
    path = next((p / "runs" / ".partial").rglob("checkpoint.pt"))
    path.write_bytes(path.read_bytes()[:20])
    return [*BASE, "--resume"]


def wrong_architecture_checkpoint(p, env):
    state = {"format": "medpeft-checkpoint-v1", "run_key": run_key_of(KEY_FLAGS), "frozen_fingerprint": "", "model": {"layer1.0.conv1.weight": torch.zeros(1)}}
    checkpoint(p, state)
    return [*BASE, "--resume"]


def foreign_checkpoint(p, env):
    checkpoint(p, {"format": "medpeft-checkpoint-v1", "run_key": "0123456789abcdef", "model": {}})
    return [*BASE, "--resume"]


def manifest(p, rows: list[str], images: dict[str, int] | None = None, extra: tuple[str, ...] = ()):
    for name, color in (images or {}).items():
        png(p / "raw" / name, color)
    write(p / "raw" / "manifest.csv", "\n".join(["path,label,split", *rows]) + "\n")
    return ["datasets", "prepare", "mine", "--raw", "raw/manifest.csv", "--from", "manifest", "--data-dir", "data", "-r", "16", *extra]


def manifest_escapes_root(p, env):
    png(p / "outside.png")
    return manifest(p, ["../outside.png,a,train", "a.png,b,train"], {"a.png": 0})


def manifest_absolute_path(p, env):
    return manifest(p, ["/etc/passwd,a,train", "a.png,b,train"], {"a.png": 0})


def corrupt_image(p, env):
    args = manifest(p, [f"{c}{i}.png,{c},{s}" for c in "ab" for i, s in enumerate(("train", "val", "test"))], {f"{c}{i}.png": 9 for c in "ab" for i in range(3)})
    write(p / "raw" / "b2.png", b"\x89PNG\r\n\x1a\n truncated")
    return args


def label_not_a_class(p, env):
    rows = [f"{c}{i}.png,{c},{s}" for c in "ab" for i, s in enumerate(("train", "val", "test"))]
    return manifest(p, [*rows, "x.png,c,train"], {**{f"{c}{i}.png": 1 for c in "ab" for i in range(3)}, "x.png": 2}, ["--classes", "a,b"])


def bad_split_name(p, env):
    return manifest(p, ["a.png,a,training", "b.png,b,train"], {"a.png": 0, "b.png": 1})


def missing_raw(p, env):
    return ["datasets", "prepare", "mine", "--raw", "nothere", "--from", "imagefolder", "--data-dir", "data"]


def prepared(p, rows: list[str]) -> None:
    """Prepare a user dataset (this part must succeed), so `train` can be asked to use it."""
    from medpeft_cli.data.prepare import prepare

    images = {r.split(",")[0]: i * 20 for i, r in enumerate(rows)}
    manifest(p, rows, images)
    prepare("mine", p / "raw" / "manifest.csv", p / "data", [16], source="manifest")


def class_absent_from_training(p, env):
    prepared(p, ["a0.png,a,train", "a1.png,a,val", "a2.png,a,test", "b0.png,b,val", "b1.png,b,test", "a3.png,a,train"])
    return [*BASE, "--dataset", "mine", "--data-dir", "data", "--data-resolution", "16"]


def too_many_shots(p, env):
    return [*BASE, "--shots", "100000"]


def eval_not_a_run(p, env):
    (p / "notarun").mkdir()
    return ["eval", "notarun"]


def eval_damaged_result(p, env):
    write(p / "runs" / "abc" / "result.json", "{ not json")
    return ["eval", "runs/abc"]


def report_not_duckdb(p, env):
    write(p / "x.duckdb", b"garbage" * 100)
    return ["report", "--db", "x.duckdb", "--out", "site"]


def rebuild_missing_runs(p, env):
    return ["store", "rebuild", "--runs-dir", "nothere", "--db", "results/medpeft.duckdb"]


CASES = [
    # what is run
    ("unknown dataset", train("--dataset", "nope"), "unknown dataset 'nope'"),
    ("unknown backbone", train("--backbone", "vit_tny_patch16"), "unknown backbone"),
    ("unknown method", train("--method", "nope"), "unknown method 'nope'"),
    ("method not supported by the backbone", train("--backbone", "test_resnet", "--method", "lora"), "does not support backbone 'test_resnet'"),
    ("unknown method option", train("--set", "method.rnak=4"), "invalid options for method 'lora'"),
    ("out-of-range method option", train("--set", "method.rank=0"), "invalid options for method 'lora'"),
    # configuration
    ("invalid yaml", bad_yaml, "not valid YAML"),
    ("unknown config key", train("--set", "optimiser=sgd"), "optimiser: unknown key"),
    ("mistyped config key in yaml", yaml_typo, "train.epoch: unknown key"),
    ("mistyped value", train("--set", "train.epochs=three"), "train.epochs"),
    ("lr zero", train("--lr", "0"), "train.lr: Input should be greater than 0"),
    ("lr negative", train("--lr", "-0.1"), "train.lr: Input should be greater than 0"),
    ("fraction zero", train("--data-fraction", "0"), "data_fraction"),
    ("fraction above one", train("--data-fraction", "1.5"), "data_fraction"),
    ("negative epochs", train("--epochs", "-1"), "train.epochs"),
    ("zero batch size", train("--batch-size", "0"), "train.batch_size"),
    ("shots and fraction together", train("--shots", "4", "--data-fraction", "0.5"), "give either shots (4) or data_fraction (0.5), not both"),
    # data
    ("missing data directory", train("--dataset", "breastmnist", "--data-resolution", "64", "--data-dir", "nothere"), "breastmnist_64.npz not found"),
    ("npz not the official file", wrong_md5, "expected 750601b1f35ba3300ea97c75c52ff8f6"),
    ("corrupt image", corrupt_image, "b2.png"),
    ("label not one of the classes", label_not_a_class, "label 'c', which is not one of the classes"),
    ("split name invalid", bad_split_name, "split 'training' is not train, val or test"),
    ("manifest path escaping its root", manifest_escapes_root, "must not use '..'"),
    ("manifest absolute path", manifest_absolute_path, "not a relative path inside the raw root"),
    ("raw folder missing", missing_raw, "does not exist"),
    ("class absent from the training subset", class_absent_from_training, "has no images of class(es) b"),
    ("more shots than images", too_many_shots, "fewer than --shots 100000"),
    # weights and checkpoints
    ("pickled checkpoint", pickled_weights, "refusing to load"),
    ("weights of another architecture", wrong_architecture_weights, "does not fit backbone"),
    ("weights file not safetensors", not_a_safetensors_file, "w.safetensors"),
    ("missing weights file", train("--weights", "nothere.safetensors"), "does not exist"),
    ("pretrained weights offline, not cached", train("--weights", "pretrained"), "could not load pretrained weights"),
    ("interrupted run without --resume", interrupted_without_resume, "pass --resume to continue it or --force to start over"),
    ("resume checkpoint that is a pickle", pickled_checkpoint, "refusing to load checkpoint"),
    ("resume checkpoint truncated", damaged_checkpoint, "is damaged"),
    ("resume checkpoint of another architecture", wrong_architecture_checkpoint, "does not match this run's model"),
    ("resume checkpoint of another run", foreign_checkpoint, "belongs to run 0123456789abcdef"),
    # where results go
    ("runs dir under a file", runs_dir_under_a_file, "is a file, not a directory; choose another --runs-dir"),
    ("runs dir is a file", runs_dir_is_a_file, "is not a directory; choose another --runs-dir"),
    ("db dir under a file", db_under_a_file, "choose another --db"),
    ("db file that is not DuckDB", db_not_duckdb, "medpeft.duckdb"),
    ("db locked beyond the retry budget", db_locked, "stayed locked by another process"),
    ("run key being trained by another process", run_key_locked, "is being trained by another process"),
    # other commands
    ("eval of a directory that is not a run", eval_not_a_run, "not a finished medpeft run"),
    ("eval of a damaged run", eval_damaged_result, "is not valid JSON"),
    ("report from a file that is not DuckDB", report_not_duckdb, "x.duckdb"),
    ("store rebuild without runs dir", rebuild_missing_runs, "does not exist"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file with its size and modification time (empty folders left behind are not counted)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name, setup, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(cli, tmp_path, monkeypatch, name, setup, message):
    env = {"cleanup": [], "monkeypatch": monkeypatch}
    try:
        args = setup(tmp_path, env)
        before = snapshot(tmp_path)
        res = cli(*args)
        assert res.code == 2, (res.code, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("medpeft: error: "), res.stderr
        assert message in lines[0], lines[0]
        print(f"CASE | {name} | {lines[0]}")  # `pytest -s` prints the catalogue (docs/reliability.md)
        assert "Traceback" not in res.stderr
        assert snapshot(tmp_path) == before, "a bad input must write nothing"
        for path in ("results", "runs", "site"):  # not even an empty output folder
            assert (tmp_path / path).exists() == any(k.startswith(path + "/") for k in before), path
    finally:
        for cleanup in env["cleanup"]:
            cleanup()


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 30


def test_npz_missing_keys_and_label_out_of_range_are_refused(tmp_path):
    """The MedMNIST loader's own checks (the CLI reaches it only for files that pass the MD5 check)."""
    from medpeft_cli.data.medmnist import load_medmnist_npz
    from medpeft_cli.data.registry import get_dataset_entry
    from medpeft_cli.errors import UserError

    entry = get_dataset_entry("breastmnist").at(28)
    arrays = {f"{s}_{k}": (np.zeros((4, 28, 28), np.uint8) if k == "images" else np.zeros((4, 1), np.int64)) for s in ("train", "val", "test") for k in ("images", "labels")}
    partial = {k: v for k, v in arrays.items() if k != "val_labels"}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(UserError, match="lacks val_labels"):
        load_medmnist_npz(tmp_path / "partial.npz", entry)
    np.savez(tmp_path / "labels.npz", **{**arrays, "test_labels": np.array([[0], [1], [7], [0]])})
    with pytest.raises(UserError, match="label 7 outside 0..1") as info:
        load_medmnist_npz(tmp_path / "labels.npz", entry)
    assert "\n" not in str(info.value)
