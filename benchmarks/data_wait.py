"""Fraction of a training step spent waiting for data, with medpeft's own loader and input transform.

One epoch-like loop over uint8 images held in memory (`train/batches.make_loader`, as `medpeft
train` builds it): the time inside the loader's `next()` is data wait; the rest (uint8 -> float,
resize, normalise, forward, backward, AdamW step) is compute. Target: <= 5 % for in-memory data.

    python benchmarks/data_wait.py                       # synthetic-lesions (64 px), timm test_vit
    python benchmarks/data_wait.py --dataset breastmnist --data-dir ../shared/data/breastmnist
    python benchmarks/data_wait.py --prepared            # read the arrays through a memory map
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic-lesions")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--backbone", default="test_vit", help="timm model (random init)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--prepared", action="store_true", help="write the data in prepared form first and read it memory-mapped")
    args = parser.parse_args()

    import timm
    import torch
    import torch.nn.functional as F

    from medpeft_cli.data import load_dataset
    from medpeft_cli.train.batches import InputTransform, make_loader

    data = load_dataset(args.dataset, args.data_dir)
    if args.prepared:
        from medpeft_cli.data.bundle import SPLIT_NAMES
        from medpeft_cli.data.prepared import load_prepared, write_prepared_dir

        tmp = Path(tempfile.mkdtemp()) / "bench"
        parts = [data.splits[s] for s in SPLIT_NAMES]
        ids = np.concatenate([p.ids for p in parts])
        columns = {
            "index": np.arange(len(ids)), "id": ids, "split": np.concatenate([np.full(len(p), s) for s, p in zip(SPLIT_NAMES, parts)]),
            "label": np.concatenate([p.labels for p in parts]), "label_name": np.full(len(ids), ""), "group": ids, "path": ids,
        }
        res = parts[0].images.shape[1]

        def fill(out):
            out[:] = np.concatenate([p.images for p in parts])

        write_prepared_dir(tmp, res, fill, columns, data.class_names, name="bench", task="multiclass", source="benchmark",
                           subgroups=(), split_how={"method": "official"}, group_by=None, raw_root=tmp, extra_info={})
        data = load_prepared(tmp)
    train = data.splits["train"]
    model = timm.create_model(args.backbone, pretrained=False, num_classes=data.num_classes, img_size=args.image_size) if "vit" in args.backbone else timm.create_model(args.backbone, pretrained=False, num_classes=data.num_classes)
    cfg = model.pretrained_cfg
    transform = InputTransform(args.image_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = make_loader(train.images, train.labels, args.batch_size, True, seed=0)
    model.train()

    wait = compute = 0.0
    steps = images = 0
    while steps < args.warmup + args.steps:
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch_images, labels, _ = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            loss = F.cross_entropy(model(transform(batch_images)), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            steps += 1
            if steps > args.warmup:
                wait, compute, images = wait + (t1 - t0), compute + (t2 - t1), images + len(labels)
            if steps >= args.warmup + args.steps:
                break
    total = wait + compute
    # Where the wait goes: one batch gathered by make_loader's dataset (torch indexing of the uint8
    # tensor) vs. the same gather done by numpy on the array it wraps.
    rng = np.random.default_rng(0)
    idx = sorted(rng.choice(len(train), size=min(args.batch_size, len(train)), replace=False).tolist())
    t0 = time.perf_counter()
    for _ in range(20):
        loader.dataset.__getitems__(idx)
    t1 = time.perf_counter()
    array = np.asarray(train.images)
    for _ in range(20):
        torch.from_numpy(array[np.asarray(idx)])
    t2 = time.perf_counter()
    print(f"one batch: make_loader's dataset {1000 * (t1 - t0) / 20:.2f} ms, numpy gather of the same rows {1000 * (t2 - t1) / 20:.2f} ms")
    print(
        f"{args.dataset} ({'prepared, memory-mapped' if args.prepared else 'in memory'}), {args.backbone} at {args.image_size} px, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads: {args.steps} steps, {images / total:.0f} images/s; "
        f"data wait {1000 * wait / args.steps:.2f} ms/step of {1000 * total / args.steps:.1f} ms = {100 * wait / total:.2f} %"
    )


if __name__ == "__main__":
    main()
