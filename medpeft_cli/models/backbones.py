"""Create a classification backbone and say exactly which weights it holds.

`weights` is 'random' (random init, seeded), 'pretrained' (timm's default pretrained tag, from the
Hugging Face hub or its local cache) or a path to a local weights file. A request for pretrained
weights that cannot be met is an error, never a silent fall back to random weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medpeft_cli.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Backbone:
    model: nn.Module
    name: str
    family: str  # "vit", "hvit", "cnn" or "other": decides which methods apply and their defaults
    head_name: str  # dotted module name of the classifier, trained by every method
    weights_source: str  # exactly what was loaded: "random-init (seed N)", "hf-hub:<id>", "file:<path> sha256:<hex>"
    num_params: int
    checksum: str  # sha256 of the initial state dict, checked again when a saved run is re-scored


def detect_family(model: nn.Module) -> str:
    """'vit' for a plain ViT (attention blocks over one token sequence: ViT, DeiT, EVA, CLIP), 'hvit' for
    hierarchical/windowed transformers (Swin, ...), 'cnn' if built from convolutions, else 'other'
    (including conv-attention hybrids such as MaxViT and CoAtNet).
    """
    names = {type(m).__name__.lower() for m in model.modules()}
    if any("attention" in n or n == "attn" for n in names):
        # Token-sequence methods (VPT, FacT) need one `blocks` sequence after a patch embedding.
        if isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)) and hasattr(model, "patch_embed"):
            return "vit"
        # Conv-attention hybrids mix BatchNorm conv blocks with attention; transformer methods do not fit them.
        hybrid = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return "other" if hybrid else "hvit"
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return "cnn" if convs > 1 else "other"


def _head_name(model: nn.Module) -> str:
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    if isinstance(name, (tuple, list)):  # e.g. distilled DeiT: a class head and a distillation head
        raise UserError(f"{type(model).__name__} has several classification heads ({', '.join(name)}); use a single-head variant (e.g. deit_*_patch16_224, not *_distilled_*)")
    if name:
        return name
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    for module_name, module in model.named_modules():
        if module is classifier:
            return module_name
    raise UserError(f"cannot find the classification head of {type(model).__name__}; use a timm classification model")


def _create(name: str, num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]) and not name.startswith("hf-hub:"):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(f"unknown backbone {name!r}{hint}; `python -c \"import timm; print(timm.list_models())\"` lists timm names")
    kwargs = {"num_classes": num_classes, "pretrained": pretrained}
    try:
        # ViT-like models take the input size (position embeddings are resampled); CNNs do not.
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        return timm.create_model(name, **kwargs)


def _create_pretrained(name: str, num_classes: int, image_size: int) -> nn.Module:
    import logging

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry messages would bury our one-line error
    try:
        return _create(name, num_classes, image_size, pretrained=True)
    except UserError:
        raise
    except Exception as exc:
        offline = "LocalEntryNotFound" in type(exc).__name__ or "connect" in str(exc).lower()
        reason = "not in the local Hugging Face cache and the hub is unreachable" if offline else f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        raise UserError(
            f"could not load pretrained weights for {name} ({reason}); fetch them once on a machine with network access "
            "(they are cached in ~/.cache/huggingface), or pass --weights FILE, or --weights random for random init"
        ) from None
    finally:
        hub_logger.setLevel(level)


def _state_checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _file_sha256(path: Path) -> str:
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


def _load_local_weights(model: nn.Module, path: Path, head_name: str) -> None:
    state = load_state_dict_file(path)
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = model.state_dict()
    # The head is re-initialised for this dataset's classes when its shape differs.
    state = {k: v for k, v in state.items() if not (k.startswith(head_name + ".") and k in own and own[k].shape != v.shape)}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_name + ".")]
    if missing or result.unexpected_keys or mismatched:
        example = (missing + list(result.unexpected_keys) + mismatched)[:3]
        raise UserError(
            f"weights file {path} does not fit backbone {type(model).__name__}: {len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected, {len(mismatched)} wrong-shape keys (e.g. {', '.join(example)}); "
            "check the backbone name matches the checkpoint's architecture"
        )


def create_backbone(name: str, weights: str, num_classes: int, image_size: int, seed: int) -> Backbone:
    """Build the backbone with a fresh `num_classes` head; random init is seeded by `seed`."""
    torch.manual_seed(seed)
    if weights == "random":
        model = _create(name, num_classes, image_size, pretrained=False)
        source = f"random-init (seed {seed})"
    elif weights == "pretrained":
        model = _create_pretrained(name, num_classes, image_size)
        cfg = model.pretrained_cfg
        source = f"hf-hub:{cfg.get('hf_hub_id') or name}" + (f" tag={cfg['tag']}" if cfg.get("tag") else "")
    elif Path(weights).suffix in WEIGHT_SUFFIXES:
        path = Path(weights).expanduser().resolve()
        model = _create(name, num_classes, image_size, pretrained=False)
        _load_local_weights(model, path, _head_name(model))
        source = f"file:{path} sha256:{_file_sha256(path)}"
    else:
        raise UserError(f"weights {weights!r} not understood; use 'random', 'pretrained' or a path to a {'/'.join(WEIGHT_SUFFIXES)} file")
    model.eval()
    return Backbone(
        model=model,
        name=name,
        family=detect_family(model),
        head_name=_head_name(model),
        weights_source=source,
        num_params=sum(p.numel() for p in model.parameters()),
        checksum=_state_checksum(model),
    )
