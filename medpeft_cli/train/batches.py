"""In-memory uint8 images served in batches, turned into model input on the device.

The dataset returns whole batches (`__getitems__`), so a step costs one array slice instead of one
Python call per image; conversion to float, resizing and normalisation run on the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class ArrayDataset(Dataset):
    """uint8 images (N, H, W, 3) and int labels; yields (images, labels, sample indices)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images  # numpy (possibly memory-mapped): rows are gathered with numpy, ~100x faster than torch indexing here
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]):
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self.images[idx]), torch.from_numpy(self.labels[idx]), torch.from_numpy(idx)


def _whole_batch(batch):
    return batch


def make_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # Pinned host memory lets the copy to a GPU run asynchronously (Accelerate's non_blocking): a copy from
    # pageable memory would wait for the GPU to finish the previous step, every step.
    return DataLoader(
        ArrayDataset(images, labels), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=_whole_batch,
        pin_memory=torch.cuda.is_available(),
    )  # fmt: skip


class InputTransform:
    """uint8 NHWC batch -> normalised float NCHW at the model's input size, on the batch's device."""

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(self.mean).div_(self.std)  # x is a fresh tensor: in place, same arithmetic, no extra copies
