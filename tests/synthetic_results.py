"""Synthetic result rows shaped like real store rows, for the site's tests and benchmarks/site_build.py.

Nothing here is a measurement: dataset names start with ``demo-`` and every row's ``dataset_source``
says ``synthetic``. The numbers follow the shape of the study's findings (more data helps, linear
probing trails, PEFT close to full fine-tuning) so the tables, plots and tests have something
realistic to show. Deterministic for a given seed. What each method is (kind, families, citation,
summary) comes from the method registry; only the invented numbers are kept here.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import Any

from medpeft_cli.methods import get_method, method_catalog as registry_catalog
from medpeft_cli.store.results import COLUMNS

# method -> (trainable share of the backbone, effect on macro-F1): invented, in the shape of the study's results
EFFECTS: dict[str, tuple[float, float]] = {
    "full": (1.0, 0.0),
    "linear": (0.0, -0.09),
    "bitfit": (0.0012, -0.02),
    "layernorm": (0.0004, -0.025),
    "lora": (0.0034, 0.005),
    "dora": (0.0036, 0.008),
    "fact-tt": (0.0008, -0.004),
    "ssf": (0.0023, 0.002),
    "adaptformer": (0.0019, 0.004),
    "vpt-deep": (0.0062, -0.012),
    "ia3": (0.0001, -0.015),
}
# name -> (family, total parameters, feature width)
BACKBONES: dict[str, tuple[str, int, int]] = {
    "vit_base_patch16_224": ("vit", 85_800_000, 768),
    "vit_small_patch16_224": ("vit", 21_700_000, 384),
    "vit_tiny_patch16_224": ("vit", 5_500_000, 192),
    "vit_large_patch16_224": ("vit", 303_300_000, 1024),
    "resnet50": ("cnn", 23_500_000, 2048),
    "resnet18": ("cnn", 11_200_000, 512),
    "convnext_tiny": ("cnn", 27_800_000, 768),
}
# name -> (classes, base macro-F1 with all data, how much it suffers from little data)
DATASETS: dict[str, tuple[tuple[str, ...], float, float]] = {
    "demo-derm": (("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"), 0.72, 0.050),
    "demo-xray": (("normal", "pneumonia"), 0.93, 0.025),
    "demo-ultrasound": (("benign", "malignant", "normal"), 0.84, 0.045),
    "demo-fundus": (("0", "1", "2", "3", "4"), 0.58, 0.040),
    "demo-histo": (("adi", "back", "deb", "lym", "muc", "mus", "norm", "str", "tum"), 0.95, 0.020),
    "demo-ct": (("bladder", "femur-l", "femur-r", "heart", "kidney-l", "kidney-r", "liver", "lung-l", "lung-r", "pancreas", "spleen"), 0.88, 0.030),
}
FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)


def method_catalog() -> list[dict[str, Any]]:
    """The registry's entries of the synthetic methods, as `medpeft report` passes them to build_site(methods=...)."""
    return [m for m in registry_catalog() if m["task"] == "classification" and m["name"] in EFFECTS]


def _clip(x: float) -> float:
    return min(0.999, max(0.001, x))


def _row(rng: random.Random, backbone: str, dataset: str, name: str, fraction: float, seed: int, protocol: int) -> dict[str, Any]:
    share, effect = EFFECTS[name]
    family, total, width = BACKBONES[backbone]
    classes, base, sensitivity = DATASETS[dataset]
    # less data costs more for full fine-tuning than for PEFT (the study's Fig. 1)
    data_cost = sensitivity * math.log(1 / fraction) * (1.25 if name == "full" else 1.0)
    f1 = _clip(base + effect - data_cost + rng.gauss(0, 0.012))
    acc = _clip(f1 + 0.04 + rng.gauss(0, 0.005))
    bal = _clip(f1 + 0.01 + rng.gauss(0, 0.005))
    auroc = _clip(0.5 + 0.5 * math.sqrt(f1) + rng.gauss(0, 0.005))
    head = width * len(classes) + len(classes)
    trainable = int(round(total * share)) + head if name != "full" else total + head
    per_class = [round(_clip(f1 + rng.gauss(0, 0.06)), 4) for _ in classes]
    epochs = 5
    history = []
    for e in range(1, epochs + 1):
        progress = 1 - math.exp(-e)
        history.append(
            {
                "epoch": e,
                "train_loss": round(1.6 * math.exp(-0.45 * e) + 0.1 + rng.gauss(0, 0.01), 4),
                "val_macro_f1": round(_clip(f1 * progress + rng.gauss(0, 0.01)), 4),
                "val_accuracy": round(_clip(acc * progress + rng.gauss(0, 0.01)), 4),
            }
        )
    lr = 1e-4 if name == "full" else 1e-3
    spec = {
        "task": "classification", "dataset": dataset, "backbone": backbone, "weights": "pretrained",
        "image_size": 224, "method": {"name": name}, "data_fraction": fraction, "seed": seed,
        "train": {"epochs": epochs, "batch_size": 64, "lr": lr, "weight_decay": 0.05},
    }  # fmt: skip
    key = f"demo-{protocol}-{backbone}-{dataset}-{name}-{fraction:g}-{seed}".replace("_", "-")
    row = dict.fromkeys(COLUMNS)
    row.update(
        run_key=key, protocol_version=protocol, status="ok", task="classification", dataset=dataset,
        backbone=backbone, weights="pretrained", method=name, data_fraction=fraction, seed=seed, epochs=epochs,
        lr=lr, batch_size=64, image_size=224, precision="bf16", spec_json=json.dumps(spec, sort_keys=True),
        test_macro_f1=f1, test_accuracy=acc, test_balanced_accuracy=bal, test_auroc=auroc,
        val_macro_f1=_clip(f1 + rng.gauss(0, 0.01)), best_epoch=epochs, num_classes=len(classes),
        class_names_json=json.dumps(list(classes)), per_class_f1_json=json.dumps(per_class),
        metrics_json=json.dumps({"val": {"macro_f1": history[-1]["val_macro_f1"]}, "test": {"macro_f1": f1}, "history": history}),
        train_images=int(8000 * fraction), trainable_params=trainable, head_params=head, method_params=trainable - head,
        total_params=total + head, trainable_pct=100 * trainable / (total + head), wall_time_s=60 + 3000 * fraction * (1.4 if name == "full" else 1.0),
        train_images_per_s=2600.0 if name == "full" else 3000.0, peak_memory_mb=9500.0 if name == "full" else 6200.0,
        memory_kind="cuda_max_allocated", medpeft_version="0.1.0", git_commit="0123456789ab", python_version="3.11.9",
        torch_version="2.14.1", timm_version="1.0.31", peft_version="0.21.2", accelerate_version="1.15.0",
        device="synthetic (no device: demo row)", world_size=1, container_image=None,
        dataset_checksum=f"sha256:demo-{dataset}", dataset_source="synthetic (demo row, not a measurement)",
        weights_source=f"hf-hub:timm/{backbone}", backbone_checksum=None,
        started_at=f"2026-01-01T00:{seed:02d}:00+00:00", finished_at=f"2026-01-01T01:{seed:02d}:00+00:00",
    )  # fmt: skip
    return row


def synthetic_rows(
    *,
    backbones: Sequence[str] = ("vit_base_patch16_224", "resnet50"),
    datasets: Sequence[str] = tuple(DATASETS),
    methods: Sequence[str] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    protocol_versions: Sequence[int] = (1,),
    limit: int | None = None,
    diverged_every: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows for every supported (protocol, backbone, dataset, method, fraction, seed), up to `limit`.

    `diverged_every=n` marks every n-th row as diverged (NaN metrics), as failed runs appear in a real store.
    """
    rng = random.Random(seed)
    chosen = [m for m in EFFECTS if methods is None or m in methods]
    rows: list[dict[str, Any]] = []
    for protocol in protocol_versions:
        for backbone in backbones:
            family = BACKBONES[backbone][0]
            for dataset in datasets:
                for method in chosen:
                    if family not in get_method(method).families:
                        continue
                    for fraction in fractions:
                        for s in seeds:
                            row = _row(rng, backbone, dataset, method, fraction, s, protocol)
                            if diverged_every and len(rows) % diverged_every == diverged_every - 1:
                                row.update(status="diverged", test_macro_f1=float("nan"), test_accuracy=float("nan"))
                            rows.append(row)
                            if limit is not None and len(rows) >= limit:
                                return rows
    return rows
