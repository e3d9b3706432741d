"""Provenance recorded on every result row: software versions, code commit, device, container.

Only package versions and a few environment variables are read; secrets (tokens, other environment
variables) are never recorded.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import medpeft_cli

PACKAGES = {"torch": "torch_version", "timm": "timm_version", "peft": "peft_version", "accelerate": "accelerate_version"}


def package_version(package: str) -> str | None:
    """The installed version of `package`, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """Commit of the medpeft source tree (with '+dirty' if it has local changes), else $MEDPEFT_GIT_COMMIT."""
    if os.environ.get("MEDPEFT_GIT_COMMIT"):
        return os.environ["MEDPEFT_GIT_COMMIT"]
    root = Path(medpeft_cli.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "medpeft_cli"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(accelerator) -> str:
    """The GPU's name, or the CPU architecture and torch's thread count."""
    import torch

    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def collect(device: str, world_size: int) -> dict[str, object]:
    row: dict[str, object] = {
        "medpeft_version": medpeft_cli.__version__,
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "device": device,
        "world_size": world_size,
        "container_image": os.environ.get("MEDPEFT_CONTAINER_IMAGE"),
    }
    for package, column in PACKAGES.items():
        row[column] = package_version(package)
    return row
