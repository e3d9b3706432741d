"""Image-caption data for the text-to-image track.

`synthetic-captions` is the embedded captioned set: the synthetic-lesions images (data/synthetic.py,
same generator and seed) with a caption per image that says what the image shows, so a text-to-image
model has something to learn from the text. The caption names the class (round or irregular border,
smooth or textured interior) and two attributes measured on the image itself, the lesion's size
(area of pixels clearly darker than the surrounding skin) and its tone (how much darker), in one of
a few sentence templates drawn from a seeded stream. Real data (mimic-cxr, a manifest with a caption
column) carries its captions as a metadata column; `captions_of` reads and checks them.
"""

from __future__ import annotations

import numpy as np

from medpeft_cli.data.bundle import SPLIT_NAMES, DatasetBundle, Split
from medpeft_cli.data.checksum import dataset_checksum
from medpeft_cli.data.registry import SyntheticEntry
from medpeft_cli.errors import UserError

CAPTION_GENERATOR = "captioned-lesions-v1"
CAPTION = "caption"
SHAPE = {"round-smooth": ("round", "smooth"), "round-textured": ("round", "textured"),
         "irregular-smooth": ("irregular", "smooth"), "irregular-textured": ("irregular", "textured")}
TEMPLATES = (
    "dermoscopy image of a {size} {shape} lesion with a {texture} interior, {tone}",
    "a {tone} {shape} skin lesion, {size}, with {texture} pigment",
    "close-up photo of a {size} {tone} lesion with a {shape} border and a {texture} interior",
)
# Thresholds near the tertiles of the measured attributes (synthetic-lesions, seed 0).
SMALL_AREA, LARGE_AREA = 0.11, 0.15  # share of the image darker than 0.85 x the skin level
DARK_RATIO, LIGHT_RATIO = 0.68, 0.74  # mean lesion luminance / skin luminance


def measure(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(area share, luminance ratio) of the lesion in each uint8 (N, H, W, 3) image."""
    lum = images.astype(np.float32).mean(axis=-1)
    edge = max(2, images.shape[1] // 16)
    border = np.concatenate([lum[:, :edge].reshape(len(lum), -1), lum[:, -edge:].reshape(len(lum), -1),
                             lum[:, :, :edge].reshape(len(lum), -1), lum[:, :, -edge:].reshape(len(lum), -1)], axis=1)
    skin = np.median(border, axis=1)[:, None, None]
    mask = lum < 0.85 * skin
    area = mask.mean(axis=(1, 2))
    inside = np.where(mask, lum, 0).sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1)
    ratio = np.where(mask.any(axis=(1, 2)), inside / skin[:, 0, 0], 1.0)
    return area, ratio


def caption_images(images: np.ndarray, labels: np.ndarray, class_names: list[str], rng: np.random.Generator) -> np.ndarray:
    area, ratio = measure(images)
    size = np.where(area < SMALL_AREA, "small", np.where(area > LARGE_AREA, "large", "medium"))
    tone = np.where(ratio < DARK_RATIO, "dark brown", np.where(ratio > LIGHT_RATIO, "light brown", "brown"))
    template = rng.integers(0, len(TEMPLATES), len(labels))
    captions = []
    for i, label in enumerate(labels):
        shape, texture = SHAPE[class_names[label]]
        captions.append(TEMPLATES[template[i]].format(size=size[i], shape=shape, texture=texture, tone=tone[i]))
    return np.array(captions, dtype=str)


def load_captioned_lesions(entry: SyntheticEntry, data_dir, download: bool = True) -> DatasetBundle:
    """synthetic-captions: the lesion images of `entry`'s seed and size, captioned."""
    from medpeft_cli.data.synthetic import CLASS_NAMES, load_synthetic

    if list(entry.classes or []) != CLASS_NAMES:
        raise UserError(f"datasets.yaml lists classes {entry.classes} for {entry.name}; the captioned lesions use {CLASS_NAMES}")
    images = load_synthetic(entry.model_copy(update={"generator": "lesions-v1", "task": "multiclass"}), data_dir, download)
    splits = {}
    for index, name in enumerate(SPLIT_NAMES):
        split = images.splits[name]
        rng = np.random.default_rng([entry.seed, index, 1])  # the template stream, apart from the image stream
        captions = caption_images(split.images, split.labels, CLASS_NAMES, rng)
        splits[name] = Split(images=split.images, labels=split.labels, ids=split.ids, meta={CAPTION: captions})
    return DatasetBundle(
        name=entry.name, task=entry.task, class_names=list(CLASS_NAMES), splits=splits, checksum=dataset_checksum(splits),
        source=f"generated ({entry.name}: lesions-v1 images + {CAPTION_GENERATOR} captions, seed {entry.seed})",
    )


def captions_of(data: DatasetBundle, split: str, column: str) -> list[str]:
    """The captions of one split; UserError for a captionless dataset or empty captions."""
    meta = data.splits[split].meta
    if column not in meta:
        have = ", ".join(sorted(meta)) or "none"
        raise UserError(
            f"dataset {data.name} has no caption column {column!r} (its metadata columns: {have}); text-to-image runs need "
            "image-caption pairs: use synthetic-captions, mimic-cxr, a manifest with a caption column, or set t2i.caption_column"
        )
    captions = [str(c) for c in meta[column].tolist()]
    empty = sum(1 for c in captions if not c.strip())
    if empty:
        raise UserError(f"{empty} of {len(captions)} {split} images of {data.name} have an empty {column!r}; drop them or fill the captions")
    return captions
