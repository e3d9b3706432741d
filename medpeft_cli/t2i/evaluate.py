"""Re-score a saved text-to-image run (`medpeft eval runs/<key>`): rebuild the pipeline, check it is
the one the run trained, apply the method, load the trained weights, and generate + score again.

With the run's own settings the numbers reproduce the stored row (same device and library versions:
every image's noise is seeded). `fid_features`, `fid_samples` and `fid_seeds` may be changed, e.g. to
score the same weights in DINOv2 features; such results are printed, not stored (a stored row always
belongs to the spec that made it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medpeft_cli.config import RunSpec, T2IOptions, format_validation_error
from medpeft_cli.errors import UserError

COMPARED = ("fid_features", "fid_samples", "fid_seeds", "num_inference_steps", "guidance_scale", "caption_column")


def evaluate_t2i_run(
    run_dir: Path, row: dict, spec: RunSpec, split: str = "test", dataset: str | None = None, data_dir: Path | None = None,
    fid_features: str | None = None, fid_samples: int | None = None, fid_seeds: list[int] | None = None,
    samples_out: Path | None = None, log=lambda line: None,
) -> dict[str, Any]:
    from accelerate import Accelerator

    from medpeft_cli.data import load_dataset
    from medpeft_cli.methods import get_method, validate_options
    from medpeft_cli.t2i.captions import captions_of
    from medpeft_cli.t2i.features import build_extractor
    from medpeft_cli.t2i.generate import save_grid
    from medpeft_cli.t2i.latents import compute_encodings
    from medpeft_cli.t2i.pipeline import load_pipeline, quiet_hf
    from medpeft_cli.t2i.scoring import data_root, evaluate_generation, weight_dtype
    from medpeft_cli.t2i.weights import load_t2i_weights

    if split != "test":
        raise UserError(f"a text-to-image run is scored on its held-out test prompts; drop --split {split}")
    changes = {k: v for k, v in {"fid_features": fid_features, "fid_samples": fid_samples, "fid_seeds": fid_seeds}.items() if v is not None}
    try:
        t2i = T2IOptions.model_validate({**spec.t2i.model_dump(), **changes})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, "invalid evaluation options")) from None
    scored = spec.model_copy(update={"t2i": t2i})
    extractor = build_extractor(t2i.fid_features)
    pipe = load_pipeline(spec.backbone, data_root(spec))
    if pipe.checksums["unet"] != row.get("backbone_checksum"):
        raise UserError(
            f"the U-Net of pipeline {spec.backbone} ({pipe.weights_source}) differs from the one run {row['run_key']} was trained from; "
            "evaluate with the same pipeline files"
        )
    data = load_dataset(dataset or spec.dataset, data_dir if data_dir is not None else spec.output.data_dir, resolution=spec.data_resolution)
    test_captions = captions_of(data, "test", t2i.caption_column)

    info = get_method(spec.method.name, task="t2i")
    options = validate_options(info, spec.method.options)
    accelerator = Accelerator(mixed_precision=row.get("precision") or "no")
    dtype = weight_dtype(accelerator)
    with quiet_hf():
        pipe.vae.to(accelerator.device, dtype)
        pipe.text_encoder.to(accelerator.device, dtype)
    unet = info.apply(pipe.unet.to(accelerator.device), options)
    load_t2i_weights(unet, Path(run_dir), info.peft_owned)
    unet.eval()
    encodings = compute_encodings(pipe.vae, pipe.text_encoder, pipe.tokenizer, {}, {"test": test_captions}, spec.image_size,
                                  spec.train.eval_batch_size, splits_with_latents=())
    scores, first_images, _ = evaluate_generation(scored, pipe, unet, data, encodings, extractor, accelerator, log)
    grid = save_grid(first_images, Path(samples_out)) if samples_out else None
    same = data.name == spec.dataset and data.checksum == row.get("dataset_checksum") and all(
        getattr(t2i, k) == getattr(spec.t2i, k) for k in COMPARED
    )
    return {"run_key": row["run_key"], "task": "t2i", "dataset": data.name, "split": split, "metrics": scores.as_dict(),
            "samples": str(grid) if grid else None, "stored": row if same else None}
