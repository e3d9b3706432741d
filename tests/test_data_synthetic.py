"""synthetic-lesions: determinism, cache, shapes, class balance, and that shape/texture (not colour) is the signal."""

import hashlib
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import medpeft_cli.data.synthetic as synthetic
from medpeft_cli.data import get_dataset_entry, load_dataset
from medpeft_cli.data.registry import SplitSizes
from medpeft_cli.errors import UserError

ENTRY = get_dataset_entry("synthetic-lesions")
# The bytes of the default dataset. If this changes, the generator changed: add it as a new version
# in synthetic.GENERATORS and keep lesions-v1 as it is (cached files and published results use it).
PINNED_CHECKSUM = "sha256:b5f6467db1ac562994f7c6a9a2e8e8a13fbdcea14451d6dd699a161508341821"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def bundle(data_dir):
    return load_dataset("synthetic-lesions", data_dir)


@pytest.fixture
def small_entry():
    return ENTRY.model_copy(update={"split_sizes": SplitSizes(train=40, val=20, test=20)})


def test_shapes_dtypes_and_sizes(bundle):
    assert bundle.name == "synthetic-lesions" and bundle.task == "multiclass"
    assert bundle.class_names == synthetic.CLASS_NAMES and bundle.num_classes == 4
    for name, n in (("train", 2400), ("val", 600), ("test", 600)):
        split = bundle.splits[name]
        assert split.images.shape == (n, 64, 64, 3) and split.images.dtype == np.uint8
        assert split.labels.shape == (n,) and split.labels.dtype == np.int64
        assert split.ids[0] == f"{name}-000000" and len(set(split.ids.tolist())) == n


def test_every_class_in_every_split_with_mild_imbalance(bundle):
    for split in bundle.splits.values():
        counts = np.bincount(split.labels, minlength=4)
        assert counts.tolist() == synthetic.class_counts(len(split)).tolist()
        assert counts.min() > 0 and counts.max() / counts.min() <= 3


def test_pinned_checksum_and_source(bundle):
    assert bundle.checksum == PINNED_CHECKSUM
    assert bundle.source == "generated (synthetic-lesions lesions-v1, seed 0)"


def test_second_load_comes_from_cache(bundle, data_dir, monkeypatch):
    path = synthetic.cache_path(ENTRY, data_dir)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated although the cache was valid")

    monkeypatch.setitem(synthetic.GENERATORS, ENTRY.generator, no_generation)
    again = load_dataset("synthetic-lesions", data_dir)
    assert again.checksum == bundle.checksum
    for name in bundle.splits:
        np.testing.assert_array_equal(again.splits[name].images, bundle.splits[name].images)
        np.testing.assert_array_equal(again.splits[name].labels, bundle.splits[name].labels)


def test_same_seed_same_data_other_seed_differs():
    sizes = {"train": 30, "val": 10, "test": 10}
    a = synthetic.generate_lesions(3, sizes)
    b = synthetic.generate_lesions(3, sizes)
    c = synthetic.generate_lesions(4, sizes)
    for name in sizes:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert not np.array_equal(a["train"][0], c["train"][0])


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 SIMD levels only")
def test_same_bytes_without_simd():
    """The bytes must not depend on which SIMD kernels numpy picks on this CPU."""
    code = (
        "from medpeft_cli.data.synthetic import generate_lesions;"
        "a = generate_lesions(5, {'train': 40, 'val': 20, 'test': 20});"
        "import hashlib; print(hashlib.sha256(b''.join(a[s][0].tobytes() for s in a)).hexdigest())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "NPY_DISABLE_CPU_FEATURES": "X86_V3"},
    )
    if run.returncode != 0:
        pytest.skip(f"numpy cannot disable X86_V3 here: {run.stderr.strip().splitlines()[-1:]}")
    here = synthetic.generate_lesions(5, {"train": 40, "val": 20, "test": 20})
    assert run.stdout.strip() == hashlib.sha256(b"".join(here[s][0].tobytes() for s in here)).hexdigest()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-checksum"])
def test_damaged_cache_is_regenerated(small_entry, tmp_path, damage):
    first = synthetic.load_synthetic(small_entry, tmp_path)
    path = synthetic.cache_path(small_entry, tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not an npz")
    else:
        with np.load(path) as npz:
            arrays = dict(npz)
        arrays["train_labels"] = (arrays["train_labels"] + 1) % 4
        np.savez(path, **arrays)
    again = synthetic.load_synthetic(small_entry, tmp_path)
    assert again.checksum == first.checksum
    assert synthetic._read_cache(path) is not None  # rewritten


def test_unwritable_cache_still_loads(small_entry, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    bundle = synthetic.load_synthetic(small_entry, blocker)  # cannot create a cache dir under a file
    assert len(bundle.splits["train"]) == 40


def test_registry_classes_must_match_generator(small_entry, tmp_path):
    entry = small_entry.model_copy(update={"classes": ["a", "b", "c", "d"]})
    with pytest.raises(UserError, match="fix the classes in datasets.yaml"):
        synthetic.load_synthetic(entry, tmp_path)


# --- what the classes are made of -----------------------------------------------------------------


def _balanced_accuracy(y, pred, k=4):
    return float(np.mean([np.mean(pred[y == c] == c) for c in range(k)]))


def _mean_rgb(images):
    return images.reshape(len(images), -1, 3).mean(axis=1)


def test_mean_colour_is_not_the_signal(bundle):
    """Softmax regression on per-image mean RGB stays near chance (0.25)."""
    train, test = bundle.splits["train"], bundle.splits["test"]
    xtr, xte = _mean_rgb(train.images), _mean_rgb(test.images)
    mu, sd = xtr.mean(0), xtr.std(0)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    y = train.labels
    onehot = np.eye(4)[y]
    weight = (1.0 / np.bincount(y))[y]
    weight /= weight.sum()  # class-balanced loss, so the majority class is no shortcut
    w, b = np.zeros((3, 4)), np.zeros(4)
    for _ in range(500):
        z = xtr @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) * weight[:, None]
        w -= 1.0 * xtr.T @ g
        b -= 1.0 * g.sum(0)
    logreg = _balanced_accuracy(test.labels, (xte @ w + b).argmax(1))
    centroids = np.stack([xtr[y == c].mean(0) for c in range(4)])
    nearest = _balanced_accuracy(test.labels, ((xte[:, None] - centroids) ** 2).sum(-1).argmin(1))
    assert logreg <= 0.45 and nearest <= 0.45, (logreg, nearest)


def _box(a, k):
    """k x k mean filter of (N, H, W), edges padded."""
    p = k // 2
    c = np.pad(np.pad(a, ((0, 0), (p, p), (p, p)), mode="edge").cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    return (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]) / (k * k)


def _features(images):
    """(interior high-frequency energy, boundary compactness perimeter^2/area) per image."""
    gray = images.astype(np.float64).mean(-1)
    smooth = _box(gray, 7)
    border = np.concatenate([smooth[:, :4].reshape(len(gray), -1), smooth[:, -4:].reshape(len(gray), -1)], 1)
    background = np.median(border, 1)[:, None, None]
    darkest = smooth.min((1, 2), keepdims=True)
    lesion = smooth < background - 0.5 * (background - darkest)
    interior = _box(lesion.astype(np.float64), 5) > 0.999  # away from the boundary
    residual = gray - _box(gray, 3)
    energy = (residual**2 * interior).sum((1, 2)) / np.maximum(interior.sum((1, 2)), 1)
    m = lesion
    core = m[:, 1:-1, 1:-1] & m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:]
    perimeter = m[:, 1:-1, 1:-1].sum((1, 2)) - core.sum((1, 2))
    return energy, perimeter**2 / np.maximum(m.sum((1, 2)), 1)


def _best_threshold(x, positive):
    candidates = np.quantile(x, np.linspace(0.02, 0.98, 97))
    return candidates[int(np.argmax([np.mean((x > t) == positive) for t in candidates]))]


@pytest.mark.slow
def test_shape_and_texture_are_the_signal(bundle):
    """Two hand-made features, thresholded on train, recover each factor and the class on test."""
    train, test = bundle.splits["train"], bundle.splits["test"]
    textured = np.isin(np.arange(4), [1, 3])
    irregular = np.isin(np.arange(4), [2, 3])
    assert [n.endswith("textured") for n in synthetic.CLASS_NAMES] == textured.tolist()
    assert [n.startswith("irregular") for n in synthetic.CLASS_NAMES] == irregular.tolist()

    energy_tr, compact_tr = _features(train.images)
    energy_te, compact_te = _features(test.images)
    t_energy = _best_threshold(energy_tr, textured[train.labels])
    t_compact = _best_threshold(compact_tr, irregular[train.labels])
    texture_pred, shape_pred = energy_te > t_energy, compact_te > t_compact
    assert np.mean(texture_pred == textured[test.labels]) >= 0.9
    assert np.mean(shape_pred == irregular[test.labels]) >= 0.8
    class_pred = 2 * shape_pred + texture_pred  # index order of CLASS_NAMES
    assert _balanced_accuracy(test.labels, class_pred) >= 0.7
