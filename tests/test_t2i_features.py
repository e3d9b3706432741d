"""FID/KID scoring and the pluggable feature extractors of the text-to-image track."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpeft_cli.errors import UserError


def test_fid_and_kid_are_near_zero_for_one_distribution_and_grow_with_the_shift():
    from medpeft_cli.t2i.generate import fid_kid

    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g, dtype=torch.float64)
    other = torch.randn(200, 8, generator=g, dtype=torch.float64)  # a second sample of the same distribution
    assert abs(fid_kid(real, real.clone())[0]) < 1e-6  # identical feature sets: FID 0
    same, near, far = fid_kid(real, other), fid_kid(real, other + 0.5), fid_kid(real, other + 2.0)
    assert same[0] < 0.5 and abs(same[1]) < 0.05
    assert same[0] < near[0] < far[0] and same[1] < near[1] < far[1]
    assert fid_kid(real, other + 2.0) == far  # KID's random subsets are seeded: a rescore repeats


def test_timm_extractor_random_is_seeded_and_sized_to_the_model():
    from medpeft_cli.t2i.features import build_extractor

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    first = build_extractor("test_vit@random")
    assert first.dim == 64 and first.input_size == 160 and "random-init (seed 0)" in first.source
    feats = first(images)
    assert feats.shape == (3, 64) and feats.dtype == torch.float64
    assert torch.equal(build_extractor("test_vit@random")(images), feats)  # same feature space in every run


def test_unknown_or_unavailable_extractors_are_one_line(monkeypatch, tmp_path):
    from medpeft_cli.t2i.features import build_extractor

    with pytest.raises(UserError, match="unknown FID feature extractor 'no_such_net'"):
        build_extractor("no_such_net")
    with pytest.raises(UserError, match="inception takes no @weights"):
        build_extractor("inception@random")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="Inception-v3 weights .* medpeft is offline"):
        build_extractor("inception")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="could not load pretrained weights for test_vit"):
        build_extractor("test_vit")  # pretrained weights are not cached: no silent random init


def test_generation_noise_seeds_are_distinct_per_seed_and_prompt():
    from medpeft_cli.t2i.generate import image_seed

    seeds = {image_seed(s, i) for s in range(4) for i in range(1000)}
    assert len(seeds) == 4000 and max(seeds) < 2**32
    with pytest.raises(ValueError):
        image_seed(5000, 0)
