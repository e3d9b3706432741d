"""Saving and loading what a method trained.

peft-owned methods (LoRA, ...) are saved with peft's `save_pretrained` into `adapter/` and load with
`PeftModel.from_pretrained` (after `prepare_for_adapter`, which redoes a q/k/v split recorded beside the
adapter; BatchNorm statistics of the backbone, which peft does not save, are stored there too).
Other methods save their trainable parameters plus the buffers training can change (BatchNorm
statistics) to `trainable.safetensors`, loaded into a fresh backbone prepared by the same method.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medpeft_cli.errors import UserError

ADAPTER_DIR = "adapter"
TRAINABLE_FILE = "trainable.safetensors"
# Beside peft's files: how the backbone was prepared before peft wrapped it (a fused qkv split into q, k, v),
# and the BatchNorm statistics training changed (peft saves only adapter weights and modules_to_save).
STRUCTURE_FILE = "medpeft_structure.json"
NORM_STATS_FILE = "medpeft_norm_stats.safetensors"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and persistent buffers, by state-dict key (detached, not copied)."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    param_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in model.state_dict().items() if k in trainable or k not in param_names}


def save_weights(model: nn.Module, out_dir: Path, peft_owned: bool) -> str:
    """Write the trained state under out_dir; returns the relative path written."""
    if peft_owned:
        from medpeft_cli.methods.qkv import has_split_qkv

        model.save_pretrained(str(out_dir / ADAPTER_DIR))
        structure = {"split_qkv": has_split_qkv(model)}
        (out_dir / ADAPTER_DIR / STRUCTURE_FILE).write_text(json.dumps(structure) + "\n", encoding="utf-8")
        stats = _norm_stats(model.get_base_model())
        if stats:
            save_file(stats, str(out_dir / ADAPTER_DIR / NORM_STATS_FILE), metadata={"format": "medpeft-norm-stats-v1"})
        return ADAPTER_DIR
    state = {k: v.detach().cpu().contiguous() for k, v in trainable_state(model).items()}
    save_file(state, str(out_dir / TRAINABLE_FILE), metadata={"format": "medpeft-trainable-v1"})
    return TRAINABLE_FILE


def _norm_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """Running statistics of the BatchNorm layers (they change in training even when the layer is frozen)."""
    names = {f"{name}." for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if any(k.startswith(n) for n in names) and k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def prepare_for_adapter(model: nn.Module, adapter: Path) -> None:
    """Give a fresh backbone the module layout the peft adapter was trained on (before `PeftModel.from_pretrained`)."""
    from medpeft_cli.methods.common import expose_fused_qkv
    from medpeft_cli.methods.qkv import split_fused_qkv

    expose_fused_qkv(model)  # EVA: without it the adapted qkv layer would be bypassed
    path = adapter / STRUCTURE_FILE
    structure = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if structure.get("split_qkv"):
        split_fused_qkv(model)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft's weights file (safetensors since peft 0.7)


def check_saved_weights(run_dir: Path, peft_owned: bool) -> Path:
    """The run's saved weights file, checked before anything is built: present, not empty, a readable
    safetensors header (peft-owned: adapter_config.json and the adapter's weights). One line otherwise."""
    run_dir = Path(run_dir)
    if peft_owned:
        adapter = run_dir / ADAPTER_DIR
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{run_dir} has no peft adapter ({adapter}/adapter_config.json missing); the run directory is incomplete: rerun the run with --force")
        path = next((adapter / n for n in ADAPTER_WEIGHTS if (adapter / n).is_file()), adapter / ADAPTER_WEIGHTS[0])
    else:
        path = run_dir / TRAINABLE_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} has no {path.relative_to(run_dir)}; the run directory is incomplete: rerun the run with --force")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty; the run directory is damaged: rerun the run with --force")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise UserError(f"{path} is not a valid safetensors file ({str(exc)[:120]}); the run directory is damaged: rerun the run with --force") from None
    return path


def load_weights(model: nn.Module, run_dir: Path, peft_owned: bool) -> nn.Module:
    """Load a run's saved weights into `model` (the fresh backbone, method already applied unless peft-owned)."""
    check_saved_weights(run_dir, peft_owned)
    if peft_owned:
        from peft import PeftModel

        adapter = run_dir / ADAPTER_DIR
        prepare_for_adapter(model, adapter)
        with warnings.catch_warnings():
            # peft's LN tuning asks norm layers for in/out features they do not have; harmless.
            warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
            loaded = PeftModel.from_pretrained(model, str(adapter))
        if (adapter / NORM_STATS_FILE).is_file():
            stats = load_file(str(adapter / NORM_STATS_FILE))
            base = loaded.get_base_model()
            if set(stats) != set(_norm_stats(base)):
                raise UserError(f"{adapter / NORM_STATS_FILE} does not match the backbone of this run; the run directory is damaged")
            base.load_state_dict(stats, strict=False)
        return loaded
    path = run_dir / TRAINABLE_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise UserError(f"{path} is not a valid safetensors file ({str(exc)[:120]}); the run directory is damaged") from None
    expected = set(trainable_state(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        example = sorted(missing | unexpected)[:3]
        raise UserError(
            f"{path} does not match the backbone and method of this run ({len(missing)} missing, {len(unexpected)} unexpected keys, "
            f"e.g. {', '.join(example)}); was the run made with another medpeft or timm version?"
        )
    model.load_state_dict(state, strict=False)
    return model
