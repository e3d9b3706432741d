"""Throughput of `medpeft datasets prepare`: images decoded + resized + written per second.

Writes N synthetic JPEG photographs (default 600 x 450, the HAM10000 size) as an ImageFolder tree
in a temporary folder, then times `prepare` at the requested resolution(s). Not part of the tests.

    python benchmarks/data_prepare.py --images 2000 --resolution 224 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medpeft_cli.data.prepare import prepare


def make_tree(root: Path, n: int, size: tuple[int, int], classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    for i in range(n):
        image = np.roll(base, shift=i * 7, axis=1)  # distinct pixels per file; encoding cost like a photograph
        path = root / f"class{i % classes}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--height", type=int, default=450)
    parser.add_argument("--resolution", type=int, action="append", help="repeat for several (default 224)")
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: CPU cores, at most 8)")
    args = parser.parse_args()
    resolutions = args.resolution or [224]
    with tempfile.TemporaryDirectory() as tmp:
        raw, data = Path(tmp) / "raw", Path(tmp) / "data"
        t0 = time.perf_counter()
        make_tree(raw, args.images, (args.width, args.height))
        print(f"wrote {args.images} JPEGs of {args.width}x{args.height} in {time.perf_counter() - t0:.1f} s")
        result = prepare("bench", raw, data, resolutions, source="imagefolder", workers=args.workers)
        size = sum(f.stat().st_size for d in result.dirs for f in d.iterdir())
        print(
            f"prepare: {result.n_images} images -> {', '.join(f'{r} px' for r in resolutions)} in {result.seconds:.2f} s = "
            f"{result.images_per_s:.0f} images/s ({args.workers or min(os.cpu_count() or 1, 8)} threads, {os.cpu_count()} CPUs); "
            f"{size / 2**20:.0f} MiB written"
        )


if __name__ == "__main__":
    main()
