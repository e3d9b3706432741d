"""`medpeft bundle import`: merge a verified bundle's runs into a store, never over a stored run.

The bundle is verified first (bundle/verify.py); a bundle with any failing run is refused as a whole,
so a store never holds half a submission. Then each run is compared with what the store holds under
its key (the database row, or the run directory when only that exists):

    new        its run directory is written (atomically, store/rundir.py) and its row appended, with the
               bundle's sha256 and the submitter recorded on the row and in result.json
    skipped    the same run is already stored (every store column equal except bundle_sha256/submitter)
    refused    another run is stored under the key: one line each, and nothing at all is written

so importing the same bundle twice changes nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpeft_cli.bundle.layout import RESULT, RUNS
from medpeft_cli.bundle.rows import first_difference
from medpeft_cli.bundle.verify import Verification, verify_bundle
from medpeft_cli.errors import UserError
from medpeft_cli.jsonsafe import finite


class BundleRefused(UserError):
    """The bundle was not imported; `lines` are the per-run lines that say why (printed before the error)."""

    def __init__(self, message: str, lines: list[str]):
        super().__init__(message)
        self.lines = lines


@dataclass
class Merged:
    verification: Verification
    sha256: str
    submitter: str
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows_only: list[str] = field(default_factory=list)  # run directory already there (same run), its row was missing
    refused: list[str] = field(default_factory=list)  # one line per conflicting key


def _stored(db: Path, runs_dir: Path, key: str) -> dict[str, Any] | None:
    """The row stored under `key`: the database's, else its run directory's result.json, else None."""
    from medpeft_cli.store.results import has_run, query

    if Path(db).is_file() and has_run(db, key):
        return query(db, "run_key = ?", [key])[0]
    path = runs_dir / key / RESULT
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"run {key}: {path} is unreadable ({exc}); fix or move that run directory before importing") from None
    return None


def _write(verification: Verification, runs_dir: Path, key: str, row: dict[str, Any]) -> None:
    from medpeft_cli.store.rundir import write_run_dir

    files = next(v.files for v in verification.runs if v.key == key)
    prefix = f"{RUNS}/{key}/"

    def fill(tmp: Path) -> dict[str, Any]:
        import tarfile

        with tarfile.open(verification.contents.path, "r:gz") as tar:
            for info in tar:
                rel = info.name[len(prefix):] if info.name.startswith(prefix) else None
                if rel is None or rel == RESULT or rel not in files:
                    continue
                target = tmp.joinpath(*rel.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(info) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        dst.write(chunk)
        return row

    write_run_dir(runs_dir, key, fill)


def import_bundle(path: Path, db: Path, runs_dir: Path, submitter: str | None = None) -> Merged:
    from medpeft_cli.store.results import COLUMNS, append, has_run

    verification = verify_bundle(Path(path))
    if not verification.ok:
        raise BundleRefused(f"{path} failed verification, nothing imported: {verification.first_failure()}", verification.lines())
    submitter = " ".join((submitter or verification.contents.manifest.get("submitter") or "").split())
    if not submitter:
        raise UserError("the bundle names no submitter; pass --submitter NAME (who sent it: recorded on every imported row)")
    merged = Merged(verification, verification.contents.sha256, submitter)
    plan: list[tuple[str, dict[str, Any], bool]] = []  # (key, row to append, write its run directory)
    for run in verification.runs:
        row = {**finite(run.row), "bundle_sha256": merged.sha256, "submitter": submitter}
        stored = _stored(db, Path(runs_dir), run.key)
        diff = first_difference(row, stored) if stored is not None else None
        if stored is None:
            plan.append((run.key, row, True))
        elif diff:
            merged.refused.append(f"refused {run.key}: another run is stored under this key ({diff}); a stored run is never overwritten")
        elif Path(db).is_file() and has_run(db, run.key):
            merged.skipped.append(run.key)
        else:  # the same run's directory is there, its row is not: the row comes from that directory
            plan.append((run.key, stored, False))
    if merged.refused:
        first = merged.refused[0] if len(merged.refused) == 1 else f"{len(merged.refused)} runs conflict with stored runs, first: {merged.refused[0]}"
        raise BundleRefused(f"{path}: {first} (nothing imported)", merged.refused)
    for key, row, new_dir in plan:
        if new_dir:
            _write(verification, Path(runs_dir), key, row)
        append(db, {k: v for k, v in row.items() if k in COLUMNS})
        (merged.imported if new_dir else merged.rows_only).append(key)
    return merged
