"""Load a Stable Diffusion pipeline component by component, offline, and say exactly which weights.

`--backbone` names the pipeline: `tiny-sd` (the embedded random-init pipeline, tiny.py), a local
diffusers folder (with model_index.json), or a Hugging Face id such as
`stable-diffusion-v1-5/stable-diffusion-v1-5`, resolved in the local HF cache (downloaded only when
medpeft is not offline). Only the parts SD fine-tuning needs are read: unet, vae, text_encoder,
tokenizer and the scheduler config. Any failure is one line (UserError).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.t2i.options import TINY_SD

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Files fetched for an HF id: what the components need, safetensors only (no safety checker, no fp16/EMA variants).
HUB_PATTERNS = ["model_index.json", "scheduler/*.json", "tokenizer/*", "text_encoder/config.json", "text_encoder/model.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
# The weights file of each model component, in the order diffusers/transformers prefer them.
WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Pipeline:
    """The loaded components of an SD pipeline and their identity."""

    name: str  # as given by --backbone
    root: Path
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    sampler_class: type  # the pipeline's own scheduler, used for sampling
    weights_source: str  # "medpeft:tiny-sd-v1 ...", "hf-hub:<id>@<commit>" or "dir:<path>"
    checksums: dict[str, str] = field(default_factory=dict)  # component -> sha256 of its files

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def encoder_checksum(self) -> str:
        """Identity of what turns data into latents and text embeddings (keys the latent cache)."""
        payload = json.dumps({c: self.checksums[c] for c in ("vae", "text_encoder", "tokenizer")}, sort_keys=True)
        return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel (8 for SD-1.x, 4 for tiny-sd)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def training_scheduler(self):
        """DDPM with the pipeline's noise schedule (diffusers' recipe for fine-tuning)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)


@contextmanager
def quiet_hf():
    """diffusers/transformers without progress bars and advice-level logging (medpeft prints its own lines)."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    levels = dl.get_verbosity(), tl.get_verbosity()
    bars = dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled()
    dl.set_verbosity_error(), tl.set_verbosity_error()
    dl.disable_progress_bar(), tl.disable_progress_bar()
    try:
        yield
    finally:
        dl.set_verbosity(levels[0]), tl.set_verbosity(levels[1])
        if bars[0]:
            dl.enable_progress_bar()
        if bars[1]:
            tl.enable_progress_bar()


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def component_checksum(root: Path, component: str) -> str:
    """sha256 over the config and the weights file a component is loaded from (all files for the tokenizer)."""
    folder = root / component
    if component == "tokenizer":
        files = sorted(p for p in folder.iterdir() if p.is_file())
    elif component == "scheduler":
        files = [folder / "scheduler_config.json"]
    else:
        weights = next((folder / n for n in WEIGHT_FILES[component] if (folder / n).is_file()), None)
        if weights is None:
            raise UserError(f"pipeline {root} has no {component} weights ({' or '.join(WEIGHT_FILES[component])} in {folder}); re-download the pipeline")
        files = [folder / "config.json", weights]
    return _sha256_files(files)


def resolve_pipeline_dir(backbone: str, data_dir: Path) -> tuple[Path, str]:
    """(local folder, weights source) for a pipeline name."""
    if backbone == TINY_SD:
        from medpeft_cli.t2i.tiny import SEED, TINY_VERSION, tiny_pipeline_dir

        with quiet_hf():  # its first save would draw transformers' "Writing model shards" bar on stderr
            return tiny_pipeline_dir(data_dir), f"medpeft:{TINY_VERSION} (random-init, seed {SEED})"
    path = Path(backbone).expanduser()
    if path.is_dir():
        return path.resolve(), f"dir:{path.resolve()}"
    if not _HUB_ID.match(backbone):
        raise UserError(f"pipeline {backbone!r} is neither `tiny-sd`, a local diffusers folder nor a Hugging Face id (owner/name); check --backbone")
    from huggingface_hub import snapshot_download

    from medpeft_cli.data.load import offline

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        folder = Path(snapshot_download(backbone, allow_patterns=HUB_PATTERNS, local_files_only=offline()))
    except Exception as exc:  # the hub client raises many types (offline, gated, not found)
        why = "it is not in the local Hugging Face cache and medpeft is offline" if offline() else f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        raise UserError(
            f"cannot load pipeline {backbone} ({why}); download it once where there is network "
            f"(`huggingface-cli download {backbone}`), or pass a local pipeline folder as --backbone"
        ) from None
    finally:
        hub_logger.setLevel(level)
    return folder, f"hf-hub:{backbone}@{folder.name}"


def read_model_index(root: Path, name: str) -> dict:
    index_path = root / "model_index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except OSError:
        raise UserError(f"{name} is not a diffusers pipeline ({index_path} missing); pass a Stable Diffusion pipeline folder or HF id") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{index_path} is not valid JSON ({exc.msg}); re-download the pipeline") from None
    unet = index.get("unet")
    if not isinstance(unet, list) or unet[-1] is None or not (root / "unet").is_dir():
        raise UserError(
            f"pipeline {name} has no U-Net (model_index.json lists {', '.join(k for k in index if not k.startswith('_'))}); "
            "the text-to-image track fine-tunes the U-Net of a Stable Diffusion pipeline"
        )
    if unet[-1] != "UNet2DConditionModel":
        raise UserError(f"pipeline {name} has a {unet[-1]} denoiser; medpeft fine-tunes Stable Diffusion's UNet2DConditionModel (SD-1.x/2.x pipelines)")
    missing = [c for c in COMPONENTS if not (root / c).is_dir()]
    if missing:
        raise UserError(f"pipeline {name} lacks {', '.join(missing)} (folders under {root}); a text-to-image run needs {', '.join(COMPONENTS)}")
    return index


def scheduler_class(config: dict, name: str) -> type:
    """The diffusers scheduler class named in the pipeline's scheduler config."""
    import diffusers
    from diffusers import SchedulerMixin

    cls_name = config.get("_class_name")
    cls = getattr(diffusers, str(cls_name), None) if cls_name else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise UserError(f"pipeline {name} names an unknown scheduler {cls_name!r} (scheduler/scheduler_config.json); use a diffusers scheduler such as DDIMScheduler or PNDMScheduler")
    return cls


def load_pipeline(backbone: str, data_dir: Path) -> Pipeline:
    """Load the SD components of `backbone` on the CPU in float32 (the caller moves and casts them)."""
    root, source = resolve_pipeline_dir(backbone, data_dir)
    read_model_index(root, backbone)
    try:
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the scheduler config of {backbone} ({exc}); re-download the pipeline") from None
    sampler = scheduler_class(scheduler_config, backbone)
    if scheduler_config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction", "sample"):
        raise UserError(f"pipeline {backbone} predicts {scheduler_config['prediction_type']!r}; medpeft trains epsilon-, v- or sample-prediction U-Nets")
    checksums = {c: component_checksum(root, c) for c in COMPONENTS}

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    with quiet_hf():
        parts = {}
        for component, load in (
            ("unet", lambda: UNet2DConditionModel.from_pretrained(root, subfolder="unet")),
            ("vae", lambda: AutoencoderKL.from_pretrained(root, subfolder="vae")),
            ("text_encoder", lambda: CLIPTextModel.from_pretrained(root, subfolder="text_encoder")),
            ("tokenizer", lambda: AutoTokenizer.from_pretrained(root, subfolder="tokenizer")),
        ):
            try:
                parts[component] = load()
            except Exception as exc:  # corrupt or foreign files: one line, not a traceback
                raise UserError(f"cannot load the {component} of pipeline {backbone} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); re-download the pipeline") from None
    for module in (parts["unet"], parts["vae"], parts["text_encoder"]):
        module.eval()
    parts["vae"].requires_grad_(False)
    parts["text_encoder"].requires_grad_(False)
    return Pipeline(
        name=backbone, root=root, scheduler_config=scheduler_config, sampler_class=sampler, weights_source=source, checksums=checksums, **parts
    )
