"""Defaults of a text-to-image run that depend on the pipeline (no torch here: the CLI resolves specs).

Real pipelines get the study's evaluation protocol: 1,000 generated images per seed from held-out
prompts, 50 sampling steps, FID/KID in Inception-v3 features (the standard, comparable with published
numbers; its weights need a one-time download). The embedded `tiny-sd` is a random-init smoke-test
pipeline, so it gets a profile that finishes on a laptop CPU and needs no download: 100 images per
seed, 20 steps and a random-init timm test model as feature extractor. Its FID values only show the
pipeline works; they are comparable between tiny-sd runs and nothing else.
"""

from __future__ import annotations

from typing import Any

TINY_SD = "tiny-sd"

STUDY_PROFILE = {"num_inference_steps": 50, "fid_samples": 1000, "fid_features": "inception"}
SMOKE_PROFILE = {"num_inference_steps": 20, "fid_samples": 100, "fid_features": "test_vit@random"}


def fill_defaults(t2i: dict[str, Any], backbone: str) -> dict[str, Any]:
    """The t2i options with every None replaced by the pipeline's default (the filled values enter the run key)."""
    profile = SMOKE_PROFILE if backbone == TINY_SD else STUDY_PROFILE
    return {k: (profile[k] if v is None and k in profile else v) for k, v in t2i.items()}
