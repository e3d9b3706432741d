"""Saving and loading what a text-to-image method trained.

LoRA is saved the way diffusers' own LoRA training saves it (`adapter/pytorch_lora_weights.safetensors`
with the peft config in its metadata), so `StableDiffusionPipeline.load_lora_weights(run_dir / "adapter")`
loads it into any pipeline with the same U-Net. Every other method saves its trainable tensors to
`trainable.safetensors` (medpeft's classification format), loaded into a fresh U-Net prepared by the
same method.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.train.checkpoint import ADAPTER_DIR, load_weights, save_weights

LORA_FILE = "pytorch_lora_weights.safetensors"


def save_t2i_weights(unet: nn.Module, out_dir: Path, peft_owned: bool) -> str:
    """Write the trained state of `unet` under out_dir; returns the relative path written."""
    if not peft_owned:
        return save_weights(unet, out_dir, peft_owned=False)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        str(out_dir / ADAPTER_DIR), unet_lora_layers=state, safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    return f"{ADAPTER_DIR}/{LORA_FILE}"


def load_t2i_weights(unet: nn.Module, run_dir: Path, peft_owned: bool) -> nn.Module:
    """Load a run's weights into `unet`, to which the run's method has already been applied."""
    if not peft_owned:
        return load_weights(unet, run_dir, peft_owned=False)
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(run_dir) / ADAPTER_DIR / LORA_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} has no LoRA weights ({path} missing); the run directory is incomplete")
    state = {k.removeprefix("unet."): v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise UserError(f"{path} does not match this run's LoRA (unexpected keys such as {unexpected[0]}); was it made with other options?")
    return unet
