"""Scoring a text-to-image model: generation from held-out test prompts with fixed seeds, FID/KID over
the seeds, and the sample files of a run directory; plus the helpers a run and a re-scoring share
(where pipelines and caches live, the dtype of the frozen parts, the U-Net's speed options).

Used by the t2i task (t2i/task.py) and by `medpeft eval` of a saved run (t2i/evaluate.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError

SAMPLES_GRID = "samples.png"
SAMPLES_DIR = "samples"


def data_root(spec: RunSpec) -> Path:
    """Where pipelines, datasets and the latent cache live (--data-dir, else the default data directory)."""
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
    """The dtype of the frozen VAE and text encoder: the run's half precision, else float32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def check_resolution(resolution: int, pipe) -> None:
    """The image size must divide into the VAE's and the U-Net's downsampling."""
    factor = pipe.latent_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if resolution % factor:
        raise UserError(f"--image-size {resolution} does not fit pipeline {pipe.name}: it must be a multiple of {factor} (VAE x U-Net downsampling)")


def apply_speed_options(unet, t2i) -> None:
    """Gradient checkpointing and the attention kernel: speed and memory only, not results."""
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
