"""Run directories: `runs/<run_key>/` holds everything a run produced and is written atomically.

A run is written into a temporary sibling directory and renamed into place only when complete, so
`runs/<run_key>/` either holds a whole run or does not exist. `result.json` (the store row) is the
file the DuckDB table is rebuilt from.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError

RESULT_FILE = "result.json"
FAILED_DIR = ".failed"  # runs/.failed/<run_key>/status.json: why the last attempt of a key crashed
STATUS_FILE = "status.json"


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
        write_json(tmp / RESULT_FILE, row)
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


def write_json(path: Path, data: Any) -> None:
    """Write JSON with sorted keys (stable, diff-friendly), flushed to disk."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())


def read_result(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished medpeft run (no {RESULT_FILE}); pass a directory under runs/")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}); the run directory is damaged") from None


def iter_results(runs_dir: Path) -> Iterator[dict[str, Any]]:
    """The stored row (result.json) of every finished run under runs_dir; temporary and damaged
    directories are skipped."""
    if not runs_dir.is_dir():
        raise UserError(f"runs directory {runs_dir} does not exist; pass --runs-dir")
    for path in sorted(runs_dir.glob(f"*/{RESULT_FILE}")):
        if path.parent.name.startswith("."):
            continue
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        yield row


def check_writable_dir(path: Path, option: str) -> None:
    """Fail now, before anything is trained or written, if `path` cannot be created or written."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is not a directory; choose another {option}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {path}: {existing} is a file, not a directory; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {existing} (permission denied); choose another {option}")


def failed_dir(runs_dir: Path, run_key: str) -> Path:
    return Path(runs_dir) / FAILED_DIR / run_key


@contextmanager
def failure_recorded(runs_dir: Path, run_key: str, spec: dict[str, Any], passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Record a crash of the block in `runs/.failed/<run_key>/status.json` (status, error, traceback).

    The run's row and directory are never written for a crashed run; the status file says what
    happened. Exceptions in `passthrough` (a clean stop, a recorded divergence) are not failures; they
    and a success remove an earlier attempt's status file.
    """
    target = failed_dir(runs_dir, run_key)
    try:
        yield
    except passthrough:
        _clear(target)
        raise
    except Exception as exc:
        status = {
            "run_key": run_key,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "failed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "spec": spec,
            "resume": "rerun the same command with --resume to continue from the last checkpoint (runs/.partial/<run_key>/)",
        }
        try:  # best effort: the disk may be what failed
            target.mkdir(parents=True, exist_ok=True)
            tmp = target / f".{STATUS_FILE}.{os.getpid()}.tmp"
            write_json(tmp, status)
            os.replace(tmp, target / STATUS_FILE)
        except OSError:
            pass
        raise
    _clear(target)


def _clear(target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    try:
        target.parent.rmdir()
    except OSError:
        pass
