"""Reuse unchanged run pages from the previous build.

A stored run never changes (results are append-only; a forced rerun writes a new row), so its page
only changes when the report code, the site options or the run directory change. Every build
records a fingerprint of exactly those inputs per run page in MANIFEST; the next build hard-links
(or copies) the previous page and its published files when the fingerprint is the same, instead of
rendering thousands of pages again after each `medpeft train`. Run pages carry no build time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from medpeft_cli.report.assets import leaderboard_dir

MANIFEST = ".medpeft-run-pages.json"  # {page name: fingerprint}, at the site root


@cache
def source_digest() -> str:
    """Digest of everything that shapes a run page: this package's code, the templates and static files."""
    digest = hashlib.sha256()
    code = sorted(Path(__file__).parent.glob("*.py"))
    assets = sorted(p for p in leaderboard_dir().rglob("*") if p.is_file())
    for path in code + assets:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def files_signature(runs_dir: Path | None, key: str) -> Any:
    """Names, sizes and modification times of the run directory's files (None: no directory given)."""
    if runs_dir is None:
        return None
    folder = Path(runs_dir) / key
    if not folder.is_dir():
        return "absent"
    listing = []
    for root, _, names in os.walk(folder):
        for name in names:
            stat = os.stat(os.path.join(root, name), follow_symlinks=False)
            listing.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns))
    return sorted(listing)


def fingerprint(options_digest: str, row: dict[str, Any], files: Any) -> str:
    """Of the code and site options (`options_digest`), the whole row (in its column order) and the run's files."""
    payload = f"{options_digest}\0{tuple(row.items())!r}\0{files!r}"
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def options_digest(options: dict[str, Any]) -> str:
    return hashlib.sha256((source_digest() + json.dumps(options, sort_keys=True, default=str)).encode()).hexdigest()


def read_manifest(site: Path | None) -> dict[str, str]:
    if site is None:
        return {}
    try:
        data = json.loads((site / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(site: Path, marks: dict[str, str]) -> None:
    (site / MANIFEST).write_text(json.dumps(marks, sort_keys=True), encoding="utf-8")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reuse(old_runs: str, new_runs: str, key: str, page: str) -> bool:
    """Carry the previous build's page `old_runs/page` and its published files `old_runs/key/` over
    into `new_runs`; False when that is not possible. (Plain strings: this runs once per run.)"""
    old_files, new_files = os.path.join(old_runs, key), os.path.join(new_runs, key)
    try:
        if os.path.isdir(old_files):
            shutil.copytree(old_files, new_files, copy_function=_link_or_copy)
        _link_or_copy(os.path.join(old_runs, page), os.path.join(new_runs, page))
    except OSError:
        shutil.rmtree(new_files, ignore_errors=True)
        return False
    return True
