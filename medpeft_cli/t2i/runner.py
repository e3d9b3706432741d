"""One text-to-image run: pipeline + captioned data -> latent cache -> method on the U-Net -> training
-> generation from held-out prompts -> FID/KID over seeds -> run directory + DuckDB row.

Called by train/runner.py for specs with `task: t2i` (after the run key is known and not finished);
it writes through the same store and provenance code as classification runs.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medpeft_cli.config import PROTOCOL_VERSION, RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.methods.registry import MethodInfo

SAMPLES_GRID = "samples.png"
SAMPLES_DIR = "samples"


def data_root(spec: RunSpec) -> Path:
    from medpeft_cli.data import default_data_dir

    return Path(spec.output.data_dir).expanduser() if spec.output.data_dir is not None else default_data_dir()


def resize_uint8(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 images at the generation resolution (the same resize the VAE input gets)."""
    import torch

    from medpeft_cli.t2i.latents import to_pixels

    if images.shape[1] == resolution and images.shape[2] == resolution:
        return images
    out = []
    for start in range(0, len(images), 256):
        x = to_pixels(torch.from_numpy(np.ascontiguousarray(images[start : start + 256])), resolution)
        out.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def weight_dtype(accelerator):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def check_resolution(resolution: int, pipe) -> None:
    factor = pipe.latent_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if resolution % factor:
        raise UserError(f"--image-size {resolution} does not fit pipeline {pipe.name}: it must be a multiple of {factor} (VAE x U-Net downsampling)")


def apply_speed_options(unet, t2i) -> None:
    if t2i.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if t2i.attention == "xformers":
        try:
            unet.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # missing package or unsupported GPU
            raise UserError(f"xformers attention is not available here ({str(exc).splitlines()[0][:120]}); use t2i.attention=sdpa") from None


def evaluate_generation(spec: RunSpec, pipe, unet, data, encodings, extractor, accelerator, log: Callable[[str], None]):
    """FID/KID over the spec's seeds from the first fid_samples test prompts; returns (scores, first seed's images, prompts)."""
    from medpeft_cli.t2i.captions import captions_of
    from medpeft_cli.t2i.generate import generate, make_sampler, score

    t2i = spec.t2i
    test = data.splits["test"]
    n = min(t2i.fid_samples, len(test))
    if n < 2:
        raise UserError(f"{data.name} has {len(test)} test images; FID needs at least 2 (set t2i.fid_samples or use a larger test split)")
    prompts = captions_of(data, "test", t2i.caption_column)[:n]
    embeds = encodings.tensor(encodings.text["test"], np.arange(n))
    empty = encodings.tensor(encodings.empty_text)
    real = resize_uint8(test.images[:n], spec.image_size)
    from medpeft_cli.t2i.pipeline import quiet_hf

    with quiet_hf():
        sampler = make_sampler(pipe, unet, accelerator.device, weight_dtype(accelerator))
    batch = spec.train.eval_batch_size

    def one_seed(seed: int) -> np.ndarray:
        log(f"generating {n} images from test prompts, seed {seed} ({t2i.num_inference_steps} steps, guidance {t2i.guidance_scale:g})")
        with accelerator.autocast():
            return generate(sampler, embeds, empty, seed, spec.image_size, t2i.num_inference_steps, t2i.guidance_scale, batch)

    scores, first = score(one_seed, real, t2i.fid_seeds, extractor, accelerator.device, batch)
    return scores, next(iter(first.values())), prompts


def write_samples(folder: Path, images: np.ndarray, prompts: list[str], seed: int) -> None:
    """samples.png (a 4x4 grid of the first images) and samples/NN.png + samples/prompts.json (for the site)."""
    from PIL import Image

    from medpeft_cli.store.rundir import write_json
    from medpeft_cli.t2i.generate import GRID_IMAGES, save_grid

    save_grid(images, folder / SAMPLES_GRID)
    (folder / SAMPLES_DIR).mkdir()
    shown = {}
    for i, image in enumerate(images[:GRID_IMAGES]):
        Image.fromarray(image).save(folder / SAMPLES_DIR / f"{i:02d}.png")
        shown[f"{i:02d}.png"] = prompts[i]
    write_json(folder / SAMPLES_DIR / "prompts.json", {"seed": seed, "prompts": shown})


def train_t2i(spec: RunSpec, info: MethodInfo, options: Any, key: str, force: bool, log: Callable[[str], None], lr_origin: dict | None = None):
    """Train and evaluate `spec` (task t2i, defaults resolved); returns the train runner's RunOutcome."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from medpeft_cli.data import load_dataset, stratified_subset
    from medpeft_cli.data.bundle import SPLIT_NAMES
    from medpeft_cli.store import append, write_run_dir
    from medpeft_cli.store.provenance import _version, collect
    from medpeft_cli.store.rundir import write_json
    from medpeft_cli.t2i.captions import captions_of
    from medpeft_cli.t2i.features import build_extractor
    from medpeft_cli.t2i.latents import cache_key, cached_encodings, compute_encodings, encode_ids, encode_pixels, to_pixels, tokenize
    from medpeft_cli.t2i.loop import Denoising, fit_t2i, rows_loader
    from medpeft_cli.t2i.pipeline import load_pipeline, quiet_hf
    from medpeft_cli.t2i.weights import save_t2i_weights
    from medpeft_cli.train.classify import resolve_mixed_precision
    from medpeft_cli.train.runner import RunOutcome, _device_name

    t, t2i, out = spec.train, spec.t2i, spec.output
    run_dir = Path(out.runs_dir) / key
    started = dt.datetime.now(dt.timezone.utc)
    wall_start = time.perf_counter()
    root = data_root(spec)

    # Everything that can fail on bad input fails here, before any training.
    extractor = build_extractor(t2i.fid_features)
    pipe = load_pipeline(spec.backbone, root)
    check_resolution(spec.image_size, pipe)
    data = load_dataset(spec.dataset, out.data_dir, resolution=spec.data_resolution)
    captions = {s: captions_of(data, s, t2i.caption_column) for s in SPLIT_NAMES}
    train_split = data.splits["train"]
    subset = stratified_subset(train_split.labels, spec.data_fraction, spec.seed)

    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(t.precision), gradient_accumulation_steps=t.grad_accum_steps)
    dtype = weight_dtype(accelerator)
    if not accelerator.is_main_process:  # one progress stream per multi-process launch
        log = lambda line: None
    # diffusers' recipe: the frozen VAE and text encoder run in the half precision of the run.
    with quiet_hf():
        pipe.vae.to(accelerator.device, dtype)
        pipe.text_encoder.to(accelerator.device, dtype)
    images = {s: data.splits[s].images for s in SPLIT_NAMES}

    def compute(splits_with_latents):
        log(f"encoding {sum(len(images[s]) for s in splits_with_latents)} images and {sum(map(len, captions.values()))} captions with the frozen VAE and text encoder")
        return compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, images, captions, spec.image_size, t.eval_batch_size, splits_with_latents)

    if t2i.cache_latents:
        ckey, payload = cache_key(pipe.encoder_checksum, data.checksum, spec.image_size, t2i.caption_column, dtype)
        with accelerator.main_process_first():
            encodings, hit = cached_encodings(root / "t2i" / "cache", ckey, payload, lambda: compute(("train", "val")), dtype)
        cache_state = f"{'hit' if hit else 'miss'} ({ckey})"
        log(f"latent cache {cache_state}")
    else:
        encodings, cache_state = compute(("val",)), "off"

    set_seed(spec.seed)
    unet = pipe.unet.to(accelerator.device)  # methods such as svdiff decompose weights on the training device
    total_before = sum(p.numel() for p in unet.parameters())
    model = info.apply(unet, options)
    apply_speed_options(model, t2i)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    if t2i.cache_latents:  # batches of cached posterior parameters + caption embeddings
        train_arrays, convert = [encodings.latents["train"], encodings.text["train"]], encodings.tensor

        def encode(batch):
            return batch[0], batch[1]
    else:  # batches of images + token ids, encoded now by the frozen VAE and text encoder
        train_arrays, convert = [images["train"], tokenize(pipe.tokenizer, captions["train"]).numpy()], torch.from_numpy

        def encode(batch):
            return encode_pixels(pipe.vae, to_pixels(batch[0], spec.image_size)), encode_ids(pipe.text_encoder, batch[1])
    train_loader = rows_loader(train_arrays, t.batch_size, True, spec.seed, convert, index=subset)
    val_loader = rows_loader([encodings.latents["val"], encodings.text["val"]], t.eval_batch_size, False, spec.seed, encodings.tensor)
    vae_cfg = pipe.vae.config
    denoising = Denoising(
        pipe.training_scheduler(), float(vae_cfg.scaling_factor), float(getattr(vae_cfg, "shift_factor", None) or 0.0),
        pipe.prediction_type, encodings.tensor(encodings.empty_text).to(accelerator.device), t2i.caption_dropout,
    )
    log_lines: list[str] = [f"latent cache: {cache_state}"]

    def on_epoch(record: dict) -> None:
        val = f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else ""
        line = f"epoch {record['epoch']}/{t.epochs} train_loss {record['train_loss']:.4f}{val} {record['train_images_per_s']:.1f} img/s"
        log_lines.append(line)
        log(line)

    set_seed(spec.seed)  # the same random stream whether the cache was hit or built
    fit = fit_t2i(model, train_loader, val_loader, encode, denoising, t, t2i, t.lr, accelerator, on_epoch=on_epoch)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return RunOutcome(key, "finished", run_dir, {})

    unet = accelerator.unwrap_model(model)
    scores, first_images, prompts = evaluate_generation(spec, pipe, unet, data, encodings, extractor, accelerator, log)
    finished = dt.datetime.now(dt.timezone.utc)
    test_metrics = scores.as_dict()
    row: dict[str, Any] = {
        "run_key": key, "protocol_version": PROTOCOL_VERSION, "status": "ok", "task": spec.task,
        "dataset": spec.dataset, "backbone": spec.backbone, "weights": spec.weights, "method": info.name,
        "data_fraction": spec.data_fraction, "seed": spec.seed, "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size,
        **{k: (lr_origin or {}).get(k) for k in ("lr_source", "tuned_lr_trials", "tune_study")},
        "image_size": spec.image_size, "precision": accelerator.mixed_precision, "spec_json": json.dumps(spec.key_fields(), sort_keys=True), "speed_json": json.dumps(spec.speed_fields(), sort_keys=True),
        "test_fid": scores.fid, "test_fid_std": scores.fid_std, "test_kid": scores.kid, "test_kid_std": scores.kid_std,
        "fid_features": scores.features, "fid_samples": scores.samples, "fid_seeds": json.dumps(scores.seeds),
        "train_loss": fit.train_loss, "val_loss": fit.val_loss, "generate_images_per_s": scores.images_per_s,
        "metrics_json": json.dumps({"test": test_metrics, "history": fit.history, "latent_cache": cache_state}),
        "split_checksum": data.split_checksum, "train_images": len(subset),
        "trainable_params": trainable, "head_params": 0, "method_params": trainable, "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "wall_time_s": time.perf_counter() - wall_start, "train_images_per_s": fit.train_images_per_s,
        "peak_memory_mb": fit.peak_memory_mb, "memory_kind": fit.memory_kind,
        **collect(_device_name(accelerator), accelerator.num_processes),
        "diffusers_version": _version("diffusers"), "transformers_version": _version("transformers"),
        "dataset_checksum": data.checksum, "dataset_source": data.source, "weights_source": pipe.weights_source,
        "backbone_checksum": pipe.checksums["unet"], "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
    }
    log_lines.append(f"FID {scores.fid:.3f} KID {scores.kid:.5f} ({scores.features}, {scores.samples} images x seeds {scores.seeds}); added {total - total_before} parameters")

    def fill(tmp: Path) -> dict[str, Any]:
        write_json(tmp / "spec.json", spec.model_dump(mode="json"))
        write_json(tmp / "metrics.json", {"test": test_metrics, "history": fit.history, "val_loss": fit.val_loss,
                                          "latent_cache": cache_state, "pipeline_checksums": pipe.checksums})
        write_samples(tmp, first_images, prompts, t2i.fid_seeds[0])
        save_t2i_weights(unet, tmp, info.peft_owned)
        (tmp / "train.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
        return row

    write_run_dir(Path(out.runs_dir), key, fill, replace=force)
    append(out.db, row, replace=force)
    return RunOutcome(key, "finished", run_dir, row)
