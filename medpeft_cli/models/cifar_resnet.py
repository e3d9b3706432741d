"""The CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Sec. 4.2.

Written from the paper's description: depth 6n + 2 (20, 32, 44, 56, 110 for n = 3, 5, 7, 9, 18). A 3x3
stem convolution with 16 channels, then three stages of n basic blocks with 16, 32 and 64 channels (the
first block of stages 2 and 3 halves the resolution), global average pooling and a Linear classifier.
A basic block is 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the shortcut, then ReLU. Where a block
changes shape, the shortcut is the paper's option A: parameter-free, every second pixel, the new channels
zero-padded (half on each side). Module names follow the published CIFAR-10 checkpoints (conv1, bn1,
layer1..layer3 of blocks with conv1/bn1/conv2/bn2, classifier `linear`), so those files load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTHS = (20, 32, 44, 56, 110)
WIDTHS = (16, 32, 64)
NATIVE_SIZE = 32
# The normalisation the published CIFAR-10 weights were trained with (docs/backbones.md).
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PadShortcut(nn.Module):
    """Option A: subsample by taking every second pixel, zero-pad `extra` channels on each side."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        changes_shape = stride != 1 or cin != cout
        self.shortcut = PadShortcut((cout - cin) // 2) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """images (B, 3, H, W) -> logits (B, num_classes); native input 32 px, any size works (global pooling)."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (e.g. {', '.join(map(str, DEPTHS))}), not {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.layer1 = self._stage(WIDTHS[0], WIDTHS[0], n, 1)
        self.layer2 = self._stage(WIDTHS[0], WIDTHS[1], n, 2)
        self.layer3 = self._stage(WIDTHS[1], WIDTHS[2], n, 2)
        self.linear = nn.Linear(WIDTHS[2], num_classes)
        # Read by the training loop (input normalisation), as timm models carry it.
        self.pretrained_cfg = {"mean": MEAN, "std": STD, "input_size": (3, NATIVE_SIZE, NATIVE_SIZE), "num_classes": num_classes}
        for module in self.modules():  # He et al.'s initialisation ("MSRA", their ref. [13])
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout, 1) for _ in range(blocks - 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(images)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(x.mean(dim=(2, 3)))
