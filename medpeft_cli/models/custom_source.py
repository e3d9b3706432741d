"""Custom architectures: `--backbone path/to/file.py:factory` or `package.module:factory` (docs/backbones.md).

The factory is called with no arguments (or `image_size=<px>` when it has that parameter) and returns an
nn.Module that maps (B, 3, H, W) images to logits or features. One forward pass on the meta device says
which (models/heads.py): the Linear whose output is the module's output, whatever its name (or the one
`--head NAME` names), is replaced for this dataset's classes; features ((B, C), or a (B, C, H, W) map that
is averaged) get a new Linear `head`; an output that looks like logits but no Linear makes directly is
refused. Weights come from `--weights FILE` ('random': the factory's own seeded init); the factory should
not load weights itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from medpeft_cli.errors import UserError
from medpeft_cli.models.heads import HeadPlan, ProbeFailed, attach_head, find_head
from medpeft_cli.models.sources import BackboneSource, code_identity
from medpeft_cli.models.weights import load_checked, read_checkpoint, weights_path


def _module(source: BackboneSource):
    """Import the factory's module (a file is run with its own folder on sys.path, for its sibling imports).

    A file is run once per content (building, probing and counting all use the same module object)."""
    if not source.local:
        return _run_import(source.spec, lambda: importlib.import_module(source.target))
    stat = Path(source.target).stat()
    return _file_module(source.spec, source.target, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _file_module(spec_text: str, target: str, mtime_ns: int, size: int):  # mtime/size: an edited file is run again
    path = Path(target)

    def run():
        spec = importlib.util.spec_from_file_location(f"medpeft_custom_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        return module

    return _run_import(spec_text, run)


def _run_import(spec_text: str, load):
    try:
        return load()
    except Exception as exc:
        raise UserError(f"cannot import the custom backbone {spec_text} ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


def _call(source: BackboneSource, image_size: int, meta: bool = False) -> nn.Module:
    """The factory's module; with `meta`, built on the meta device and a factory error is raised as it is."""
    factory = getattr(_module(source), source.factory, None)
    if not callable(factory):
        raise UserError(f"{source.spec}: the module has no function {source.factory!r}; write --backbone FILE.py:FUNCTION")
    params = inspect.signature(factory).parameters
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "image_size"]
    if required:
        raise UserError(f"custom backbone factory {source.factory} must be callable without arguments (it requires {', '.join(required)}); give them defaults")
    kwargs = {"image_size": image_size} if "image_size" in params else {}
    if meta:
        with torch.device("meta"):
            return _checked(source, factory(**kwargs))
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise UserError(f"custom backbone factory {source.spec} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    return _checked(source, model)


def _checked(source: BackboneSource, model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise UserError(f"custom backbone factory {source.spec} returned a {type(model).__name__}; it must return a torch.nn.Module")
    return model


def _plan(source: BackboneSource, image_size: int, head: str | None) -> HeadPlan:
    """How the factory's module makes its output (heads.find_head), found on the meta device (no memory)."""
    what = f"custom backbone {source.spec}"
    try:
        return find_head(_call(source, image_size, meta=True), image_size, head, what)
    except Exception as exc:  # e.g. an operation without a meta implementation: probe a real copy (shapes only)
        if isinstance(exc, UserError) and not isinstance(exc, ProbeFailed):
            raise  # a refusal (logits without a Linear, a wrong --head) or a factory mistake
    with torch.random.fork_rng(devices=[]):
        return find_head(_call(source, image_size), image_size, head, what)


def build(source: BackboneSource, weights: str, num_classes: int, image_size: int, seed: int, prefix: str | None, key: str | None = None, head: str | None = None):
    """(model, head info, weights source) of a custom backbone."""
    if weights == "pretrained":
        raise UserError("a custom backbone has no pretrained weights of its own; pass --weights path/to/weights (a safetensors or torch checkpoint), or --weights random")
    path = weights_path(weights) if weights != "random" else None
    checkpoint = read_checkpoint(path, key) if path else None  # before building: a bad file fails fast
    plan = _plan(source, image_size, head)
    code = f"{source.label} code {code_identity(source.spec)}"
    module = _call(source, image_size)
    if checkpoint is None:
        described = f"random-init (seed {seed})"
    else:
        checkpoint = checkpoint.fit(prefix, module.state_dict())
        load_checked(module, checkpoint.state, plan.linear, path, f"custom backbone {source.spec}")
        described = checkpoint.describe()
    model, info = attach_head(module, plan, num_classes)
    return model, info, f"{code}; {described}"


def shape(source: BackboneSource, num_classes: int, image_size: int, head: str | None = None):
    """(model, head info) built on the current (meta) device."""
    plan = _plan(source, image_size, head)
    try:
        module = _call(source, image_size, meta=True)
    except UserError:
        raise
    except Exception:  # see _plan
        with torch.random.fork_rng(devices=[]):
            return attach_head(_call(source, image_size), plan, num_classes)
    with torch.device("meta"):
        return attach_head(module, plan, num_classes)
