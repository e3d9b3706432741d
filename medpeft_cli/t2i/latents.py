"""VAE latents and text embeddings, computed once per (pipeline encoders, dataset, resolution) and
cached on disk, so training touches only the U-Net.

What is cached is exactly what the uncached path computes at every step: the VAE posterior's
parameters (mean and log-variance; a fresh latent is still *sampled* from them at each step, as in
diffusers' training script) and the text encoder's last hidden state of each caption, in the dtype
the encoders run in. So caching changes the speed of a run, never what it computes (the run key
leaves `cache_latents` out).

    <data_dir>/t2i/cache/<key>/
        info.json               what the key was computed from, shapes, dtype
        {train,val}_latents.npy (N, 2C, h, w) posterior parameters
        {train,val,test}_text.npy (N, L, D) caption embeddings
        empty_text.npy          (1, L, D) the empty caption (unconditional, for guidance and dropout)

The key hashes the VAE / text-encoder / tokenizer checksums, the dataset checksum (images and
captions), the resolution, the caption column and the dtype. A folder is written under a temporary
name and renamed when complete, so a reader sees a whole cache or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medpeft_cli.errors import UserError

CACHE_FORMAT = "medpeft-t2i-cache-v1"
LATENT_SPLITS = ("train", "val")  # test images are only compared in pixel space (FID)
TEXT_SPLITS = ("train", "val", "test")


def to_pixels(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, R, R) in [-1, 1] (antialiased bilinear resize, as SD's training transforms)."""
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's length, as StableDiffusionPipeline.encode_prompt does."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_pixels(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE posterior's parameters (mean and log-variance stacked on channels)."""
    return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.parameters


@torch.no_grad()
def encode_ids(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(ids.to(text_encoder.device))[0]


@dataclass
class Encodings:
    """Per split: latent posterior parameters (train, val) and caption embeddings (train, val, test)."""

    latents: dict[str, np.ndarray]
    text: dict[str, np.ndarray]
    empty_text: np.ndarray
    dtype: torch.dtype

    def tensor(self, array: np.ndarray, index=None) -> torch.Tensor:
        """Rows of a cached array as a tensor of the encoder dtype (bfloat16 is stored as raw 16-bit words)."""
        part = np.ascontiguousarray(array if index is None else array[index])
        t = torch.from_numpy(part)
        return t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def cache_key(encoder_checksum: str, dataset_checksum: str, resolution: int, caption_column: str, dtype: torch.dtype) -> tuple[str, dict]:
    payload = {
        "format": CACHE_FORMAT, "encoders": encoder_checksum, "dataset": dataset_checksum, "resolution": resolution,
        "caption_column": caption_column, "dtype": str(dtype).removeprefix("torch."),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16], payload


def compute_encodings(
    vae, text_encoder, tokenizer, images: dict[str, np.ndarray], captions: dict[str, list[str]], resolution: int,
    batch_size: int, splits_with_latents=LATENT_SPLITS, progress: Callable[[int], None] = lambda n: None,
) -> Encodings:
    """Encode every image of `splits_with_latents` and every caption (in batches, on the encoders' device)."""
    latents, text = {}, {}
    for split in splits_with_latents:
        parts = []
        for start in range(0, len(images[split]), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[split][start : start + batch_size]))
            parts.append(_to_numpy(encode_pixels(vae, to_pixels(batch, resolution))))
            progress(len(batch))
        latents[split] = np.concatenate(parts)
    for split, caps in captions.items():
        parts = [_to_numpy(encode_ids(text_encoder, tokenize(tokenizer, caps[s : s + batch_size]))) for s in range(0, len(caps), batch_size)]
        text[split] = np.concatenate(parts)
    empty = _to_numpy(encode_ids(text_encoder, tokenize(tokenizer, [""])))
    return Encodings(latents, text, empty, text_encoder.dtype)


def _write(folder: Path, enc: Encodings, payload: dict) -> None:
    for split, array in enc.latents.items():
        np.save(folder / f"{split}_latents.npy", array)
    for split, array in enc.text.items():
        np.save(folder / f"{split}_text.npy", array)
    np.save(folder / "empty_text.npy", enc.empty_text)
    info = {**payload, "latent_shape": list(next(iter(enc.latents.values())).shape[1:]), "text_shape": list(enc.empty_text.shape[1:]),
            "counts": {s: len(a) for s, a in enc.text.items()}}
    (folder / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")


def read_cache(folder: Path, dtype: torch.dtype) -> Encodings | None:
    """The cached encodings (memory-mapped), or None when the folder is absent or incomplete."""
    if not (folder / "info.json").is_file():
        return None
    try:
        latents = {s: np.load(folder / f"{s}_latents.npy", mmap_mode="r") for s in LATENT_SPLITS}
        text = {s: np.load(folder / f"{s}_text.npy", mmap_mode="r") for s in TEXT_SPLITS}
        empty = np.load(folder / "empty_text.npy")
    except (OSError, ValueError):
        return None
    return Encodings(latents, text, empty, dtype)


def cached_encodings(cache_root: Path, key: str, payload: dict, compute: Callable[[], Encodings], dtype: torch.dtype) -> tuple[Encodings, bool]:
    """(encodings, hit): read `cache_root/key`, or compute, write atomically and read back."""
    folder = Path(cache_root) / key
    found = read_cache(folder, dtype)
    if found is not None:
        return found, True
    enc = compute()
    tmp = folder.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        _write(tmp, enc, payload)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "info.json").is_file():  # another process finished first: use its copy
                raise
    except OSError as exc:
        raise UserError(
            f"cannot write the latent cache under {cache_root} ({exc.strerror or exc}); free disk space, "
            "pass another --data-dir or set t2i.cache_latents=false"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_cache(folder, dtype) or enc, False
