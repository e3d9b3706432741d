"""Nested, stratified subsets of a training split (the data-volume study)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from medpeft_cli.errors import UserError


def check_fraction(fraction: float) -> float:
    """Return `fraction` as a float if it is in (0, 1]; otherwise raise UserError."""
    ok = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool)
    if not ok or not math.isfinite(fraction) or not 0.0 < fraction <= 1.0:
        raise UserError(f"data fraction must be a number in (0, 1] (e.g. 0.1 for 10 %), got {fraction!r}")
    return float(fraction)


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of ~`fraction` of each class (rounded, at least 1 per class present).

    For the same (labels, seed) a smaller fraction gives a subset of a larger one: each class is
    ordered once by a seeded random key and every fraction takes a prefix of that order.
    """
    fraction = check_fraction(fraction)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)

    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):  # sorted, so the rng draws happen in a fixed order
        members = np.flatnonzero(labels == cls)
        # argsort of uniform keys rather than rng.permutation: the uniform stream is the part of
        # numpy's Generator least likely to change between numpy versions.
        order = np.argsort(rng.random(len(members)), kind="stable")
        take = max(1, math.floor(fraction * len(members) + 0.5))
        chosen.append(members[order[:take]])
    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def check_shots(shots: int) -> int:
    """Return `shots` if it is a positive int; otherwise raise UserError."""
    if isinstance(shots, bool) or not isinstance(shots, numbers.Integral) or shots < 1:
        raise UserError(f"--shots must be a whole number of images per class >= 1, got {shots!r}")
    return int(shots)


def few_shot_subset(labels: np.ndarray, shots: int, seed: int, class_names: list[str] | None = None) -> np.ndarray:
    """Sorted int64 indices of exactly `shots` samples of every class present (k-shot training set).

    Uses the same seeded per-class order as stratified_subset, so subsets are nested in k (the
    5-shot set contains the 1-shot set) and depend only on (labels, shots, seed). A class with fewer
    than `shots` samples is a UserError: taking all of it would silently change the regime.
    """
    shots = check_shots(shots)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = np.argsort(rng.random(len(members)), kind="stable")
        if len(members) < shots:
            name = class_names[int(cls)] if class_names else str(int(cls))
            raise UserError(
                f"class {name!r} has only {len(members)} training images, fewer than --shots {shots}; "
                f"use --shots {len(members)} or fewer"
            )
        chosen.append(members[order[:shots]])
    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)
