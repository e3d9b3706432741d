"""`medpeft bundle create`: the selected rows of a store and their run directories as one tar.gz.

Only runs whose test metrics can be recomputed from their files go in: finished (`ok`) classification
runs with their per-sample predictions. Others in the selection (diverged runs, text-to-image runs
whose FID needs the model, runs of a custom backbone factory whose key needs its source file) are
named and left out. Each run directory must hold the same row as the
store (its result.json); a run directory that is missing or disagrees stops the bundle, naming the
run. The archive is written to a temporary file and renamed; its members are sorted, with fixed
times and owners, so only the manifest's `created_at` differs between two bundles of the same runs.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from medpeft_cli.bundle.layout import FORMAT, MANIFEST, REQUIRED, RESULT, RUNS, VERSION, check_name, is_weights, sha256_file
from medpeft_cli.bundle.rows import first_difference
from medpeft_cli.errors import UserError


@dataclass
class Created:
    path: Path
    sha256: str
    runs: list[str]
    files: int
    size: int
    left_out: list[str] = field(default_factory=list)  # one line per run of the selection not bundled


def _select(db: Path, where: str | None) -> list[dict[str, Any]]:
    from medpeft_cli.store.results import query

    try:
        return query(db, where or "")
    except duckdb.Error as exc:
        raise UserError(f"--where {where!r} is not a valid filter of the runs table ({str(exc).splitlines()[0]}); write SQL such as \"dataset = 'busi' AND seed < 3\"") from None


def _bundleable(row: dict[str, Any]) -> str | None:
    """Why a selected row cannot go into a bundle, or None."""
    if row.get("status") != "ok":
        return f"status {row.get('status')}: no predictions to verify"
    if row.get("task") != "classification":
        return f"task {row.get('task')}: its metrics cannot be recomputed from stored files (FID needs the model)"
    if row.get("backbone_source") == "custom":
        return "custom backbone: its run key includes the sha256 of the factory's source file, which a bundle does not carry"
    return None


def _run_files(runs_dir: Path, row: dict[str, Any], with_weights: bool) -> list[tuple[str, Path]]:
    """(member name, file) of one run directory, after checking it holds the store's row."""
    key = row["run_key"]
    folder = runs_dir / key
    if not folder.is_dir():
        raise UserError(f"run {key}: no run directory {folder}; pass the --runs-dir it was written to")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise UserError(f"run {key}: {folder} has no {', '.join(missing)}; a bundle holds only runs whose metrics can be recomputed")
    try:
        stored = json.loads((folder / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"run {key}: cannot read {folder / RESULT} ({exc})") from None
    diff = first_difference(stored, row)
    if diff:
        raise UserError(f"run {key}: {folder / RESULT} and its database row differ ({diff}); run `medpeft store rebuild` first")
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise UserError(f"run {key}: {path} is a symbolic link; a bundle holds plain files only")
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and (with_weights or not is_weights(rel)):
            why = check_name(f"{RUNS}/{key}/{rel}")
            if why:
                raise UserError(f"run {key}: {why}: a bundle cannot carry it; move that file out of {folder}")
            files.append((f"{RUNS}/{key}/{rel}", path))
    return files


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    info.size = path.stat().st_size
    with open(path, "rb") as fh:
        tar.addfile(info, fh)


def create_bundle(db: Path, runs_dir: Path, out: Path, where: str | None = None, with_weights: bool = False, submitter: str | None = None) -> Created:
    from medpeft_cli import __version__

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; pass another --out (a bundle is never overwritten)")
    if not out.name.endswith(".tar.gz"):
        raise UserError(f"--out {out} must end in .tar.gz")
    rows = _select(db, where)
    chosen, left_out = [], []
    for row in rows:
        why = _bundleable(row)
        (left_out.append(f"{row['run_key']}: {why}") if why else chosen.append(row))
    if not chosen:
        raise UserError(f"no run of {db}{' matching --where' if where else ''} can be bundled ({len(rows)} selected, none a finished classification run); check --where and --db")
    members = [m for row in chosen for m in _run_files(Path(runs_dir), row, with_weights)]
    manifest = {
        "format": FORMAT, "version": VERSION, "medpeft_version": __version__, "submitter": submitter,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "where": where, "with_weights": with_weights,
        "runs": [row["run_key"] for row in chosen],
        "files": {name: {"sha256": sha256_file(path), "size": path.stat().st_size} for name, path in members},
    }  # fmt: skip
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, data=json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
            for name, path in members:
                _add(tar, name, path=path)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; choose a writable --out") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Created(out, sha256_file(out), manifest["runs"], len(members), out.stat().st_size, left_out)
