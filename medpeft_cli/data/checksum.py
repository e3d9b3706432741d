"""A deterministic fingerprint of a dataset's splits (the provenance of every result row)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from .bundle import SPLIT_NAMES, Split

_FORMAT = b"medpeft-dataset-checksum-v1"


def _field(h, data: bytes) -> None:
    # Length-prefix every field so no two different datasets hash the same byte stream.
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def dataset_checksum(splits: Mapping[str, Split]) -> str:
    """sha256 over split name, ids, labels, image shape + bytes (and groups / metadata where present),
    for train, val, test in order."""
    h = hashlib.sha256()
    h.update(_FORMAT)
    for name in SPLIT_NAMES:
        split = splits[name]
        _field(h, name.encode())
        _field(h, "\n".join(split.ids.tolist()).encode())
        _field(h, np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
        _field(h, ",".join(map(str, split.images.shape)).encode())
        _field(h, np.ascontiguousarray(split.images, dtype=np.uint8).data)
        # Groups and metadata only where a dataset has them, so checksums of datasets without them
        # (synthetic-lesions, MedMNIST) are the same as before these fields existed.
        if split.groups is not None:
            _field(h, b"groups")
            _field(h, "\n".join(split.groups.tolist()).encode())
        for column in sorted(split.meta):
            _field(h, f"meta:{column}".encode())
            _field(h, "\n".join(split.meta[column].tolist()).encode())
    return "sha256:" + h.hexdigest()
