"""The file behind `--weights pretrained` of a builtin backbone: shipped in the package, or downloaded once.

A packaged file is checked against its whole sha256 before it is loaded; a downloaded one against the
hash prefix in its published name (torch hub's convention), both when it is downloaded and when it is
found in the cache. Downloads go to torch's hub cache (`$TORCH_HOME/hub/checkpoints`), written to a
temporary file and moved into place (torch.hub.download_url_to_file), so a broken download never leaves
a partial file under the real name. Offline, a missing file is one line saying where to put it.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from medpeft_cli.errors import UserError
from medpeft_cli.models.builtin_models import Builtin
from medpeft_cli.models.hub import offline
from medpeft_cli.models.weights import file_sha256

WEIGHTS_DIR = Path(str(importlib.resources.files("medpeft_cli") / "resources" / "weights"))


def pretrained_file(entry: Builtin) -> tuple[Path, str]:
    """(path, sha256) of the checked pretrained weights of `entry`."""
    info = entry.pretrained
    if info.packaged:
        path = WEIGHTS_DIR / info.packaged / info.file
        if not path.is_file():
            raise UserError(f"the weights file of {entry.name} that ships with medpeft is missing ({path}); reinstall medpeft, or pass --weights FILE")
        digest = file_sha256(path)
        if digest != info.sha256:
            raise UserError(f"refusing the weights file of {entry.name} at {path}: its sha256 is {digest[:16]}..., not {info.sha256[:16]}... (damaged or replaced); reinstall medpeft")
        return path, digest
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / info.file
    if not path.is_file():
        _download(entry, path)
    digest = file_sha256(path)
    if not digest.startswith(info.hash_prefix):
        raise UserError(f"refusing {path}: its sha256 starts with {digest[:8]}, not {info.hash_prefix} as its published name says; delete it and retry (or pass --weights FILE)")
    return path, digest


def _download(entry: Builtin, path: Path) -> None:
    import torch.hub

    info = entry.pretrained
    where = f"download {info.url} and save it as {path}, or pass --weights FILE (or --weights random)"
    if offline():
        raise UserError(f"the pretrained weights of {entry.name} are not in the cache and downloads are off (HF_HUB_OFFLINE/MEDPEFT_OFFLINE); {where}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(info.url, str(path), hash_prefix=info.hash_prefix, progress=False)
    except Exception as exc:  # no network, HTTP error, or a file whose hash differs from its published name
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"could not download the pretrained weights of {entry.name} ({text}); {where}") from None
