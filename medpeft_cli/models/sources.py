"""What a `--backbone` string names: a builtin, a timm model, a Hugging Face transformers vision model or a custom factory.

    cifar_resnet20 ... cifar_resnet110         medpeft's own (models/builtin_models.py; wins over a timm name)
    vit_base_patch16_224, resnet50.a1_in1k     timm name (a pretrained tag after the dot)
    hf-hub:org/name, local-dir:/path/to/dir    timm model from the HF hub or a local timm folder
    transformers:org/name, transformers:DIR    HF transformers vision model: hub id or save_pretrained folder
    DIR                                        a folder whose config.json names a transformers `model_type`
    path/to/models.py:factory                  custom: a function in a Python file that returns an nn.Module
    package.module:factory                     custom: a function in an importable module

Torch-free: config.py hashes a custom factory's source file (`code_identity`) and a weights file
(`weights_identity`) into the run key, and the CLI parses specs before it decides to train.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medpeft_cli.errors import UserError
from medpeft_cli.models.builtin_models import BUILTINS

TIMM, TRANSFORMERS, CUSTOM, BUILTIN = "timm", "transformers", "custom", "builtin"
TRANSFORMERS_PREFIX = "transformers:"
TIMM_PREFIXES = ("hf-hub:", "local-dir:")
_FACTORY = re.compile(r"^(?P<target>.+):(?P<factory>[A-Za-z_]\w*)$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class BackboneSource:
    kind: str  # BUILTIN, TIMM, TRANSFORMERS or CUSTOM
    spec: str  # as the user wrote it
    target: str  # builtin, timm: model name; transformers: hub id or absolute folder; custom: absolute .py path or module name
    factory: str = ""  # custom: the function's name
    local: bool = False  # transformers: a local folder; custom: a .py file (not a module)

    @property
    def needs_hub(self) -> bool:
        """Building even the architecture needs files from the HF hub (or its local cache)."""
        return (self.kind == TIMM and self.target.startswith("hf-hub:")) or (self.kind == TRANSFORMERS and not self.local)

    @property
    def label(self) -> str:
        """How rows and messages name the source."""
        if self.kind == CUSTOM:
            return f"custom:{self.target}:{self.factory}"
        if self.kind == TRANSFORMERS:
            return f"transformers:{self.target}"
        return self.target


def parse_backbone(spec: str) -> BackboneSource:
    """Say which kind of source `spec` names; a custom file or transformers folder must exist."""
    text = spec.strip()
    if not text:
        raise UserError("the backbone is empty; give a timm name, transformers:<id or folder> or path/to/file.py:factory")
    if text in BUILTINS:
        return BackboneSource(BUILTIN, text, text)
    if text.startswith(TRANSFORMERS_PREFIX):
        return _transformers(text, text[len(TRANSFORMERS_PREFIX):].strip())
    if text.startswith(TIMM_PREFIXES):
        return BackboneSource(TIMM, text, text)
    match = _FACTORY.match(text)
    if match and (match["target"].endswith(".py") or _MODULE.match(match["target"])):
        return _custom(text, match["target"], match["factory"])
    path = Path(text).expanduser()
    if path.is_dir() and _transformers_config(path) is not None:
        return BackboneSource(TRANSFORMERS, text, str(path.resolve()), local=True)
    if path.is_dir() and ("/" in text or text.startswith((".", "~"))):  # a bare name may be a timm model and a folder here
        raise UserError(
            f"backbone folder {text} holds no transformers config.json with a model_type; "
            f"for a timm folder write local-dir:{text}, for a transformers one save the model there with save_pretrained"
        )
    return BackboneSource(TIMM, text, text)


def _transformers(spec: str, target: str) -> BackboneSource:
    path = Path(target).expanduser()
    if path.is_dir():
        if _transformers_config(path) is None:
            raise UserError(f"{target} has no config.json with a transformers model_type; save the model there with save_pretrained")
        return BackboneSource(TRANSFORMERS, spec, str(path.resolve()), local=True)
    if not _HUB_ID.match(target) or target.startswith((".", "~")):
        raise UserError(f"transformers backbone {target!r} is neither an existing folder nor a hub id like org/name")
    return BackboneSource(TRANSFORMERS, spec, target)


def _transformers_config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("model_type") else None


def _custom(spec: str, target: str, factory: str) -> BackboneSource:
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserError(f"custom backbone file {target} does not exist; write --backbone path/to/file.py:factory (relative to the working directory)")
        return BackboneSource(CUSTOM, spec, str(path.resolve()), factory, local=True)
    return BackboneSource(CUSTOM, spec, target, factory)


def module_file(module: str) -> Path:
    """The source file of an importable module, found without running it (its parent packages are imported)."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise UserError(f"cannot find module {module!r} of the custom backbone ({exc}); install it or put it on PYTHONPATH") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise UserError(f"cannot find module {module!r} of the custom backbone; install it or put it on PYTHONPATH")
    return Path(found.origin)


def code_identity(spec: str) -> str | None:
    """sha256 of a custom factory's source file (None for timm/transformers backbones).

    Part of the run key: a changed architecture is a new experiment, never mistaken for a finished run.
    Only the factory's own file is hashed, not the modules it imports.
    """
    text = spec.strip()
    match = _FACTORY.match(text)
    if text.startswith((TRANSFORMERS_PREFIX, *TIMM_PREFIXES)) or not match or not (match["target"].endswith(".py") or _MODULE.match(match["target"])):
        return None
    source = _custom(text, match["target"], match["factory"])
    path = Path(source.target) if source.local else module_file(source.target)
    return file_digest(path)


NAMED_WEIGHTS = ("random", "pretrained", "pipeline")  # --weights values that name no file


def weights_file(weights: str) -> Path:
    """The file a `--weights` value other than random/pretrained names (absolute); a missing one is one line."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"weights {weights!r} not understood: it is neither 'random', 'pretrained' nor an existing file "
            f"({path.resolve()} {'is a folder' if path.is_dir() else 'does not exist'}); pass a weights file (safetensors or torch checkpoint, any extension)"
        )
    return path.resolve()


def weights_identity(weights: str) -> str | None:
    """`sha256:<hex>` of the weights file `weights` names (None for random/pretrained/pipeline).

    Part of the run key in place of the path: what was loaded, not where it came from. A changed file at
    the same path is a new run; the same file at another path is the same run.
    """
    if weights in NAMED_WEIGHTS:
        return None
    return file_digest(weights_file(weights))


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file, hashed once per content: cached by path, size, mtime, ctime and inode."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:  # any change: hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
