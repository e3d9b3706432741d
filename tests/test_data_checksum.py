"""dataset_checksum: stable for equal content, changed by any change to ids, labels, pixels or splits."""

import numpy as np
import pytest

from medpeft_cli.data import Split
from medpeft_cli.data.bundle import make_split
from medpeft_cli.data.checksum import dataset_checksum


def _splits(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", 6), ("val", 3), ("test", 3)):
        images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
        out[name] = make_split(name, images, rng.integers(0, 2, n))
    return out


def _replace(splits, name, **changes):
    s = splits[name]
    fields = {"images": s.images.copy(), "labels": s.labels.copy(), "ids": s.ids.copy()}
    fields.update(changes)
    return {**splits, name: Split(**fields)}


def test_equal_content_equal_checksum():
    a, b = dataset_checksum(_splits()), dataset_checksum(_splits())
    assert a == b and a.startswith("sha256:") and len(a) == len("sha256:") + 64


def test_split_key_order_does_not_matter():
    s = _splits()
    assert dataset_checksum({k: s[k] for k in ("test", "val", "train")}) == dataset_checksum(s)


@pytest.mark.parametrize("change", ["pixel", "label", "id", "shape", "swap"])
def test_any_change_changes_checksum(change):
    s = _splits()
    base = dataset_checksum(s)
    train = s["train"]
    if change == "pixel":
        images = train.images.copy()
        images[0, 0, 0, 0] ^= 1
        changed = _replace(s, "train", images=images)
    elif change == "label":
        changed = _replace(s, "train", labels=1 - train.labels)
    elif change == "id":
        ids = train.ids.copy()
        ids[0] = "train-999999"
        changed = _replace(s, "train", ids=ids)
    elif change == "shape":
        changed = _replace(s, "train", images=train.images.reshape(6, 2, 8, 3))
    else:  # the same samples assigned to different splits
        changed = {"train": s["val"], "val": s["train"], "test": s["test"]}
    assert dataset_checksum(changed) != base


def test_split_rejects_inconsistent_arrays():
    with pytest.raises(ValueError):
        Split(images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(3, np.int64), ids=np.array(["a", "b"]))
    with pytest.raises(ValueError):
        Split(images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2, np.int64), ids=np.array(["a", "b"]))
