"""Split and subset properties: group disjointness, stratification, nesting, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medpeft_cli.data import stratified_subset
from medpeft_cli.data.sampling import few_shot_subset
from medpeft_cli.data.splits import grouped_stratified_split, overlapping_groups, split_checksum
from medpeft_cli.errors import UserError

FRACTIONS = (0.7, 0.1, 0.2)
FAST = settings(max_examples=40, deadline=None)


@st.composite
def grouped_labels(draw):
    """Samples with labels and group ids; a group may hold several samples (and labels)."""
    n_groups = draw(st.integers(3, 60))
    sizes = draw(st.lists(st.integers(1, 4), min_size=n_groups, max_size=n_groups))
    k = draw(st.integers(2, 5))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=sum(sizes), max_size=sum(sizes)))
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    return np.array(labels, dtype=np.int64), groups, k


@FAST
@given(grouped_labels(), st.integers(0, 2**16))
def test_every_group_in_exactly_one_split(data, seed):
    labels, groups, k = data
    split = grouped_stratified_split(labels, groups, FRACTIONS, seed, k)
    assert split.shape == labels.shape and set(np.unique(split)) <= {0, 1, 2}
    assert overlapping_groups({s: groups[split == i] for i, s in enumerate(("train", "val", "test"))}) == {}


@FAST
@given(grouped_labels(), st.integers(0, 2**16), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_row_order(data, seed, rnd):
    labels, groups, k = data
    a = grouped_stratified_split(labels, groups, FRACTIONS, seed, k)
    perm = np.array(rnd.sample(range(len(labels)), len(labels)))
    b = grouped_stratified_split(labels[perm], groups[perm], FRACTIONS, seed, k)
    assert np.array_equal(a[perm], b)


@FAST
@given(st.lists(st.integers(0, 3), min_size=20, max_size=400), st.integers(0, 2**16))
def test_one_sample_per_group_is_stratified(labels, seed):
    labels = np.array(labels, dtype=np.int64)
    groups = np.array([f"s{i}" for i in range(len(labels))])
    split = grouped_stratified_split(labels, groups, FRACTIONS, seed, 4)
    for c in np.unique(labels):
        n_c = int(np.sum(labels == c))
        for i, f in enumerate(FRACTIONS):
            assert abs(int(np.sum((labels == c) & (split == i))) - f * n_c) < 2  # within rounding of the target


def test_grouped_split_is_close_to_the_fractions_and_seed_dependent():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(2000)], rng.integers(1, 4, 2000))
    labels = rng.integers(0, 3, len(groups))
    a = grouped_stratified_split(labels, groups, FRACTIONS, 0, 3)
    for i, f in enumerate(FRACTIONS):
        assert abs(np.mean(a == i) - f) < 0.01
    assert not np.array_equal(a, grouped_stratified_split(labels, groups, FRACTIONS, 1, 3))


def test_pinned_split():
    # Guards against a numpy or code change silently altering published splits.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    groups = np.array(["a", "a", "b", "c", "d", "e", "e", "f", "g", "h"])
    assert grouped_stratified_split(labels, groups, FRACTIONS, 0, 2).tolist() == [0, 0, 0, 2, 0, 0, 0, 1, 2, 0]


def test_split_checksum_ignores_order_but_not_membership():
    base = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert split_checksum(base) == split_checksum({"test": ["d"], "val": ["c"], "train": ["b", "a"]})
    assert split_checksum(base) != split_checksum({"train": ["a"], "val": ["b", "c"], "test": ["d"]})


# ---- low-data subsets ------------------------------------------------------------------------

labels_strategy = st.lists(st.integers(0, 4), min_size=10, max_size=300).map(lambda v: np.array(v, dtype=np.int64))


@FAST
@given(labels_strategy, st.integers(0, 2**16))
def test_fraction_subsets_nested_and_deterministic(labels, seed):
    subsets = [stratified_subset(labels, f, seed) for f in (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)]
    for small, large in zip(subsets, subsets[1:]):
        assert set(small.tolist()) <= set(large.tolist())
    assert np.array_equal(subsets[2], stratified_subset(labels.copy(), 0.1, seed))


@FAST
@given(labels_strategy, st.integers(0, 2**16))
def test_shots_exact_nested_and_deterministic(labels, seed):
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    previous = set()
    for k in range(1, min(smallest, 5) + 1):
        idx = few_shot_subset(labels, k, seed)
        assert all(np.sum(labels[idx] == c) == k for c in np.unique(labels))
        assert previous <= set(idx.tolist())
        previous = set(idx.tolist())
        assert np.array_equal(idx, few_shot_subset(labels.copy(), k, seed))


def test_shots_equal_the_matching_fraction_subset():
    labels = np.repeat(np.arange(3), [40, 40, 40])
    assert np.array_equal(few_shot_subset(labels, 4, seed=2), stratified_subset(labels, 0.1, seed=2))


@pytest.mark.parametrize("shots", [0, -1, 2.5, True, "3"])
def test_invalid_shots(shots):
    with pytest.raises(UserError, match="--shots must be a whole number"):
        few_shot_subset(np.array([0, 1]), shots, 0)


def test_too_few_images_for_shots_names_the_class():
    with pytest.raises(UserError, match="class 'rare' has only 2 training images, fewer than --shots 3"):
        few_shot_subset(np.array([0, 0, 0, 1, 1]), 3, 0, ["common", "rare"])
