"""Evaluation of a text-to-image run: generate images from held-out prompts with fixed seeds, score
them with FID and KID against the real images of those prompts, and save a grid of samples.

The protocol (study: FID on 1,000 test prompts over 4 seeds): the first `fid_samples` test captions
are the prompts; for each seed in `fid_seeds` every prompt gets one image whose initial noise comes
from its own generator seeded by (seed, prompt index), so an image does not depend on the batch size
or on the other prompts, and every run and method sees the same noise. FID (Heusel et al., NeurIPS
2017) and KID (Binkowski et al., ICLR 2018) are computed with torchmetrics from features of the
chosen extractor (features.py); the row stores their mean and standard deviation over the seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medpeft_cli.t2i.features import FeatureExtractor

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torchmetrics' defaults (subsets shrink to the sample count)
GRID_IMAGES = 16


PROMPTS_PER_SEED = 1_000_003  # a prime above any sensible fid_samples


def image_seed(seed: int, index: int) -> int:
    """The noise seed of prompt `index` under evaluation seed `seed`: distinct for every (seed, index)
    with index < PROMPTS_PER_SEED, and below 2**32 (torch's CPU generator keeps only 32 bits of a seed)
    for seeds up to 4,000."""
    value = seed * PROMPTS_PER_SEED + index
    if index >= PROMPTS_PER_SEED or value >= 2**32:
        raise ValueError(f"seed {seed} / prompt {index} out of range for distinct noise seeds")
    return value


def make_sampler(pipe, unet: nn.Module, device: torch.device, dtype: torch.dtype):
    """A StableDiffusionPipeline around the trained U-Net with the pipeline's own sampling scheduler."""
    from diffusers import StableDiffusionPipeline

    sampler = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
        scheduler=pipe.sampler_class.from_config(pipe.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sampler.set_progress_bar_config(disable=True)
    return sampler.to(device)


@torch.inference_mode()
def generate(
    sampler, prompt_embeds: torch.Tensor, empty_embeds: torch.Tensor, seed: int, resolution: int, steps: int,
    guidance_scale: float, batch_size: int, on_batch: Callable[[int], None] = lambda n: None,
) -> np.ndarray:
    """uint8 (N, R, R, 3) images, one per row of `prompt_embeds` (N, L, D)."""
    device = sampler.device
    dtype = sampler.unet.dtype
    images = []
    for start in range(0, len(prompt_embeds), batch_size):
        embeds = prompt_embeds[start : start + batch_size].to(device, dtype)
        generators = [torch.Generator("cpu").manual_seed(image_seed(seed, start + i)) for i in range(len(embeds))]
        out = sampler(
            prompt_embeds=embeds, negative_prompt_embeds=empty_embeds.to(device, dtype).expand_as(embeds),
            height=resolution, width=resolution, num_inference_steps=steps, guidance_scale=guidance_scale,
            generator=generators, output_type="np",
        ).images
        images.append(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))
        on_batch(len(embeds))
    return np.concatenate(images)


class _Features(nn.Module):
    """Hands precomputed features to torchmetrics (it calls its `feature` module on what update() gets),
    so each image set is embedded once for both FID and KID."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_kid(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float, float]:
    """(FID, KID mean, KID std over subsets) of two feature sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    dim = real.shape[1]
    # Scored on the main process only: no syncing with the other processes of a multi-process run.
    fid = FrechetInceptionDistance(feature=_Features(dim), normalize=False, sync_on_compute=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    size = min(KID_SUBSET_SIZE, len(real), len(fake))
    with warnings.catch_warnings():  # "KID will save all extracted features": intended, they are small
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Features(dim), subsets=KID_SUBSETS, subset_size=size, normalize=False, sync_on_compute=False)
        kid.update(real, real=True)
        kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # KID draws random subsets: fixed, so a rescore gives the same number
        kid_mean, kid_std = kid.compute()
    return float(fid.compute()), float(kid_mean), float(kid_std)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class GenerationScores:
    fid: float
    fid_std: float | None  # sample std over seeds (None with one seed)
    kid: float
    kid_std: float | None
    per_seed: list[dict] = field(default_factory=list)
    samples: int = 0
    seeds: list[int] = field(default_factory=list)
    features: str = ""
    features_source: str = ""
    images_per_s: float = 0.0

    def as_dict(self) -> dict:
        return {"fid": self.fid, "fid_std": self.fid_std, "kid": self.kid, "kid_std": self.kid_std, "per_seed": self.per_seed,
                "samples": self.samples, "seeds": self.seeds, "features": self.features, "features_source": self.features_source,
                "generate_images_per_s": self.images_per_s}


def score(
    generate_seed: Callable[[int], np.ndarray], real_images: np.ndarray, seeds: list[int], extractor: FeatureExtractor,
    device, batch_size: int,
) -> tuple[GenerationScores, dict[int, np.ndarray]]:
    """FID/KID per seed and their mean/std; also returns the images of the first seed (for the grid)."""
    import time

    real = extractor(real_images, batch_size, device)
    per_seed, first, seconds = [], {}, 0.0
    for seed in seeds:
        start = time.perf_counter()
        fake_images = generate_seed(seed)
        seconds += time.perf_counter() - start
        if not first:
            first[seed] = fake_images
        fid, kid, kid_subset_std = fid_kid(real, extractor(fake_images, batch_size, device))
        per_seed.append({"seed": seed, "fid": fid, "kid": kid, "kid_subset_std": kid_subset_std})
    fid_mean, fid_std = _mean_std([s["fid"] for s in per_seed])
    kid_mean, kid_std = _mean_std([s["kid"] for s in per_seed])
    scores = GenerationScores(
        fid_mean, fid_std, kid_mean, kid_std, per_seed, len(real_images), list(seeds), extractor.spec, extractor.source,
        len(real_images) * len(seeds) / max(seconds, 1e-9),
    )
    return scores, first


def save_grid(images: np.ndarray, path: Path, columns: int = 4) -> Path:
    """A PNG grid of up to GRID_IMAGES images (row-major, 2 px gaps)."""
    from PIL import Image

    images = images[:GRID_IMAGES]
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    gap = 2
    canvas = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    Image.fromarray(canvas).save(path)
    return path
