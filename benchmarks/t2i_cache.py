"""Training steps per second of the text-to-image track with and without the latent cache.

Both modes run the same U-Net step (medpeft_cli.t2i.loop.Denoising) on the same batches; the uncached
mode also runs the frozen VAE encoder and text encoder on every batch, as a fine-tuning script without
a cache does. The one-time cost of building the cache is reported too.

    python benchmarks/t2i_cache.py                                   # tiny-sd, 32 px, CPU
    python benchmarks/t2i_cache.py --backbone stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --resolution 512 --batch-size 16 --method lora --precision bf16   # SD-1.5 on a GPU (cached weights)

Prints one JSON line per run (the goal on a GPU: cached >= 1.3x uncached).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-sd")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from accelerate import Accelerator

    from medpeft_cli.data import default_data_dir, load_dataset
    from medpeft_cli.methods import get_method, validate_options
    from medpeft_cli.t2i.captions import captions_of
    from medpeft_cli.t2i.latents import compute_encodings, encode_ids, encode_pixels, to_pixels, tokenize
    from medpeft_cli.t2i.loop import Denoising
    from medpeft_cli.t2i.pipeline import load_pipeline, quiet_hf
    from medpeft_cli.t2i.scoring import weight_dtype

    accelerator = Accelerator(mixed_precision=args.precision)
    dtype = weight_dtype(accelerator)
    pipe = load_pipeline(args.backbone, default_data_dir())
    with quiet_hf():
        pipe.vae.to(accelerator.device, dtype)
        pipe.text_encoder.to(accelerator.device, dtype)
    data = load_dataset("synthetic-captions")
    n = args.batch_size * (args.steps + args.warmup)
    reps = -(-n // len(data.splits["train"]))
    images = np.concatenate([data.splits["train"].images] * reps)[:n]
    captions = (captions_of(data, "train", "caption") * reps)[:n]

    sync = (lambda: torch.cuda.synchronize()) if accelerator.device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    enc = compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, {"train": images}, {"train": captions},
                            args.resolution, args.batch_size, splits_with_latents=("train",))
    sync()
    build_s = time.perf_counter() - start

    info = get_method(args.method, task="t2i")
    unet = info.apply(pipe.unet.to(accelerator.device), validate_options(info, {}))
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-5)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    denoising = Denoising(pipe.training_scheduler(), float(pipe.vae.config.scaling_factor), 0.0, pipe.prediction_type,
                          enc.tensor(enc.empty_text).to(accelerator.device))
    ids = tokenize(pipe.tokenizer, captions)

    def batch(mode: str, i: int):
        rows = slice(i * args.batch_size, (i + 1) * args.batch_size)
        if mode == "cached":
            return enc.tensor(enc.latents["train"][rows]).to(accelerator.device), enc.tensor(enc.text["train"][rows]).to(accelerator.device)
        pixels = to_pixels(torch.from_numpy(images[rows]).to(accelerator.device), args.resolution)
        return encode_pixels(pipe.vae, pixels), encode_ids(pipe.text_encoder, ids[rows])

    rates = {}
    for mode in ("uncached", "cached"):
        unet.train()
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                sync()
                start = time.perf_counter()
            params, text = batch(mode, i)
            loss = denoising.loss(unet, params, text)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        rates[mode] = args.steps / (time.perf_counter() - start)

    device = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {
        "backbone": args.backbone, "method": args.method, "resolution": args.resolution, "batch_size": args.batch_size,
        "precision": args.precision, "device": device, "steps": args.steps,
        "uncached_steps_per_s": round(rates["uncached"], 3), "cached_steps_per_s": round(rates["cached"], 3),
        "speedup": round(rates["cached"] / rates["uncached"], 3), "cache_build_s_per_image": round(build_s / n, 5),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
