"""The Hugging Face hub and its local cache: whether medpeft is offline, and the one line when a model is missing."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from medpeft_cli.errors import UserError


def offline() -> bool:
    """HF_HUB_OFFLINE or MEDPEFT_OFFLINE is set: nothing may be downloaded."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "MEDPEFT_OFFLINE"))


def is_missing_file_error(exc: BaseException) -> bool:
    """The hub could not be reached (or was not allowed to be) and the local cache lacks the file."""
    text = str(exc).lower()
    return (
        "localentrynotfound" in type(exc).__name__.lower() or "offline" in type(exc).__name__.lower()
        or "cannot find the requested files in the local cache" in text
        or "offline mode" in text or "connect" in text or "local_files_only" in text
    )  # fmt: skip


def not_available(spec: str, pretrained_of: str | None = None) -> UserError:
    """One line naming the backbone and the command that fetches it (`pretrained_of`: a timm name whose weights are missing)."""
    where = "downloads are off (HF_HUB_OFFLINE/MEDPEFT_OFFLINE)" if offline() else "the hub is unreachable"
    fetch = f"fetch {'them' if pretrained_of else 'it'} once on a machine with internet access: `medpeft prefetch --backbone {spec}`"
    if pretrained_of:
        return UserError(
            f"could not load pretrained weights for {pretrained_of}: they are not in the local Hugging Face cache and {where}; "
            f"{fetch}, or pass --weights FILE, or --weights random for random init"
        )
    return UserError(f"backbone {spec} is not in the local Hugging Face cache and {where}; {fetch}")


@contextmanager
def quiet_hub():
    """Silence huggingface_hub's retry warnings, which would bury our one-line error."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
