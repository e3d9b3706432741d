"""Which evaluation schedule and selection rule should a low-data study use? (issue 15, item 7)

Trains medpeft runs (the real run path: `medpeft_cli.run.train`) of the pretrained CIFAR ResNet-20 on the
packaged BreastMNIST at 32 px, batch 64, for a fixed number of optimizer steps (`train.steps`), with an
evaluation after every epoch, and records the test macro-F1 of the evaluations the rules below can select.
Evaluations do not change training (eval mode, no random draws), so one run gives every rule's result:

    per-epoch / val F1   protocol 1: the epoch with the best validation macro-F1 (the row's own result)
    K evals / val F1     of the K evaluations after steps round(i * steps / K): best validation macro-F1
    K evals / val loss   of those: the lowest validation loss
    last                 the final weights

What `--evals-per-run K --select-on RULE` would select, provided each of the K steps ends an epoch (true
at 20 % and 5 % of BreastMNIST: 2 and 1 steps per epoch; checked). `--check` runs those settings for
real on one configuration and asserts they give exactly the derived numbers (CPU, one thread).

    .venv/bin/python benchmarks/selection_study.py --out-dir benchmarks/results/selection_study --shard 0/2 &
    .venv/bin/python benchmarks/selection_study.py --out-dir benchmarks/results/selection_study --shard 1/2
    .venv/bin/python benchmarks/selection_study.py --out-dir benchmarks/results/selection_study --summarize
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from pathlib import Path

LR = {"full": 1e-3, "bn": 1e-2}
RULES = ("per-epoch/val F1", "K/val F1", "K/val loss", "last")


def base_flags(method: str, fraction: float, seed: int, augment: str, steps: int, root: Path) -> dict:
    return {
        "dataset": "breastmnist", "backbone": "cifar_resnet20", "weights": "pretrained", "image_size": 32,
        "method": method, "train.lr": LR[method], "data_fraction": fraction, "seed": seed, "train.batch_size": 64,
        "train.steps": steps, "train.augment": augment, "output.runs_dir": root / "runs", "output.db": root / "results.duckdb",
    }  # fmt: skip


def record_test_scores(k_steps: set[int]):
    """Patch medpeft's Validation so an evaluation the rules may select also scores the test split."""
    import medpeft_cli.train.classify as classify
    from medpeft_cli.train.metrics import classification_metrics

    loaders = {}
    prepare = classify.prepare_training

    def prepare_and_keep(*args, **kwargs):
        out = prepare(*args, **kwargs)
        loaders["test"] = out[-1]
        return out

    class ScoringValidation(classify.Validation):
        def __call__(self, epoch: int, record: dict) -> None:
            super().__call__(epoch, record)
            if record["step"] in k_steps or self.selection.best_step == record["step"]:
                test = classify.predict(self.model, loaders["test"], self.transform, self.accelerator)
                record["test_macro_f1"] = classification_metrics(test.probs, test.labels, self.num_classes)["macro_f1"]

    classify.prepare_training, classify.Validation = prepare_and_keep, ScoringValidation


def one_run(method: str, fraction: float, seed: int, augment: str, args) -> dict:
    from medpeft_cli.config import build_spec
    from medpeft_cli.run import train

    k_steps = {round(args.steps * i / args.evals) for i in range(1, args.evals + 1)}
    with tempfile.TemporaryDirectory(prefix="selection-study-") as scratch:
        outcome = train(build_spec(None, base_flags(method, fraction, seed, augment, args.steps, Path(scratch))))
    row = outcome.row
    history = [r for r in json.loads(row["metrics_json"])["history"] if "val_macro_f1" in r]
    by_step = {r["step"]: r for r in history}
    assert all(s in by_step for s in k_steps), "a K-evaluation step does not end an epoch; run the K settings for real"
    first_best = max(history, key=lambda r: (r["val_macro_f1"], -r["step"]))  # first of ties, as Selection
    assert first_best["test_macro_f1"] == row["test_macro_f1"]  # the row's own (per-epoch) selection
    k_evals = [by_step[s] for s in sorted(k_steps)]
    k_f1 = max(k_evals, key=lambda r: (r["val_macro_f1"], -r["step"]))
    k_loss = min(k_evals, key=lambda r: (r["val_loss"], r["step"]))
    return {
        "method": method, "fraction": fraction, "seed": seed, "augment": augment, "steps": args.steps, "evals": args.evals,
        "lr": LR[method], "train_images": row["train_images"], "epochs": row["epochs"], "wall_time_s": round(row["wall_time_s"], 1),
        "test_f1": {"per-epoch/val F1": row["test_macro_f1"], "K/val F1": k_f1["test_macro_f1"],
                    "K/val loss": k_loss["test_macro_f1"], "last": k_evals[-1]["test_macro_f1"]},
        "selected_step": {"per-epoch/val F1": row["best_step"], "K/val F1": k_f1["step"], "K/val loss": k_loss["step"], "last": args.steps},
    }  # fmt: skip


def check(args) -> None:
    """Run the K-evaluation settings for real on one configuration and compare with the derived numbers."""
    from medpeft_cli.config import build_spec
    from medpeft_cli.run import train

    method, fraction, seed, augment = args.check.split(",")
    fraction, seed = float(fraction), int(seed)
    derived = json.loads((args.out_dir / f"{method}-{fraction:g}-{seed}-{augment}.json").read_text())["test_f1"]
    for rule, select in (("K/val F1", "val_macro_f1"), ("K/val loss", "val_loss"), ("last", "last")):
        with tempfile.TemporaryDirectory(prefix="selection-check-") as scratch:
            flags = {**base_flags(method, fraction, seed, augment, args.steps, Path(scratch)), "train.evals_per_run": args.evals, "train.select_on": select}
            got = train(build_spec(None, flags)).row["test_macro_f1"]
        print(f"{method} {fraction:g} seed {seed} {augment} {rule}: real run {got:.6f}, derived {derived[rule]:.6f}")
        assert got == derived[rule], rule


def summarize(folder: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["fraction"], r["method"], r["augment"]), []).append(r)
    print("| fraction | method | augment | n | " + " | ".join(RULES) + " | s/run |")
    print("|---|---|---|---:|" + "---|" * len(RULES) + "---:|")
    for key in sorted(cells, key=lambda k: (-k[0], k[1] != "full", k[2])):
        rs = cells[key]
        parts = []
        for rule in RULES:
            f1 = [r["test_f1"][rule] for r in rs]
            sd = statistics.stdev(f1) if len(f1) > 1 else 0.0
            parts.append(f"{statistics.mean(f1):.3f} ± {sd:.3f}")
        secs = statistics.mean(r["wall_time_s"] for r in rs)
        print(f"| {key[0]:g} | {key[1]} | {key[2]} | {len(rs)} | " + " | ".join(parts) + f" | {secs:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="full,bn")
    parser.add_argument("--fraction", default="0.2,0.05")
    parser.add_argument("--seed", default="0,1,2")
    parser.add_argument("--augment", default="none,flip")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--evals", type=int, default=6)
    parser.add_argument("--out-dir", type=Path, required=True, help="one JSON per run (existing ones are skipped)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th configuration starting at i (parallel processes)")
    parser.add_argument("--summarize", action="store_true", help="print the mean ± std table of --out-dir and exit")
    parser.add_argument("--check", default=None, help="METHOD,FRACTION,SEED,AUGMENT: rerun the K rules for real and compare")
    args = parser.parse_args()
    if args.summarize:
        return summarize(args.out_dir)
    import torch

    torch.set_num_threads(1)
    if args.check:
        return check(args)
    record_test_scores({round(args.steps * i / args.evals) for i in range(1, args.evals + 1)})
    index, count = (int(x) for x in args.shard.split("/"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    configs = itertools.product(
        [float(f) for f in args.fraction.split(",")], args.method.split(","), [int(s) for s in args.seed.split(",")], args.augment.split(",")
    )  # fmt: skip
    for n, (fraction, method, seed, augment) in enumerate(configs):
        out = args.out_dir / f"{method}-{fraction:g}-{seed}-{augment}.json"
        if n % count != index or out.exists():
            continue
        result = one_run(method, fraction, seed, augment, args)
        out.write_text(json.dumps(result) + "\n")
        print(json.dumps({k: result[k] for k in ("method", "fraction", "seed", "augment", "test_f1", "wall_time_s")}), flush=True)


if __name__ == "__main__":
    main()
