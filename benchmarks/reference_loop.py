"""An independent, hand-written fine-tuning loop to check medpeft's numbers against (issue 15).

Plain PyTorch, none of medpeft's training code: it imports only the architecture
(`medpeft_cli.models.cifar_resnet`) and reads the packaged files directly — the CIFAR-10 ResNet-20
weights (`medpeft_cli/resources/weights/cifar10_resnet20/resnet20-12fca82f.th`) and the MedMNIST v2
BreastMNIST 28-px file (`medpeft_cli/resources/data/breastmnist/breastmnist.npz`).

Recipe (one run = method x data fraction x seed):
- data: the official splits; training subset = a seeded stratified sample of `fraction` of each class
  of the train split (round(fraction * n_class), at least 1). Images 28 px -> 32 px (bilinear, once in
  memory), gray repeated to 3 channels, ImageNet mean/std (what the CIFAR weights were trained with).
- model: the pretrained ResNet-20, its 64 -> 10 `linear` replaced by a fresh 64 -> 2 Linear.
- methods: full (everything), linear (head only), bn (BN scale/shift + head; running statistics
  update as in every method here, since the model is in train mode while training), bias (every
  bias + head: the convolutions have none, so these are the BN shifts), ssf (a per-channel scale and
  shift after every BN layer, Lian et al., NeurIPS 2022, + head).
- optimisation: AdamW (weight decay --weight-decay on every trainable tensor), torch's OneCycleLR
  with max lr = --lr (default 1e-3 for full, 1e-2 otherwise) over exactly --steps optimizer steps at
  batch --batch (the epoch's last batch may be smaller; the data are reshuffled each epoch); plain
  cross-entropy; optional random horizontal flips.
- selection: --evals evaluations evenly spaced over the run (the last one at the final step); the
  checkpoint with the best validation macro-F1 (first of ties) is scored on test. Every evaluation's
  val macro-F1, val loss and test macro-F1 are kept in the JSON too (for selection studies).

    .venv/bin/python benchmarks/reference_loop.py --method bn --fraction 1.0 --seed 0
    .venv/bin/python benchmarks/reference_loop.py --method full,bn --fraction 1,0.2,0.05 --seed 0,1,2 \\
        --out-dir benchmarks/results/reference_loop
    .venv/bin/python benchmarks/reference_loop.py --summarize benchmarks/results/reference_loop
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medpeft_cli.models.cifar_resnet import MEAN, STD, CifarResNet

RESOURCES = Path(__file__).resolve().parents[1] / "medpeft_cli" / "resources"
WEIGHTS = RESOURCES / "weights" / "cifar10_resnet20" / "resnet20-12fca82f.th"
DATA = RESOURCES / "data" / "breastmnist" / "breastmnist.npz"
METHODS = ("full", "linear", "bn", "bias", "ssf")
NUM_CLASSES = 2


# ---------------------------------------------------------------- data

def load_split(npz, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 28, 28) -> normalised float (N, 3, size, size); labels (N,) int64."""
    images = torch.from_numpy(npz[f"{split}_images"]).float().div_(255).unsqueeze(1)
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std, torch.from_numpy(npz[f"{split}_labels"].reshape(-1).astype(np.int64))


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a seeded sample of round(fraction * n_c) (>= 1) images of every class c."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels.numpy()):
        members = np.flatnonzero(labels.numpy() == c)
        keep.append(rng.permutation(members)[: max(1, round(fraction * len(members)))])
    return torch.from_numpy(np.sort(np.concatenate(keep)))


# ---------------------------------------------------------------- model and methods

class ScaleShift(nn.Module):
    """y = scale * x + shift per channel (identity at initialisation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def build_model(method: str, seed: int) -> nn.Module:
    model = CifarResNet(depth=20, num_classes=10)
    checkpoint = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(state, strict=True)  # every tensor of the file, nothing left random
    torch.manual_seed(seed)
    model.linear = nn.Linear(64, NUM_CLASSES)  # the CIFAR-10 classifier is replaced, not stacked on
    for p in model.parameters():
        p.requires_grad_(method == "full")
    if method == "ssf":
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.BatchNorm2d):
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                setattr(parent, name.rpartition(".")[2], nn.Sequential(module, ScaleShift(module.num_features)))
    for module in model.modules():
        if method == "bn" and isinstance(module, nn.BatchNorm2d):
            module.weight.requires_grad_(True)
            module.bias.requires_grad_(True)
        if method == "ssf" and isinstance(module, ScaleShift):
            module.requires_grad_(True)
    for name, p in model.named_parameters():
        if method == "bias" and name.endswith(".bias"):
            p.requires_grad_(True)
    for p in model.linear.parameters():
        p.requires_grad_(True)
    return model


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- metrics

def macro_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> float:
    """Mean over classes of 2TP / (2TP + FP + FN) (0 for a class never predicted nor present)."""
    scores = []
    for c in range(num_classes):
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0)
    return sum(scores) / num_classes


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    model.eval()
    logits = torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)])
    model.train()
    pred = logits.argmax(1)
    return {"macro_f1": macro_f1(pred, labels), "loss": F.cross_entropy(logits, labels).item(),
            "accuracy": (pred == labels).float().mean().item()}


# ---------------------------------------------------------------- one run

def run(method: str, fraction: float, seed: int, args) -> dict:
    torch.set_num_threads(args.threads)
    npz = np.load(DATA)
    train_x, train_y = load_split(npz, "train", args.image_size)
    val_x, val_y = load_split(npz, "val", args.image_size)
    test_x, test_y = load_split(npz, "test", args.image_size)
    subset = stratified_subset(train_y, fraction, seed)
    train_x, train_y = train_x[subset], train_y[subset]

    model = build_model(method, seed)
    lr = args.lr if args.lr is not None else (1e-3 if method == "full" else 1e-2)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=args.steps)
    eval_at = {round(args.steps * (i + 1) / args.evals) for i in range(args.evals)}
    gen = torch.Generator().manual_seed(seed)

    model.train()
    started, step, order, cursor = time.perf_counter(), 0, torch.empty(0, dtype=torch.long), 0
    evals, best, best_state = [], None, None
    while step < args.steps:
        if cursor >= len(order):  # a new epoch: reshuffle
            order, cursor = torch.randperm(len(train_y), generator=gen), 0
        idx = order[cursor : cursor + args.batch]
        cursor += args.batch
        x, y = train_x[idx], train_y[idx]
        if args.flip:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        if step in eval_at:
            val, test = evaluate(model, val_x, val_y), evaluate(model, test_x, test_y)
            evals.append({"step": step, "val_f1": val["macro_f1"], "val_loss": val["loss"], "test_f1": test["macro_f1"], "test_acc": test["accuracy"]})
            if best is None or val["macro_f1"] > best["val_f1"]:
                best, best_state = evals[-1], copy.deepcopy(model.state_dict())
    train_seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    test = evaluate(model, test_x, test_y)
    assert abs(test["macro_f1"] - best["test_f1"]) < 1e-9  # the restored checkpoint is the selected one
    return {
        "method": method, "fraction": fraction, "seed": seed, "steps": args.steps, "evals": args.evals,
        "flip": args.flip, "lr": lr, "weight_decay": args.weight_decay, "batch": args.batch, "image_size": args.image_size,
        "train_images": len(train_y), "trainable": trainable_count(model),
        "selected_step": best["step"], "val_f1": best["val_f1"], "test_f1": test["macro_f1"], "test_acc": test["accuracy"],
        "final_test_f1": evals[-1]["test_f1"], "evaluations": evals,
        "seconds": round(train_seconds, 1), "threads": args.threads,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}", "torch": torch.__version__,
    }


# ---------------------------------------------------------------- CLI

def summarize(folder: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["fraction"], r["method"], r["steps"], r["evals"], r["flip"]), []).append(r)
    print("| fraction | method | steps | evals | flip | n | test macro-F1 mean ± std | final-step test F1 | s/run |")
    print("|---|---|---:|---:|---|---:|---|---:|---:|")
    for key in sorted(cells, key=lambda k: (-k[0], METHODS.index(k[1]), k[2])):
        rs = cells[key]
        f1 = [r["test_f1"] for r in rs]
        sd = statistics.stdev(f1) if len(f1) > 1 else 0.0
        final = statistics.mean(r["final_test_f1"] for r in rs)
        secs = statistics.mean(r["seconds"] for r in rs)
        print(f"| {key[0]:g} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {len(rs)} | {statistics.mean(f1):.3f} ± {sd:.3f} | {final:.3f} | {secs:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="bn", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--fraction", default="1.0", help="comma list of training fractions in (0, 1]")
    parser.add_argument("--seed", default="0", help="comma list of seeds")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    parser.add_argument("--evals", type=int, default=6, help="evaluations per run (evenly spaced, last at the end)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    parser.add_argument("--lr", type=float, default=None, help="max lr of the one-cycle schedule (default: 1e-3 full, 1e-2 others)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=None, help="write one JSON per run here")
    parser.add_argument("--summarize", type=Path, default=None, help="print a mean ± std table of the JSONs in this folder and exit")
    args = parser.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    methods = args.method.split(",")
    if bad := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if args.evals < 1 or args.evals > args.steps:
        parser.error("--evals must be between 1 and --steps")
    for fraction in (float(f) for f in args.fraction.split(",")):
        for method in methods:
            for seed in (int(s) for s in args.seed.split(",")):
                result = run(method, fraction, seed, args)
                line = json.dumps(result)
                if args.out_dir:
                    args.out_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{method}-f{fraction:g}-s{seed}-{args.steps}steps-{args.evals}evals{'-flip' if args.flip else ''}.json"
                    (args.out_dir / name).write_text(json.dumps(result, indent=1) + "\n")
                print(f"{method} fraction={fraction:g} seed={seed}: test macro-F1 {result['test_f1']:.4f} "
                      f"(val {result['val_f1']:.4f} at step {result['selected_step']}; trainable {result['trainable']}; {result['seconds']} s)", flush=True)
                if not args.out_dir:
                    print(line)


if __name__ == "__main__":
    main()
