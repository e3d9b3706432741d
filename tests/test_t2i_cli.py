"""End to end on the CLI: `medpeft train --task t2i` then `medpeft eval`, offline, on the synthetic
captioned set with tiny-sd: FID/KID rows in DuckDB, the sample grid, the site, re-scoring."""

from __future__ import annotations

import json

import duckdb
import pytest
import torch

from medpeft_cli.report.runpage import shard

# Smallest settings that still exercise every stage: 80 training images, 8 prompts x 2 seeds, 2 sampling steps.
TINY_T2I = [
    "--task", "t2i", "--epochs", "1", "--data-fraction", "0.05", "--batch-size", "16", "--fid-samples", "8",
    "--set", "t2i.fid_seeds=[0,1]", "--set", "t2i.num_inference_steps=2", "--set", "train.eval_batch_size=16",
]


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny models' ops are too small for thread parallelism to pay off (on shared CPUs it costs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_train_and_eval_t2i_end_to_end(cli, tmp_path):
    from PIL import Image

    res = cli("train", *TINY_T2I, "--method", "difffit")
    assert res.code == 0, res.stderr
    assert "FID" in res.stdout and "test_vit@random" in res.stdout and "8 x 2" in res.stdout
    assert "latent cache" in res.stderr and "generating 8 images from test prompts, seed 1" in res.stderr

    con = duckdb.connect("results/medpeft.duckdb", read_only=True)
    row = dict(zip([d[0] for d in con.execute("select * from runs").description], con.execute("select * from runs").fetchone()))
    con.close()
    assert row["task"] == "t2i" and row["method"] == "difffit" and row["dataset"] == "synthetic-captions"
    assert row["test_fid"] > 0 and row["test_fid_std"] >= 0 and row["test_kid_std"] is not None
    assert row["fid_features"] == "test_vit@random" and row["fid_samples"] == 8 and json.loads(row["fid_seeds"]) == [0, 1]
    assert row["weights_source"] == "medpeft:tiny-sd-v1 (random-init, seed 0)" and row["backbone_checksum"].startswith("sha256:")
    assert row["train_images"] == 80 and 0 < row["trainable_params"] < row["total_params"] and row["diffusers_version"]
    per_seed = json.loads(row["metrics_json"])["test"]["per_seed"]
    assert [s["seed"] for s in per_seed] == [0, 1] and per_seed[0]["fid"] != per_seed[1]["fid"]  # seeds give other noise

    run = tmp_path / "runs" / row["run_key"]
    grid = Image.open(run / "samples.png")
    assert grid.size == (4 * 32 + 3 * 2, 2 * 32 + 2)  # 8 samples, 4 per row, 2 px gaps
    assert (run / "trainable.safetensors").is_file() and (run / "samples" / "00.png").is_file()
    assert len(json.loads((run / "samples" / "prompts.json").read_text())["prompts"]) == 8
    page = (tmp_path / "site" / "runs" / f"{shard(row['run_key'])}.html").read_text()
    assert '"test_fid": ' in page and '"path": "samples/00.png"' in page  # the run's record lists its samples
    assert (tmp_path / "site" / "runs" / row["run_key"] / "samples" / "00.png").is_file()  # published next to it

    again = cli("train", *TINY_T2I, "--method", "difffit", "--no-site")
    assert again.code == 0 and "already finished" in again.stdout

    scored = cli("eval", str(run), "--json", "-q")
    assert scored.code == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["matches_stored"] is True and abs(result["metrics"]["fid"] - row["test_fid"]) < 1e-6

    other = cli("eval", str(run), "--fid-features", "test_convnext@random", "--seeds", "7", "--samples", "grid.png", "-q")
    assert other.code == 0, other.stderr
    assert "not compared" in other.stdout and (tmp_path / "grid.png").is_file()


@pytest.mark.slow
def test_lora_run_saves_a_diffusers_lora_that_loads_into_the_pipeline(cli, tmp_path):
    from diffusers import StableDiffusionPipeline

    from medpeft_cli.data import default_data_dir
    from medpeft_cli.t2i.tiny import tiny_pipeline_dir

    res = cli("train", *TINY_T2I, "--method", "lora", "--no-site", "--set", "t2i.fid_seeds=[0]")
    assert res.code == 0, res.stderr
    run = next((tmp_path / "runs").iterdir())
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir(default_data_dir())), safety_checker=None)
    pipe.load_lora_weights(str(run / "adapter"))  # the user's way to use the trained adapter
    assert any("lora_B" in n for n, _ in pipe.unet.named_parameters())
    assert json.loads((run / "result.json").read_text())["test_fid_std"] is None  # one seed: no spread


@pytest.mark.slow
def test_bad_t2i_inputs_fail_before_training_with_one_line(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no cached Inception weights
    captionless = cli("train", "--task", "t2i", "--dataset", "synthetic-lesions", "--no-site")
    assert captionless.code == 2 and "has no caption column 'caption'" in captionless.stderr
    assert len(captionless.stderr.strip().splitlines()) <= 2  # the start line and the error, no traceback
    offline_inception = cli("train", "--task", "t2i", "--fid-features", "inception", "--no-site")
    assert offline_inception.code == 2 and "medpeft is offline" in offline_inception.stderr
    weights = cli("train", "--task", "t2i", "--weights", "random", "--no-site")
    assert weights.code == 2 and "pipeline's own weights" in weights.stderr


def test_methods_lists_the_t2i_methods(cli):
    res = cli("methods", "--task", "t2i")
    assert res.code == 0
    for name in ("bias-norm-attention", "svdiff", "difffit", "Han et al., ICCV 2023", "Xie et al., ICCV 2023"):
        assert name in res.stdout
