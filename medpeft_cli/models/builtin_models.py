"""medpeft's own backbones, named like timm models (a name here wins over timm): the table, torch-free.

The CIFAR ResNets (models/cifar_resnet.py) with the CIFAR-10 weights of Yerlan Idelbayev,
github.com/akamaster/pytorch_resnet_cifar10 (BSD-2-Clause). ResNet-20's file ships inside the package
(resources/weights/cifar10_resnet20/); the other depths' files are downloaded once into torch's hub cache.
File names carry the first 8 hex digits of the file's sha256 (torch hub's convention); names and URLs as
listed in that repository's README (commit 820f98cf5a332dacf31e4b41f1db981f5178f660).
"""

from __future__ import annotations

from dataclasses import dataclass

CIFAR_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
CIFAR_ORIGIN = "github:akamaster/pytorch_resnet_cifar10"


@dataclass(frozen=True)
class PretrainedFile:
    file: str  # as published: <name>-<first 8 hex of its sha256>.th
    url: str
    origin: str  # how weights_source names where it came from
    sha256: str | None = None  # the whole digest, where medpeft ships or has checked the file
    packaged: str | None = None  # folder under medpeft_cli/resources/weights/ holding the file

    @property
    def hash_prefix(self) -> str:
        return self.file.rsplit("-", 1)[1].split(".")[0]


@dataclass(frozen=True)
class Builtin:
    name: str
    depth: int
    summary: str
    pretrained: PretrainedFile


def _cifar(depth: int, digest8: str, sha256: str | None = None, packaged: str | None = None) -> Builtin:
    name = f"resnet{depth}-{digest8}.th"
    origin = f"medpeft:{packaged}" if packaged else CIFAR_ORIGIN
    return Builtin(f"cifar_resnet{depth}", depth, f"CIFAR ResNet-{depth}, He et al. 2016", PretrainedFile(name, CIFAR_URL + name, origin, sha256, packaged))


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        _cifar(20, "12fca82f", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", "cifar10_resnet20"),
        _cifar(32, "d509ac18"),
        _cifar(44, "014dd654"),
        _cifar(56, "4bfd9763"),
        _cifar(110, "1d1ed7c2"),
    )
}
