"""Weights files for any backbone: recognised by their content, read safely, unwrapped, loaded with a clear report.

- The format is read from the leading bytes, never from the name (`.th`, `.pth.tar`, `.ckpt`, `.bin`, `.pt`,
  `.pth`, `.safetensors` or no extension): safetensors (an 8-byte header length, then a JSON header), a torch
  zip archive (`PK\\x03\\x04`: torch.save since 1.6, Lightning .ckpt, most .bin) or a legacy torch pickle
  (the pickle protocol opcode 0x80: older .th, .pth.tar).
- torch files are read with torch.load(weights_only=True): a file that needs code to unpickle is refused.
- The state dict may be nested under the usual keys (state_dict, model, model_state_dict, module, net,
  network); entries such as `epoch` or `best_prec1` beside it are ignored. Other dicts of tensors (an EMA,
  teacher or student copy) are taken only when named with --weights-key (a dotted path); two usual keys
  holding tensors, or none, is one line asking for --weights-key, never a guess.
- Keys under --weights-prefix are taken (without it); with no prefix given, a prefix every key shares
  (module., model., backbone., encoder.) is stripped when that makes more keys fit the model.
The row's weights_source says which file (its sha256), which key path and which prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.hashing import file_sha256
from medpeft_cli.models.sources import weights_file

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network")
AUTO_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
SAFETENSORS, TORCH_ZIP, TORCH_PICKLE = "safetensors", "torch zip", "torch pickle"
MAX_NESTING = 4



def weights_path(weights: str) -> Path:
    """The file a `weights` value other than random/pretrained names; a missing one is one line."""
    return weights_file(weights)


def file_format(path: Path) -> str:
    """SAFETENSORS, TORCH_ZIP or TORCH_PICKLE, read from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return TORCH_PICKLE
    raise UserError(
        f"weights file {path} is not a safetensors file nor a torch checkpoint (it starts with {head[:8]!r}); "
        "save the weights with torch.save(model.state_dict(), ...) or safetensors"
    )


@dataclass(frozen=True)
class Checkpoint:
    """A state dict read from a file, and where in the file it was."""

    path: Path
    sha256: str
    state: dict[str, torch.Tensor]
    key: str = ""  # dotted key path of the state dict in the file ('' at the top level)
    prefix: str = ""  # stripped from every key
    ignored: tuple[str, ...] = ()  # other dicts of tensors in the file, not loaded (e.g. an EMA copy)

    def describe(self, origin: str | None = None) -> str:
        """The row's weights_source: `file:<abs path>` (or `<origin> file:<name>`), sha256, key path and prefix."""
        text = f"{origin} file:{self.path.name}" if origin else f"file:{self.path}"
        text += f" sha256:{self.sha256}"
        text += f" key:{self.key}" if self.key else ""
        text += f" prefix:{self.prefix}" if self.prefix else ""
        return text + (f" ignored:{','.join(self.ignored)}" if self.ignored else "")

    def fit(self, prefix: str | None, own_keys: Iterable[str] | None = None) -> Checkpoint:
        """The keys under `prefix` (without it); with none given, strip the shared prefixes that make the keys
        fit `own_keys` (the model's) best (all of them when `own_keys` is None)."""
        if prefix:
            taken = {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}
            if not taken:
                starts = sorted({k.split(".", 1)[0] + "." for k in self.state})[:5]
                raise UserError(f"no key of weights file {self.path} starts with {prefix!r} (its keys start with {', '.join(starts)}); fix --weights-prefix")
            return replace(self, state=taken, prefix=prefix)
        levels = [("", self.state)]
        while True:
            removed, state = levels[-1]
            shared = next((p for p in AUTO_PREFIXES if all(k.startswith(p) for k in state)), None)
            if shared is None:
                break
            levels.append((removed + shared, {k[len(shared):]: v for k, v in state.items()}))
        if own_keys is not None:
            own = set(own_keys)
            fits = [len(own.intersection(state)) for _, state in levels]
            if max(fits) > 0:  # the least stripping that fits best
                levels = levels[: fits.index(max(fits)) + 1]
        removed, state = levels[-1]
        return replace(self, state=state, prefix=removed)


def read_checkpoint(path: Path, key: str | None = None, sha256: str | None = None) -> Checkpoint:
    """Read the state dict in `path` (see the module docstring); `key`: a dotted path to it (--weights-key)."""
    kind = file_format(path)
    content = _load(path, kind)
    if kind == SAFETENSORS:
        if key:
            raise UserError(f"--weights-key {key} does not apply to {path}: a safetensors file holds one flat state dict; drop --weights-key")
        state, found, ignored = _state_dict(content, [], path)
    else:
        trail: list[str] = []
        if key:
            content, trail = _follow(content, key, path), key.split(".")
        state, found, ignored = _state_dict(content, trail, path)
    return Checkpoint(path, sha256 or file_sha256(path), state, found, "", ignored)


def _load(path: Path, kind: str):
    if kind == SAFETENSORS:
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise UserError(f"weights file {path} is not a valid safetensors file ({str(exc)[:120]}); re-export it") from None
    try:
        with open(path, "rb") as fh:  # a file object: torch.load would judge a path by its name (e.g. .safetensors)
            return torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"refusing to load {path}: it is not a plain tensor checkpoint loadable with weights_only=True "
            f"({type(exc).__name__}); re-save it as a state dict (torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None


def _follow(content, key: str, path: Path):
    node = content
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, Mapping) or part not in node:
            here = ".".join(key.split(".")[:depth]) or "the top level"
            keys = ", ".join(str(k) for k in node)[:160] if isinstance(node, Mapping) else f"a {type(node).__name__}"
            raise UserError(f"weights file {path} has no key {part!r} at {here} (it holds: {keys}); fix --weights-key")
        node = node[part]
    return node


def _holds_tensors(value, depth: int = MAX_NESTING) -> bool:
    """A dict with tensors in it, directly or in dicts nested in it."""
    if not isinstance(value, Mapping) or depth == 0:
        return False
    return any(isinstance(v, torch.Tensor) or _holds_tensors(v, depth - 1) for v in value.values())


def _state_dict(node, trail: list[str], path: Path) -> tuple[dict[str, torch.Tensor], str, tuple[str, ...]]:
    """Descend through the usual wrapper keys to the dict of tensors; (state dict, key path, ignored dicts)."""
    ignored: list[str] = []

    def named(key: str) -> str:
        return ".".join([*trail, key])

    for _ in range(MAX_NESTING):
        where = f"under {'.'.join(trail)}" if trail else "at the top level"
        if not isinstance(node, Mapping):
            raise UserError(f"weights file {path} holds a {type(node).__name__} {where}, not a state dict; save model.state_dict()")
        tensors = {str(k): v for k, v in node.items() if isinstance(v, torch.Tensor)}
        wrappers = [k for k in WRAPPER_KEYS if _holds_tensors(node.get(k))]
        # other dicts of tensors (an EMA copy, a teacher): named, loaded only through --weights-key
        others = [str(k) for k, v in node.items() if k not in WRAPPER_KEYS and _holds_tensors(v, depth=1)]
        if tensors and wrappers:
            raise UserError(f"weights file {path} holds tensors {where} and under {named(wrappers[0])}; pass --weights-key to say which to load")
        if tensors:
            return tensors, ".".join(trail), tuple(ignored + [named(k) for k in others])
        if len(wrappers) > 1:
            raise UserError(f"weights file {path} holds several state dicts ({', '.join(named(k) for k in wrappers)}); pass --weights-key with the one to load")
        if not wrappers:
            hint = f"it holds tensors under {', '.join(named(k) for k in others)}: pass --weights-key KEY to load one" if others else "it holds no tensors"
            raise UserError(f"weights file {path} has no state dict {where} nor under {'/'.join(WRAPPER_KEYS)} ({hint})")
        ignored += [named(k) for k in others]
        trail, node = [*trail, wrappers[0]], node[wrappers[0]]
    raise UserError(f"weights file {path} nests its state dict deeper than {MAX_NESTING} levels; pass --weights-key with its key path")


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], head_name: str | None, path: Path, what: str) -> None:
    """Load `state` into `model`; every key outside the head must fit (names and shapes), else one clear line.

    The head is left as it is when its shape differs (an ImageNet head, say): it is replaced afterwards.
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
