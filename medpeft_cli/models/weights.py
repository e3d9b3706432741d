"""Local weights files for any backbone: read safely, pick the keys under a prefix, load with a clear report.

A file is read as safetensors or with torch.load(weights_only=True): a pickle that needs arbitrary code
to load is refused. Keys under `prefix` are taken (without it); with no prefix given, a `module.` or
`model.` prefix shared by every key (DataParallel, Lightning) is removed, and the source says so.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from medpeft_cli.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
AUTO_PREFIXES = ("module.", "model.")


def is_weights_file(weights: str) -> bool:
    return Path(weights).suffix in WEIGHT_SUFFIXES


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely: safetensors, or torch files with weights_only=True (no pickled code)."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass an existing .safetensors/.pth file, 'pretrained' or 'random'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise UserError(f"weights file {path} is not a valid safetensors file ({exc}); re-export it") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"refusing to load {path}: it is not a plain tensor checkpoint loadable with weights_only=True "
            f"({type(exc).__name__}); re-save it as a state dict (torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} does not hold a state dict of tensors; save model.state_dict()")
    return state


def select_prefix(state: dict[str, torch.Tensor], prefix: str | None, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The keys under `prefix` with it removed, and the prefix taken ('' for none)."""
    if prefix:
        taken = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not taken:
            starts = sorted({k.split(".", 1)[0] + "." for k in state})[:5]
            raise UserError(f"no key of weights file {path} starts with {prefix!r} (its keys start with {', '.join(starts)}); fix --weights-prefix")
        return taken, prefix
    removed = ""
    for auto in AUTO_PREFIXES:
        if state and all(k.startswith(auto) for k in state):
            state = {k[len(auto):]: v for k, v in state.items()}
            removed += auto
    return state, removed


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], head_name: str | None, path: Path, what: str) -> None:
    """Load `state` into `model`; every key outside the head must fit (names and shapes), else one clear line.

    The head is re-initialised for this dataset's classes when its shape differs (an ImageNet head, say).
    """
    own = model.state_dict()

    def in_head(key: str) -> bool:
        return head_name is not None and key.startswith(head_name + ".")

    state = {k: v for k, v in state.items() if not (in_head(k) and k in own and own[k].shape != v.shape)}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    missing = [k for k in result.missing_keys if not in_head(k)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected or mismatched:
        example = (missing + unexpected + mismatched)[:3]
        raise UserError(
            f"weights file {path} does not fit {what}: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} wrong-shape keys (e.g. {', '.join(example)}); check the backbone matches the checkpoint's "
            "architecture, and pass --weights-prefix PREFIX if its keys sit under a prefix (e.g. 'backbone.')"
        )


def describe_file(path: Path, prefix: str) -> str:
    """The weights source of a local file: its absolute path, content hash and the key prefix taken."""
    return f"file:{path} sha256:{file_sha256(path)}" + (f" prefix:{prefix}" if prefix else "")
