"""Replace the output folder in one step, so a failed build never leaves half a site.

The site is written into a temporary sibling folder, then swapped in with renames. An existing
folder is only replaced when it is empty or was written by medpeft (it holds MARKER), so a
mistyped --out can never delete someone's files.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from medpeft_cli.errors import UserError
from medpeft_cli.staging import staged

MARKER = ".medpeft-site"


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; pass another output folder")
    if not (out_dir / MARKER).is_file() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty and holds no medpeft site; pass a new or empty output folder")


def write_site(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call `fill(tmp)` to write the site into a temporary folder, then move it to `out_dir`."""
    out_dir = Path(out_dir).resolve()
    if out_dir.parent == out_dir:
        raise UserError(f"cannot write a site over {out_dir}; pass an output folder such as site/")
    _check_replaceable(out_dir)
    tag = uuid.uuid4().hex[:8]
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    old = out_dir.parent / f".{out_dir.name}.old-{tag}"
    with staged(tmp, lambda reason: f"cannot write the site to {out_dir}: {reason}; check the folder is writable"):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        fill(tmp)
        (tmp / MARKER).write_text("written by medpeft report; this folder is replaced on every build\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            if old.exists():
                old.rename(out_dir)
            raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
