"""Releases: immutable, versioned copies of the site and its data (`medpeft report --release NAME`).

    releases/NAME/
      index.html, ...            the site as it was built for the release (every page, run records, plots)
      results.parquet|csv|json   every row of the store at that moment (the site's downloads)
      summary.csv                the aggregated cells
      references.csv|json        the published results the site showed (reference_results table)
      release.json               name, time, medpeft version, counts, sources
      SHA256SUMS                 sha256 of every other file (`sha256sum -c SHA256SUMS` checks it)

A release is written into a temporary folder and renamed into place; an existing release is never
rebuilt or replaced (its folder holds no site marker, so `medpeft report --out` refuses it too), and its
files are made read-only. The live site copies every release it finds under the releases folder into
its own releases/ folder and links them, so publishing the site publishes its releases.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.staging import staged
from medpeft_cli.report.rowjson import plain
from medpeft_cli.report.sitedir import MARKER

INFO = "release.json"
SUMS = "SHA256SUMS"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise UserError(f"release name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (e.g. 2026-01 or v1.0), not starting with one of '._-'")
    return name


def check_new(releases_dir: Path, name: str) -> Path:
    """The folder of a release that does not exist yet; UserError when it does."""
    target = Path(releases_dir) / check_name(name)
    if target.exists():
        raise UserError(f"release {name} already exists at {target}; a release is never rebuilt: choose a new name")
    return target


def list_releases(releases_dir: Path | None) -> list[dict[str, Any]]:
    """Every release under `releases_dir` (newest first): its release.json plus `name` and `path`."""
    if releases_dir is None or not Path(releases_dir).is_dir():
        return []
    found = []
    for folder in Path(releases_dir).iterdir():
        info = folder / INFO
        if folder.name.startswith(".") or not _NAME.fullmatch(folder.name) or not info.is_file():
            continue
        try:
            data = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("name") == folder.name:
            found.append({**data, "path": folder})
    return sorted(found, key=lambda r: (str(r.get("created_at")), r["name"]), reverse=True)


def copy_releases(releases: list[dict[str, Any]], site_dir: Path) -> None:
    """Copy the releases into the site being built (site_dir/releases/NAME/)."""
    for release in releases:
        shutil.copytree(release["path"], site_dir / "releases" / release["name"])
        for path in (site_dir / "releases" / release["name"]).rglob("*"):
            if path.is_file():  # the copies are replaced with the site on the next build: writable
                path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _write_references(references: list[dict[str, Any]], folder: Path) -> None:
    names = list(references[0]) if references else ["source", "ref_table", "backbone", "dataset", "method", "metric", "value"]
    with open(folder / "references.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in references:
            writer.writerow(["" if row.get(n) is None else plain(row.get(n)) for n in names])
    (folder / "references.json").write_text(json.dumps(references, indent=1, default=str) + "\n", encoding="utf-8")


def _checksums(folder: Path) -> None:
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(folder).as_posix()}\n")
    (folder / SUMS).write_text("".join(lines), encoding="utf-8")


def write_release(releases_dir: Path, name: str, build: Callable[[Path], Any], info: dict[str, Any], references: list[dict[str, Any]]) -> Path:
    """Build a release with `build(folder)` (writes the site there), add its data, checksums and info, freeze it."""
    from medpeft_cli import __version__

    target = check_new(releases_dir, name)
    tmp = target.parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    with staged(tmp, lambda reason: f"cannot write release {name} under {target.parent}: {reason}; check --releases-dir is writable"):
        target.parent.mkdir(parents=True, exist_ok=True)
        build(tmp)
        (tmp / MARKER).unlink(missing_ok=True)  # no longer a folder `medpeft report --out` may replace
        _write_references(references, tmp)
        when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        data = {"name": name, "created_at": when, "medpeft_version": __version__, **info,
                "sources": sorted({r["source"] for r in references}), "references": len(references)}  # fmt: skip
        (tmp / INFO).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _checksums(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        os.rename(tmp, target)  # fails if a release of that name appeared meanwhile: never replaced
    return target
