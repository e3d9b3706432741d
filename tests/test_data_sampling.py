"""stratified_subset: per-class proportions, nesting, determinism, invalid fractions."""

import math
import subprocess
import sys

import numpy as np
import pytest

from medpeft_cli.data import stratified_subset
from medpeft_cli.errors import UserError

FRACTIONS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0]


@pytest.fixture
def labels():
    counts = [700, 400, 600, 300, 3]  # imbalanced, plus a tiny class
    y = np.repeat(np.arange(len(counts)), counts)
    return y[np.random.default_rng(123).permutation(len(y))]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_per_class_proportions(labels, fraction):
    idx = stratified_subset(labels, fraction, seed=0)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0), "indices must be sorted and unique"
    for cls, n in zip(*np.unique(labels, return_counts=True), strict=True):
        expected = max(1, math.floor(fraction * n + 0.5))
        assert np.sum(labels[idx] == cls) == expected


def test_full_fraction_returns_everything(labels):
    np.testing.assert_array_equal(stratified_subset(labels, 1.0, seed=5), np.arange(len(labels)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subsets_are_nested(labels, seed):
    subsets = [set(stratified_subset(labels, f, seed).tolist()) for f in FRACTIONS]
    for small, large in zip(subsets[:-1], subsets[1:], strict=True):
        assert small <= large


def test_deterministic_and_seed_dependent(labels):
    a = stratified_subset(labels, 0.1, seed=7)
    np.testing.assert_array_equal(a, stratified_subset(labels.copy(), 0.1, seed=7))
    assert not np.array_equal(a, stratified_subset(labels, 0.1, seed=8))


def test_same_result_in_another_process(labels):
    code = (
        "import numpy as np; from medpeft_cli.data import stratified_subset;"
        "y = np.repeat(np.arange(3), [50, 30, 20]);"
        "print(','.join(map(str, stratified_subset(y, 0.2, seed=3))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    here = stratified_subset(np.repeat(np.arange(3), [50, 30, 20]), 0.2, seed=3)
    assert out == ",".join(map(str, here))


def test_pinned_output():
    # Guards against a numpy change silently altering published subsets.
    y = np.repeat(np.arange(2), [10, 10])
    assert stratified_subset(y, 0.3, seed=0).tolist() == [1, 2, 3, 11, 13, 15]


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_invalid_fraction_is_user_error(labels, fraction):
    with pytest.raises(UserError, match=r"data fraction must be .* \(0, 1\]") as err:
        stratified_subset(labels, fraction, seed=0)
    assert "\n" not in str(err.value)


def test_empty_labels():
    assert stratified_subset(np.array([], dtype=np.int64), 0.5, seed=0).size == 0
