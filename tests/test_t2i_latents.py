"""Captioned data, the latent/text-embedding cache, and the training loop of the text-to-image track."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medpeft_cli.errors import UserError


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny models' ops are too small for thread parallelism to pay off (on shared CPUs it costs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    from medpeft_cli.data import default_data_dir
    from medpeft_cli.t2i.pipeline import load_pipeline

    return load_pipeline("tiny-sd", default_data_dir())


@pytest.fixture(scope="module")
def captioned():
    from medpeft_cli.data import load_dataset

    return load_dataset("synthetic-captions")


def small(captioned, n: int = 24):
    from medpeft_cli.t2i.captions import captions_of

    images = {s: captioned.splits[s].images[:n] for s in ("train", "val")}
    captions = {s: captions_of(captioned, s, "caption")[:n] for s in ("train", "val", "test")}
    return images, captions


def test_synthetic_captions_describe_each_image(captioned):
    from medpeft_cli.data import get_dataset_entry, load_dataset
    from medpeft_cli.t2i.captions import measure

    assert get_dataset_entry("synthetic-captions").task == "text-to-image"
    train = captioned.splits["train"]
    captions = train.meta["caption"]
    assert len(captions) == len(train) == 1600 and len(captioned.splits["test"]) == 400
    for caption, label in zip(captions[:200], train.labels[:200]):
        shape, texture = captioned.class_names[label].split("-")
        assert shape in caption and texture in caption
    area, _ = measure(train.images[:200])
    small_ones = [c for c, a in zip(captions[:200], area) if a < 0.11]
    assert small_ones and all("small" in c for c in small_ones)
    assert load_dataset("synthetic-captions").checksum == captioned.checksum  # generated deterministically


def test_captionless_dataset_is_one_clear_error():
    from medpeft_cli.data import load_dataset
    from medpeft_cli.t2i.captions import captions_of

    with pytest.raises(UserError, match="has no caption column 'caption'.*image-caption pairs"):
        captions_of(load_dataset("synthetic-lesions"), "train", "caption")


def test_latent_cache_miss_then_hit_keyed_by_encoders_data_and_resolution(pipe, captioned, tmp_path):
    from medpeft_cli.t2i.latents import cache_key, cached_encodings, compute_encodings

    images, captions = small(captioned)
    calls = []

    def compute(resolution):
        def run():
            calls.append(resolution)
            return compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, images, captions, resolution, 16)
        return run

    key, payload = cache_key(pipe.encoder_checksum, captioned.checksum, 32, "caption", torch.float32)
    first, hit = cached_encodings(tmp_path, key, payload, compute(32), torch.float32)
    assert not hit and calls == [32] and (tmp_path / key / "info.json").is_file()
    again, hit = cached_encodings(tmp_path, key, payload, compute(32), torch.float32)
    assert hit and calls == [32]  # nothing recomputed
    assert np.array_equal(again.latents["train"], first.latents["train"]) and np.array_equal(again.text["test"], first.text["test"])
    assert again.latents["train"].shape == (24, 8, 8, 8)  # mean + log-variance of 4 latent channels at 32 / 4 px
    assert again.text["test"].shape == (24, 32, 32) and again.empty_text.shape == (1, 32, 32)
    # A different resolution, dataset or encoder is another cache entry.
    assert cache_key(pipe.encoder_checksum, captioned.checksum, 64, "caption", torch.float32)[0] != key
    assert cache_key(pipe.encoder_checksum, "sha256:other-data", 32, "caption", torch.float32)[0] != key
    assert cache_key("sha256:other-vae", captioned.checksum, 32, "caption", torch.float32)[0] != key
    other, payload64 = cache_key(pipe.encoder_checksum, captioned.checksum, 64, "caption", torch.float32)
    _, hit = cached_encodings(tmp_path, other, payload64, compute(64), torch.float32)
    assert not hit and calls == [32, 64]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([key, other])  # no temporary folders left


def denoising_for(pipe, empty):
    from medpeft_cli.t2i.loop import Denoising

    return Denoising(pipe.training_scheduler(), float(pipe.vae.config.scaling_factor), 0.0, pipe.prediction_type, empty)


def test_cached_and_uncached_batches_give_the_same_loss(pipe, captioned):
    from medpeft_cli.t2i.latents import compute_encodings, encode_ids, encode_pixels, to_pixels, tokenize

    images, captions = small(captioned, 8)
    enc = compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, images, captions, 32, 8)
    denoising = denoising_for(pipe, torch.from_numpy(enc.empty_text))
    torch.manual_seed(3)
    cached = denoising.loss(pipe.unet, torch.from_numpy(enc.latents["train"]), torch.from_numpy(enc.text["train"]))
    torch.manual_seed(3)
    params = encode_pixels(pipe.vae, to_pixels(torch.from_numpy(images["train"]), 32))
    text = encode_ids(pipe.text_encoder, tokenize(pipe.tokenizer, captions["train"]))
    uncached = denoising.loss(pipe.unet, params, text)
    assert torch.allclose(cached, uncached, rtol=1e-5)


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_leaves_encoders_bitwise_unchanged(pipe, captioned):
    from accelerate import Accelerator

    from medpeft_cli.config import T2IOptions, TrainOptions
    from medpeft_cli.methods import get_method
    from medpeft_cli.t2i.latents import compute_encodings
    from medpeft_cli.t2i.loop import fit_t2i, rows_loader, validation_loss

    vae_before = copy.deepcopy(pipe.vae.state_dict())
    text_before = copy.deepcopy(pipe.text_encoder.state_dict())
    images, captions = small(captioned, 32)
    enc = compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, images, captions, 32, 16)
    unet = get_method("full", task="t2i").apply(copy.deepcopy(pipe.unet), None)
    denoising = denoising_for(pipe, torch.from_numpy(enc.empty_text))
    accelerator = Accelerator(cpu=True)
    arrays = [enc.latents["train"], enc.text["train"]]
    # Loss on the training images with fixed noise: before and after 24 AdamW steps.
    probe = rows_loader(arrays, 32, False, 0)
    before = validation_loss(unet, probe, denoising, accelerator)
    torch.manual_seed(0)
    fit = fit_t2i(unet, rows_loader(arrays, 8, True, 0), probe, lambda b: (b[0], b[1]), denoising,
                  TrainOptions(epochs=6, batch_size=8, warmup_epochs=0), T2IOptions(), 1e-3, accelerator)
    assert fit.steps == 24 and len(fit.history) == 6
    assert fit.val_loss < 0.9 * before
    for name, tensor in pipe.vae.state_dict().items():
        assert torch.equal(tensor, vae_before[name]), name
    for name, tensor in pipe.text_encoder.state_dict().items():
        assert torch.equal(tensor, text_before[name]), name


@pytest.mark.slow
def test_ema_weights_are_what_training_leaves_in_the_unet(pipe, captioned):
    from accelerate import Accelerator

    from medpeft_cli.config import T2IOptions, TrainOptions
    from medpeft_cli.methods import get_method
    from medpeft_cli.t2i.latents import compute_encodings
    from medpeft_cli.t2i.loop import fit_t2i, rows_loader

    images, captions = small(captioned, 16)
    enc = compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, images, captions, 32, 16)
    arrays = [enc.latents["train"], enc.text["train"]]
    results = {}
    for ema in (False, True):
        unet = get_method("bias", task="t2i").apply(copy.deepcopy(pipe.unet), None)
        torch.manual_seed(0)
        fit_t2i(unet, rows_loader(arrays, 8, True, 0), rows_loader(arrays, 16, False, 0), lambda b: (b[0], b[1]),
                denoising_for(pipe, torch.from_numpy(enc.empty_text)), TrainOptions(epochs=2, batch_size=8, warmup_epochs=0),
                T2IOptions(ema=ema, ema_decay=0.5), 1e-2, Accelerator(cpu=True))
        results[ema] = torch.cat([p.detach().flatten() for p in unet.parameters() if p.requires_grad])
    start = torch.cat([p.detach().flatten() for n, p in pipe.unet.named_parameters() if n.endswith(".bias")])
    assert not torch.equal(results[True], results[False])
    assert (results[True] - start).norm() < (results[False] - start).norm()  # the average lags the raw weights
