"""Training-step speed and memory of medpeft's own loop against a minimal hand-written PyTorch loop.

For each method, in one process and one run, on the same backbone, batch size and precision:

- medpeft: `medpeft_cli.train.classify.fit` itself (what `medpeft train` runs): random uint8 images in
  memory served by `train/batches.make_loader`, the Accelerator of `make_accelerator` (mixed precision
  on a GPU), the optimizer and schedule of `prepare_training`, the per-step `TrainStep`, the loop's own
  preemption and divergence checks. The clock is read from fit's `on_step` callback.
- hand-written: a fresh copy of the same model (built by the same method), AdamW (fused on CUDA),
  bf16 autocast on a GPU, one fixed float batch already on the device; forward, loss, backward, step,
  zero_grad and nothing else.

Timing: after `--warmup` steps of each, the two loops alternate in windows of `--window` steps (fit's
on_step callback runs one window of the hand-written loop at each window edge, off medpeft's clock),
so each pair of windows runs under the same machine load; the device is synchronised only at window
edges, so a per-step host sync in a loop shows up as lost overlap. Reported per method: train img/s
(median over windows), medpeft / hand-written (median over the window pairs of their time ratio),
method / `full`, evaluation img/s under `torch.inference_mode` (medpeft's `predict` against a plain
loop, `--eval-batch`, alternating passes), peak memory and the bytes autograd keeps for backward.

Peak memory is measured in a separate pass, each loop alone, after `--memory-steps` steps: on CUDA
`torch.cuda.max_memory_allocated` (reset first; weights, gradients, optimizer state and activations);
on CPU the growth of the process's peak resident memory (VmHWM reset through /proc/self/clear_refs after
malloc_trim; weights excluded, allocator caching included: a rough number). `saved_mb` (tensors
autograd saves in one training forward, parameters excluded) is exact on both.

    python benchmarks/train_step.py --backbone vit_tiny_patch16_224 --img-size 64 --batch 32 \\
        --method full,linear,bitfit,lora,lora:impl=peft,"lora:targets=[qkv,proj,fc1,fc2]"
    python benchmarks/train_step.py --backbone vit_base_patch16_224 --img-size 224 --batch 128 --device cuda --method full,bitfit,lora

`--method` takes comma-separated `name[:option=value[:option=value]]` (values as in `--set`; a list's
commas stay inside its brackets). Results go to `--out`/train_step-<device>-<backbone>-<size>px-bs<batch>.json.
Needs torch, timm, peft, accelerate, pydantic, pyyaml, torchmetrics, safetensors; not duckdb, typer or diffusers.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing medpeft (the GPU machine)


# ---------------------------------------------------------------- command line


def split_top_level(text: str) -> list[str]:
    """'a,b:x=[1,2],c' -> ['a', 'b:x=[1,2]', 'c'] (commas inside brackets stay)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_method(text: str) -> tuple[str, dict]:
    """'lora:rank=4:targets=[qkv,fc1]' -> ('lora', {'rank': 4, 'targets': ['qkv', 'fc1']})."""
    import yaml

    name, *settings = re.split(r":(?![^\[]*\])", text)
    options = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise SystemExit(f"--method {text!r}: {setting!r} is not option=value")
        options[key.strip()] = yaml.safe_load(value)
    return name.strip(), options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm model name (random init)")
    parser.add_argument("--method", default="full,bitfit,lora", help="comma-separated name[:option=value...]")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="as train.precision (auto: bf16 on a GPU, fp32 on CPU)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a multiple of --window)")
    parser.add_argument("--window", type=int, default=5, help="steps between device synchronisations; img/s = median over windows")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the timing pass this many times; medians pool the windows")
    parser.add_argument("--memory-steps", type=int, default=3, help="training steps before peak memory is read (each loop alone)")
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument("--eval-batches", type=int, default=4, help="batches per timed evaluation pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true", help="both loops: model and input in channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="both loops: torch.compile the model (medpeft: train.compile)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.steps % args.window:
        parser.error("--steps must be a multiple of --window")
    return args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- measuring


class Memory:
    """Peak memory of one loop: CUDA's allocator counter, or the growth of the process's peak RSS on CPU."""

    def __init__(self, device):
        import torch

        self.device = device
        self.kind = "cuda-max-allocated" if device.type == "cuda" else "cpu-peak-rss-growth"
        self._torch = torch
        self._start = 0.0

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            self._torch.cuda.synchronize()
            self._torch.cuda.empty_cache()
            self._torch.cuda.reset_peak_memory_stats()
            return
        try:  # give freed heap back to the OS so the next peak is this loop's own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self._start = _proc_status("VmRSS")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return self._torch.cuda.max_memory_allocated() / 2**20
        return _proc_status("VmHWM") - self._start


def _proc_status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"{field} not in /proc/self/status")


def sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


class PairedClock:
    """fit's on_step callback: times medpeft's steps in windows and, at every window edge, runs one window
    of the hand-written loop (its time kept apart), so each pair of windows sees the same machine load.

    After medpeft's `warmup` steps the hand-written loop does its own `warmup` steps (untimed).
    """

    def __init__(self, args, device, hand: HandLoop):
        self.warmup, self.window, self.steps = args.warmup, args.window, args.steps
        self.device, self.hand = device, hand
        self.count, self.resumed = 0, 0.0
        self.medpeft_windows: list[float] = []
        self.hand_windows: list[float] = []

    def __call__(self, n_images: int = 0) -> None:
        self.count += 1
        done = self.count - self.warmup
        if done < 0 or done % self.window or done > self.steps:
            return
        sync(self.device)
        now = time.perf_counter()
        if done == 0:
            for _ in range(self.warmup):
                self.hand.step()
        else:
            self.medpeft_windows.append(now - self.resumed)
            for _ in range(self.window):
                self.hand.step()
            sync(self.device)
            self.hand_windows.append(time.perf_counter() - now)
        sync(self.device)
        self.resumed = time.perf_counter()


class PeakAfter:
    """fit's on_step callback for the memory pass: reads the peak after `steps` steps."""

    def __init__(self, steps: int, memory: Memory):
        self.steps, self.memory, self.count, self.peak_mb = steps, memory, 0, 0.0

    def __call__(self, n_images: int = 0) -> None:
        self.count += 1
        if self.count == self.steps:
            self.peak_mb = self.memory.peak_mb()


def saved_tensor_mb(model, x, autocast) -> float:
    """MiB of tensors autograd saves for backward in one eager training forward (parameters themselves excluded)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        out = model.forward(x)  # forward itself: eager even where the module was compiled in place
    del out
    return sum(storages.values()) / 2**20


# ---------------------------------------------------------------- the two loops


def resolve_precision(precision: str) -> str:
    from medpeft_cli.train.classify import resolve_mixed_precision

    return resolve_mixed_precision(precision)


def build_model(args, name: str, options: dict):
    """The backbone with the method applied, exactly as `medpeft train` builds it."""
    from medpeft_cli.methods import check_supported, get_method, validate_options
    from medpeft_cli.models import create_backbone

    info = get_method(name)
    opts = validate_options(info, options)
    backbone = create_backbone(args.backbone, "random", args.classes, args.img_size, seed=0)
    check_supported(info, backbone.family, args.backbone)
    model = info.apply(backbone, opts)
    if args.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model, info, backbone


class MedpeftRun:
    """What `medpeft train` hands to `fit`: the model, random uint8 images in memory through make_loader,
    the input transform, TrainOptions and the Accelerator of make_accelerator."""

    def __init__(self, args, name: str, options: dict, device, steps: int):
        import numpy as np

        from medpeft_cli.config import TrainOptions
        from medpeft_cli.train.batches import InputTransform, make_loader
        from medpeft_cli.train.classify import make_accelerator

        self.args = args
        self.model, self.info, backbone = build_model(args, name, options)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.rng = np.random.default_rng(0)
        n = args.batch * steps
        images = self.rng.integers(0, 256, (n, args.img_size, args.img_size, 3), dtype=np.uint8)
        labels = self.rng.integers(0, args.classes, n)
        small = slice(0, args.batch)
        self.loaders = {
            "train": make_loader(images, labels, args.batch, True, 0),
            "val": make_loader(images[small], labels[small], args.batch, False, 0),
            "test": make_loader(images[small], labels[small], args.batch, False, 0),
        }
        cfg = getattr(backbone.model, "pretrained_cfg", {}) or {}
        self.transform = InputTransform(args.img_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
        self.options = TrainOptions(epochs=1, batch_size=args.batch, precision=args.precision, eval_batch_size=args.eval_batch, compile=args.compile)
        self.accelerator = make_accelerator(self.options)
        if self.accelerator.device.type != device.type:
            raise SystemExit(f"Accelerate chose {self.accelerator.device}, not {device}; run with --device {self.accelerator.device.type}")

    def fit(self, on_step) -> None:
        from medpeft_cli.train.classify import fit

        result = fit(self.model, self.loaders, self.transform, self.options, self.info.default_lr, self.args.classes, self.accelerator, on_step=on_step)
        if result.status != "ok":
            raise SystemExit(f"{self.info.name}: the medpeft loop {result.status}: {result.detail}")

    def eval_pass(self, loader) -> None:
        from medpeft_cli.train.classify import predict

        predict(self.model, loader, self.transform, self.accelerator)

    def eval_loader(self):
        import numpy as np

        from medpeft_cli.train.batches import make_loader

        a = self.args
        images = self.rng.integers(0, 256, (a.eval_batch * a.eval_batches, a.img_size, a.img_size, 3), dtype=np.uint8)
        return self.accelerator.prepare(make_loader(images, np.zeros(len(images), dtype=np.int64), a.eval_batch, False, 0))

    def close(self) -> None:
        self.accelerator.free_memory()
        del self.model, self.accelerator


class HandLoop:
    """The minimal loop on a fresh copy of the same model: one fixed float batch on the device, autocast
    (bf16 on a GPU), AdamW (fused on CUDA); forward, loss, backward, step, zero_grad and nothing else."""

    def __init__(self, args, name: str, options: dict, device, memory: Memory | None = None):
        import torch

        self.args, self.device = args, device
        self.model, _, _ = build_model(args, name, options)
        if args.compile:
            self.model.compile()
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(args.precision))
        self.autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        if memory is not None:
            memory.reset()
        self.model.to(device).train()
        self.fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.generator = torch.Generator(device="cpu").manual_seed(0)
        self.x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=self.generator).to(device, memory_format=self.fmt)
        self.y = torch.randint(0, args.classes, (args.batch,), generator=self.generator).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, fused=True if device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
        self.xe = None

    def step(self) -> None:
        import torch.nn.functional as F

        with self.autocast():
            logits = self.model(self.x)
        loss = F.cross_entropy(logits.float(), self.y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def eval_pass(self) -> None:
        import torch

        a = self.args
        if self.xe is None:
            self.xe = torch.randn(a.eval_batch, 3, a.img_size, a.img_size, generator=self.generator).to(self.device, memory_format=self.fmt)
        self.model.eval()
        with torch.inference_mode():
            for _ in range(a.eval_batches):
                with self.autocast():
                    probs = self.model(self.xe).float().softmax(dim=1)
            probs.cpu()
        self.model.train()

    def saved_mb(self) -> float:
        return saved_tensor_mb(self.model, self.x, self.autocast)


def memory_pass(args, name: str, options: dict, device) -> dict:
    """Peak memory after `--memory-steps` training steps, each loop alone (nothing else of this method held)."""
    steps = args.memory_steps
    memory = Memory(device)
    run = MedpeftRun(args, name, options, device, steps)
    memory.reset()
    peak = PeakAfter(steps, memory)
    run.fit(peak)
    medpeft_mb = peak.peak_mb
    run.close()
    del run
    gc.collect()
    hand = HandLoop(args, name, options, device, memory)
    for _ in range(steps):
        hand.step()
    hand_mb = memory.peak_mb()
    saved = hand.saved_mb()
    del hand
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    return {"medpeft_peak_mb": medpeft_mb, "hand_peak_mb": hand_mb, "saved_mb": saved}


def timing_pass(args, name: str, options: dict, device) -> dict:
    """Both loops alive; fit's on_step runs a window of the hand-written loop at each window edge."""
    run = MedpeftRun(args, name, options, device, args.warmup + args.steps)
    hand = HandLoop(args, name, options, device)
    clock = PairedClock(args, device, hand)
    run.fit(clock)
    loader = run.eval_loader()
    evals = {"medpeft": [], "hand": []}
    for repeat in range(1 + 3):  # one warm-up pass of each, then three timed, alternating
        for loop, fn in (("medpeft", lambda: run.eval_pass(loader)), ("hand", hand.eval_pass)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if repeat:
                evals[loop].append(time.perf_counter() - start)
    out = {"medpeft_windows": clock.medpeft_windows, "hand_windows": clock.hand_windows, "medpeft_eval_s": evals["medpeft"],
           "hand_eval_s": evals["hand"], "trainable": run.trainable}  # fmt: skip
    run.close()
    del run, hand, loader
    return out


# ---------------------------------------------------------------- report


def device_label(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads, host {socket.gethostname()})"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def summarise(label: str, memory: dict, timings: list[dict], args) -> dict:
    img = args.batch * args.window
    eval_img = args.eval_batch * args.eval_batches
    row = {"method": label, "trainable_params": timings[0]["trainable"], **memory}
    for loop in ("medpeft", "hand"):
        windows = [w for t in timings for w in t[f"{loop}_windows"]]
        evals = [e for t in timings for e in t[f"{loop}_eval_s"]]
        row[f"{loop}_img_s"] = img / statistics.median(windows)
        row[f"{loop}_eval_img_s"] = eval_img / statistics.median(evals)
        row[f"{loop}_windows_s"] = windows
        row[f"{loop}_eval_s"] = evals
    # Paired windows ran back to back under the same load: the median of their ratios is the robust number.
    pairs = [h / m for t in timings for m, h in zip(t["medpeft_windows"], t["hand_windows"])]
    row["medpeft_vs_hand"] = statistics.median(pairs)
    row["medpeft_vs_hand_pairs"] = pairs
    row["medpeft_vs_hand_eval"] = statistics.median(h / m for t in timings for m, h in zip(t["medpeft_eval_s"], t["hand_eval_s"]))
    return row


def add_full_ratios(rows: list[dict]) -> None:
    full = next((r for r in rows if r["method"] == "full"), None)
    for row in rows:
        for loop in ("medpeft", "hand"):
            row[f"{loop}_vs_full"] = row[f"{loop}_img_s"] / full[f"{loop}_img_s"] if full else None
            row[f"{loop}_peak_vs_full"] = row[f"{loop}_peak_mb"] / full[f"{loop}_peak_mb"] if full and full[f"{loop}_peak_mb"] > 0 else None
        row["saved_vs_full"] = row["saved_mb"] / full["saved_mb"] if full and full["saved_mb"] else None


def markdown_table(rows: list[dict]) -> str:
    def f(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "| method | trainable | medpeft img/s | hand img/s | medpeft/hand | medpeft vs full | hand vs full | peak MiB (medpeft / hand) | saved MiB (vs full) | eval img/s (medpeft / hand) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['method']}` | {r['trainable_params']:,} | {r['medpeft_img_s']:.1f} | {r['hand_img_s']:.1f} | {f(r['medpeft_vs_hand'])} | "
            f"{f(r['medpeft_vs_full'])} | {f(r['hand_vs_full'])} | {r['medpeft_peak_mb']:.0f} / {r['hand_peak_mb']:.0f} | "
            f"{r['saved_mb']:.1f} ({f(r['saved_vs_full'])}) | {r['medpeft_eval_img_s']:.0f} / {r['hand_eval_img_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # Accelerate must not pick a GPU the hand-written loop does not use
    methods = [(text, *parse_method(text)) for text in split_top_level(args.method)]
    import accelerate
    import peft
    import timm

    from medpeft_cli.train import classify  # noqa: F401  (imported now, so the freeze below covers it)

    gc.freeze()  # the imported libraries' objects leave the collector's view: each gc.collect() then takes ms, not 0.4 s
    load_before = os.getloadavg()
    started = time.time()
    # Every method's options are checked before anything runs.
    from medpeft_cli.methods import get_method, validate_options

    for label, name, options in methods:
        validate_options(get_method(name), options)
    memories = {}
    timings = {label: [] for label, _, _ in methods}
    # Not recorded: the process's one-time allocations (allocator pools, BLAS/cuBLAS workspaces, lazily
    # initialised kernels) would otherwise all land in the first method's peak.
    memory_pass(args, *methods[0][1:], device)
    for label, name, options in methods:
        memories[label] = memory_pass(args, name, options, device)
    for round_index in range(args.rounds):
        for label, name, options in methods:
            timings[label].append(timing_pass(args, name, options, device))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"round {round_index + 1}/{args.rounds} {label}: done", file=sys.stderr, flush=True)
    rows = [summarise(label, memories[label], timings[label], args) for label, _, _ in methods]
    add_full_ratios(rows)

    card = device_label(device)
    report = {
        "harness": "benchmarks/train_step.py",
        "device": card,
        "backbone": args.backbone,
        "img_size": args.img_size,
        "batch": args.batch,
        "eval_batch": args.eval_batch,
        "precision": resolve_precision(args.precision),
        "channels_last": args.channels_last,
        "compile": args.compile,
        "warmup": args.warmup, "steps": args.steps, "window": args.window, "rounds": args.rounds, "memory_steps": args.memory_steps,
        "threads": torch.get_num_threads(),
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "seconds": time.time() - started,
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__},
        "memory_kind": Memory(device).kind,
        "rows": rows,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    where = "cpu-" + socket.gethostname() if device.type == "cpu" else torch.cuda.get_device_name(device)
    suffix = ("-channels-last" if args.channels_last else "") + ("-compile" if args.compile else "")
    path = args.out / f"train_step-{slug(where)}-{slug(args.backbone)}-{args.img_size}px-bs{args.batch}{suffix}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"{card}; {args.backbone} {args.img_size}px bs{args.batch}, precision {report['precision']}, "
          f"{report['threads']} threads, load {load_before[0]:.2f} -> {report['load_avg_after'][0]:.2f}")  # fmt: skip
    print(markdown_table(rows))
    print(f"written: {path}")
    return path


if __name__ == "__main__":
    main()
