"""The text-to-image task (`task: t2i`): a PEFT method on the Stable Diffusion U-Net, trained on
captioned images (text encoder and VAE frozen), scored by FID/KID of images generated from held-out
test prompts over several seeds.

    prepare   pipeline + captioned data -> VAE latents and caption embeddings (cached on disk) -> method on the U-Net
    fit       noise-prediction training (t2i/loop.py on the shared EpochLoop: checkpoints, resume, stop, divergence)
    evaluate  generation from the test prompts -> FID/KID (t2i/scoring.py), on the main process

What the run orchestrator (run/lifecycle.py) calls; it stores through the same code as every task.
Torch is imported inside the functions (the task registry loads this module to resolve specs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.methods import validate_options
from medpeft_cli.run.task import Fitted, Prepared, Run


@dataclass(kw_only=True)
class T2IPrepared(Prepared):
    pipe: Any  # t2i.pipeline.Pipeline (frozen VAE and text encoder on the device)
    encodings: Any  # t2i.latents.Encodings: cached latents / caption embeddings, the empty caption
    extractor: Any  # the FID/KID feature extractor
    train_loader: Any
    val_loader: Any
    encode: Callable  # a training batch -> (latent posterior parameters, caption embeddings)
    denoising: Any  # t2i.loop.Denoising
    cache_state: str  # "hit (<key>)", "miss (<key>)" or "off"
    added_params: int  # parameters the method added to the U-Net


def encodings_for(spec: RunSpec, pipe, data, captions: dict, accelerator, report) -> tuple[Any, str]:
    """The VAE latents and caption embeddings of the data (from the on-disk cache when on), and the cache state."""
    from medpeft_cli.t2i.latents import cache_key, cached_encodings, compute_encodings
    from medpeft_cli.t2i.scoring import data_root, weight_dtype

    t, t2i = spec.train, spec.t2i
    dtype = weight_dtype(accelerator)
    images = {s: data.splits[s].images for s in captions}

    def compute(splits_with_latents):
        report.log(f"encoding {sum(len(images[s]) for s in splits_with_latents)} images and {sum(map(len, captions.values()))} captions with the frozen VAE and text encoder")
        return compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, images, captions, spec.image_size, t.eval_batch_size, splits_with_latents)

    if not t2i.cache_latents:
        return compute(("val",)), "off"
    ckey, payload = cache_key(pipe.encoder_checksum, data.checksum, spec.image_size, t2i.caption_column, dtype)
    with accelerator.main_process_first():
        encodings, hit = cached_encodings(data_root(spec) / "t2i" / "cache", ckey, payload, lambda: compute(("train", "val")), dtype)
    state = f"{'hit' if hit else 'miss'} ({ckey})"
    report.log(f"latent cache {state}")
    return encodings, state


def training_batches(spec: RunSpec, pipe, data, captions: dict, encodings, subset) -> tuple[Any, Any, Callable]:
    """(train loader, val loader, encode): cached posterior parameters + caption embeddings, or images +
    token ids encoded on the fly by the frozen VAE and text encoder; both feed the same step."""
    import torch

    from medpeft_cli.t2i.latents import encode_ids, encode_pixels, to_pixels, tokenize
    from medpeft_cli.t2i.loop import rows_loader

    t = spec.train
    if spec.t2i.cache_latents:
        arrays, convert = [encodings.latents["train"], encodings.text["train"]], encodings.tensor

        def encode(batch):
            return batch[0], batch[1]
    else:
        arrays, convert = [data.splits["train"].images, tokenize(pipe.tokenizer, captions["train"]).numpy()], torch.from_numpy

        def encode(batch):
            return encode_pixels(pipe.vae, to_pixels(batch[0], spec.image_size)), encode_ids(pipe.text_encoder, batch[1])
    train_loader = rows_loader(arrays, t.batch_size, True, spec.seed, convert, index=subset)
    val_loader = rows_loader([encodings.latents["val"], encodings.text["val"]], t.eval_batch_size, False, spec.seed, encodings.tensor)
    return train_loader, val_loader, encode


def method_on_unet(run: Run, pipe, device) -> tuple[Any, dict[str, Any], int]:
    """(U-Net with the method applied, the row's parameter columns, parameters the method added)."""
    from medpeft_cli.t2i.scoring import apply_speed_options

    unet = pipe.unet.to(device)  # methods such as svdiff decompose weights on the training device
    before = sum(p.numel() for p in unet.parameters())
    model = run.info.apply(unet, run.options)
    apply_speed_options(model, run.spec.t2i)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not trainable:
        raise UserError("the method left no U-Net parameter trainable; check its options")
    params = {"trainable_params": trainable, "head_params": 0, "method_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total}
    return model, params, total - before


class TextToImageTask:
    name = "t2i"

    def resolve_options(self, spec: RunSpec, info) -> Any:
        options = validate_options(info, spec.method.options)
        if spec.param_budget is not None:
            raise UserError(f"param_budget applies to classification methods; the {spec.task} task sizes its methods through their options")
        return options

    def fill_defaults(self, spec_data: dict[str, Any]) -> dict[str, Any]:
        from medpeft_cli.t2i.options import (
            fill_defaults,  # sampling steps, FID samples and features depend on the pipeline
        )

        return {**spec_data, "t2i": fill_defaults(spec_data["t2i"], spec_data["backbone"])}

    def prepare(self, run: Run, report) -> T2IPrepared:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from medpeft_cli.data import load_dataset, stratified_subset
        from medpeft_cli.data.bundle import SPLIT_NAMES
        from medpeft_cli.store.provenance import package_version
        from medpeft_cli.t2i.captions import captions_of
        from medpeft_cli.t2i.features import build_extractor
        from medpeft_cli.t2i.loop import Denoising
        from medpeft_cli.t2i.pipeline import load_pipeline, quiet_hf
        from medpeft_cli.t2i.scoring import check_resolution, data_root, weight_dtype
        from medpeft_cli.train.loop import resolve_mixed_precision

        spec = run.spec
        t, t2i = spec.train, spec.t2i
        # Everything that can fail on bad input fails here, before any training.
        extractor = build_extractor(t2i.fid_features)
        pipe = load_pipeline(spec.backbone, data_root(spec))
        check_resolution(spec.image_size, pipe)
        data = load_dataset(spec.dataset, spec.output.data_dir, resolution=spec.data_resolution)
        captions = {s: captions_of(data, s, t2i.caption_column) for s in SPLIT_NAMES}
        subset = stratified_subset(data.splits["train"].labels, spec.data_fraction, spec.seed)
        accelerator = Accelerator(mixed_precision=resolve_mixed_precision(t.precision), gradient_accumulation_steps=t.grad_accum_steps)
        report.only_main(accelerator)  # one progress stream per multi-process launch
        with quiet_hf():  # diffusers' recipe: the frozen VAE and text encoder run in the half precision of the run
            pipe.vae.to(accelerator.device, weight_dtype(accelerator))
            pipe.text_encoder.to(accelerator.device, weight_dtype(accelerator))
        encodings, cache_state = encodings_for(spec, pipe, data, captions, accelerator, report)
        set_seed(spec.seed)
        model, params, added = method_on_unet(run, pipe, accelerator.device)
        train_loader, val_loader, encode = training_batches(spec, pipe, data, captions, encodings, subset)
        vae_cfg = pipe.vae.config
        denoising = Denoising(
            pipe.training_scheduler(), float(vae_cfg.scaling_factor), float(getattr(vae_cfg, "shift_factor", None) or 0.0),
            pipe.prediction_type, encodings.tensor(encodings.empty_text).to(accelerator.device), t2i.caption_dropout,
        )  # fmt: skip
        return T2IPrepared(
            run=run, report=report, accelerator=accelerator, model=model, data=data, train_images=len(subset), params=params,
            weights_source=pipe.weights_source, backbone_checksum=pipe.checksums["unet"],
            provenance={"diffusers_version": package_version("diffusers"), "transformers_version": package_version("transformers")},
            log_lines=[f"latent cache: {cache_state}"], pipe=pipe, encodings=encodings, extractor=extractor, train_loader=train_loader,
            val_loader=val_loader, encode=encode, denoising=denoising, cache_state=cache_state, added_params=added,
        )  # fmt: skip

    def fit(self, prepared: T2IPrepared, control) -> Fitted:
        from accelerate.utils import set_seed

        from medpeft_cli.t2i.loop import fit_t2i

        spec = prepared.run.spec
        t = spec.train

        def on_epoch(record: dict) -> None:
            val = f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else ""
            line = f"epoch {record['epoch']}/{t.epochs} train_loss {record['train_loss']:.4f}{val} {record['train_images_per_s']:.1f} img/s"
            prepared.log_lines.append(line)
            prepared.report.log(line)

        control.on_epoch = on_epoch
        set_seed(spec.seed)  # the same random stream whether the cache was hit or built
        fit = fit_t2i(prepared.model, prepared.train_loader, prepared.val_loader, prepared.encode, prepared.denoising, t, spec.t2i, t.lr,
                      prepared.accelerator, control=control)  # fmt: skip
        return Fitted(result=fit, history=fit.history, diverged=fit.diverged, train_images_per_s=fit.train_images_per_s,
                      peak_memory_mb=fit.peak_memory_mb, memory_kind=fit.memory_kind)  # fmt: skip

    def evaluate(self, prepared: T2IPrepared, fitted: Fitted) -> dict[str, Any] | None:
        """FID/KID over the spec's seeds from the test prompts, generated on the main process only."""
        from medpeft_cli.t2i.scoring import evaluate_generation

        accelerator = prepared.accelerator
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return None
        unet = accelerator.unwrap_model(prepared.model)
        scores, images, prompts = evaluate_generation(
            prepared.run.spec, prepared.pipe, unet, prepared.data, prepared.encodings, prepared.extractor, accelerator, prepared.report.log
        )  # fmt: skip
        prepared.log_lines.append(
            f"FID {scores.fid:.3f} KID {scores.kid:.5f} ({scores.features}, {scores.samples} images x seeds {scores.seeds}); added {prepared.added_params} parameters"
        )
        return {"scores": scores, "images": images, "prompts": prompts}

    def row_fields(self, prepared: T2IPrepared, fitted: Fitted, metrics: dict[str, Any] | None) -> dict[str, Any]:
        fit, scores = fitted.result, metrics["scores"] if metrics else None
        measured = {
            "test_fid": scores.fid, "test_fid_std": scores.fid_std, "test_kid": scores.kid, "test_kid_std": scores.kid_std,
            "fid_features": scores.features, "fid_samples": scores.samples, "fid_seeds": json.dumps(scores.seeds),
            "train_loss": fit.train_loss, "val_loss": fit.val_loss, "generate_images_per_s": scores.images_per_s,
        } if scores else {}  # diverged: NULL, so no table shows a number  # fmt: skip
        test = scores.as_dict() if scores else None
        return {**measured, "metrics_json": json.dumps({"test": test, "history": fit.history, "latent_cache": prepared.cache_state})}

    def save(self, prepared: T2IPrepared, fitted: Fitted, metrics: dict[str, Any] | None, folder: Path) -> None:
        from medpeft_cli.store.rundir import write_json
        from medpeft_cli.t2i.scoring import write_samples
        from medpeft_cli.t2i.weights import save_t2i_weights

        fit = fitted.result
        write_json(folder / "metrics.json", {"test": metrics["scores"].as_dict() if metrics else None, "history": fit.history,
                                             "val_loss": fit.val_loss, "latent_cache": prepared.cache_state, "pipeline_checksums": prepared.pipe.checksums})  # fmt: skip
        if metrics:  # a diverged model's weights and samples are worth nothing
            write_samples(folder, metrics["images"], metrics["prompts"], prepared.run.spec.t2i.fid_seeds[0])
            save_t2i_weights(prepared.accelerator.unwrap_model(prepared.model), folder, prepared.run.info.peft_owned)

    def headline(self, row: dict[str, Any]) -> str:
        return f"FID {row['test_fid']:.3f}" if row.get("test_fid") is not None else str(row.get("status"))


TASK = TextToImageTask()
