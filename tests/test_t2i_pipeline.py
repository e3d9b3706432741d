"""Loading Stable Diffusion pipelines offline, the embedded tiny-sd, the t2i part of the run spec,
and the one-line errors for pipelines and data that cannot be used."""

from __future__ import annotations

import json
import shutil

import pytest

from medpeft_cli.config import build_spec, run_key
from medpeft_cli.errors import UserError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from medpeft_cli.t2i.tiny import tiny_pipeline_dir

    return tiny_pipeline_dir(tmp_path_factory.mktemp("t2i-data"))


def copy_pipeline(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tiny_sd_is_saved_once_and_loads_with_the_real_pipeline_code(tiny_dir, tmp_path):
    from medpeft_cli.t2i.pipeline import load_pipeline
    from medpeft_cli.t2i.tiny import tiny_pipeline_dir

    assert tiny_pipeline_dir(tiny_dir.parents[2]) == tiny_dir  # cached: not rebuilt
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    pipe = load_pipeline("tiny-sd", tiny_dir.parents[2])
    assert pipe.weights_source == "medpeft:tiny-sd-v1 (random-init, seed 0)"
    assert 0.5e6 < sum(p.numel() for p in pipe.unet.parameters()) < 1.5e6
    assert pipe.latent_factor == 4 and pipe.prediction_type == "epsilon" and pipe.sampler_class.__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in pipe.vae.parameters()) and not any(p.requires_grad for p in pipe.text_encoder.parameters())
    # The same folder given as a local path is the same weights, recorded as a directory.
    same = load_pipeline(str(tiny_dir), tmp_path)
    assert same.checksums == pipe.checksums and same.weights_source == f"dir:{tiny_dir}"
    assert pipe.checksums["unet"].startswith("sha256:") and pipe.encoder_checksum != pipe.checksums["unet"]


def test_tiny_tokenizer_keeps_caption_words_whole():
    from medpeft_cli.t2i.tiny import build_tokenizer

    tok = build_tokenizer()
    tokens = tok.convert_ids_to_tokens(tok("A small round lesion with a textured interior, dark brown. No pleural effusion").input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert {"lesion</w>", "textured</w>", "interior</w>", "pleural</w>", "effusion</w>"} <= set(tokens)
    assert "zq" not in tok.get_vocab() and len(tok("zqx").input_ids) == 5  # unknown words fall back to bytes


def test_pipeline_without_unet_is_one_clear_error(tiny_dir, tmp_path):
    from medpeft_cli.t2i.pipeline import load_pipeline

    broken = copy_pipeline(tiny_dir, tmp_path / "no-unet")
    index = json.loads((broken / "model_index.json").read_text())
    del index["unet"]
    (broken / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(broken / "unet")
    with pytest.raises(UserError, match=r"has no U-Net .*fine-tunes the U-Net"):
        load_pipeline(str(broken), tmp_path)


def test_unknown_scheduler_is_one_clear_error(tiny_dir, tmp_path):
    from medpeft_cli.t2i.pipeline import load_pipeline

    broken = copy_pipeline(tiny_dir, tmp_path / "odd-scheduler")
    config_path = broken / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "WarpDriveScheduler"
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="unknown scheduler 'WarpDriveScheduler'"):
        load_pipeline(str(broken), tmp_path)


def test_folder_that_is_not_a_pipeline_and_uncached_hub_id_are_one_line(tmp_path, monkeypatch):
    from medpeft_cli.t2i.pipeline import load_pipeline

    with pytest.raises(UserError, match="is not a diffusers pipeline"):
        load_pipeline(str(tmp_path), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache and medpeft is offline"):
        load_pipeline("some-lab/sd-that-is-not-cached", tmp_path)
    with pytest.raises(UserError, match="neither `tiny-sd`, a local diffusers folder nor a Hugging Face id"):
        load_pipeline("no such thing", tmp_path)


def test_t2i_spec_defaults_to_the_embedded_set_and_keeps_classification_keys():
    classification = build_spec()
    assert "t2i" not in classification.key_fields()  # keys of classification runs do not change
    spec = build_spec(flags={"task": "t2i"})
    assert (spec.dataset, spec.backbone, spec.weights, spec.image_size) == ("synthetic-captions", "tiny-sd", "pipeline", 32)
    assert spec.t2i is not None and spec.t2i.fid_seeds == [0, 1, 2, 3]
    # Speed-only options are not part of the key; what changes results is.
    fast = build_spec(flags={"task": "t2i"}, overrides=["t2i.cache_latents=false", "t2i.gradient_checkpointing=true"])
    assert run_key(fast) == run_key(spec)
    assert run_key(build_spec(flags={"task": "t2i"}, overrides=["t2i.fid_features=resnet18"])) != run_key(spec)


def test_t2i_options_are_resolved_per_pipeline():
    from medpeft_cli.run import resolve

    tiny, info, _ = resolve(build_spec(flags={"task": "t2i"}))
    assert info.task == "t2i" and tiny.train.lr == info.default_lr
    assert (tiny.t2i.fid_samples, tiny.t2i.num_inference_steps, tiny.t2i.fid_features) == (100, 20, "test_vit@random")
    real, _, _ = resolve(build_spec(flags={"task": "t2i", "backbone": "stable-diffusion-v1-5/stable-diffusion-v1-5"}))
    assert (real.t2i.fid_samples, real.t2i.num_inference_steps, real.t2i.fid_features) == (1000, 50, "inception")


@pytest.mark.parametrize(
    ("flags", "overrides", "message"),
    [
        ({}, ["t2i.fid_samples=10"], "t2i options apply to text-to-image runs only"),
        ({"task": "t2i", "weights": "random"}, [], "uses its pipeline's own weights"),
        ({"task": "t2i", "shots": 5}, [], "apply to classification runs only"),
        ({"task": "t2i"}, ["t2i.fid_seeds=[1,1]"], "seeds must be distinct"),
        ({"task": "t2i", "method": "ssf"}, [], "unknown method 'ssf' for task t2i"),
    ],
)
def test_bad_t2i_specs_are_one_line(flags, overrides, message):
    from medpeft_cli.run import resolve

    with pytest.raises(UserError, match=message):
        resolve(build_spec(flags=flags, overrides=overrides))
