"""Run directories: `runs/<run_key>/` holds everything a run produced and is written atomically.

A run is written into a temporary sibling directory and renamed into place only when complete, so
`runs/<run_key>/` either holds a whole run or does not exist. `result.json` (the store row) is the
file the DuckDB table is rebuilt from.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError

RESULT_FILE = "result.json"


def write_run_dir(runs_dir: Path, run_key: str, fill: Callable[[Path], dict[str, Any]], replace: bool = False) -> Path:
    """Create `runs_dir/run_key` atomically.

    `fill(tmp_dir)` writes the run's files into a temporary directory and returns the result row,
    which is stored as result.json last. If `fill` raises, the temporary directory is removed.
    """
    runs_dir = Path(runs_dir)
    final = runs_dir / run_key
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create runs directory {runs_dir}: {exc.strerror}; choose a writable --runs-dir") from None
    tmp = runs_dir / f".tmp-{run_key}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        row = fill(tmp)
        _write_json(tmp / RESULT_FILE, row)
        if final.exists():
            if not replace:
                raise UserError(f"run directory {final} already exists; pass --force to replace it")
            trash = runs_dir / f".old-{run_key}-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write run directory under {runs_dir}: {exc.strerror or exc}; free disk space or choose another --runs-dir") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: Path, data: Any) -> None:
    """Write JSON with sorted keys (stable, diff-friendly)."""
    _write_json(Path(path), data)


def read_result(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished medpeft run (no {RESULT_FILE}); pass a directory under runs/")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}); the run directory is damaged") from None


def iter_results(runs_dir: Path) -> Iterator[dict[str, Any]]:
    """Rows of every finished run under runs_dir (temporary and damaged directories are skipped)."""
    from medpeft_cli.store.results import COLUMNS

    if not runs_dir.is_dir():
        raise UserError(f"runs directory {runs_dir} does not exist; pass --runs-dir")
    for path in sorted(runs_dir.glob(f"*/{RESULT_FILE}")):
        if path.parent.name.startswith("."):
            continue
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        yield {k: v for k, v in row.items() if k in COLUMNS}
