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
from medpeft_cli.staging import staged
from medpeft_cli.jsonsafe import finite

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
    with staged(tmp, lambda reason: f"cannot write run directory under {runs_dir}: {reason}; free disk space or choose another --runs-dir"):
        tmp.mkdir()
        row = fill(tmp)
        write_json(tmp / RESULT_FILE, row)
        mask = current_umask()
        for path in tmp.rglob("*"):  # some writers (safetensors) create files 0600: follow the umask like the rest
            follow_umask(path, mask)
        if final.exists():
            if not replace:
                raise UserError(f"run directory {final} already exists; pass --force to replace it")
            trash = runs_dir / f".old-{run_key}-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(final)
    return final


def write_json(path: Path, data: Any) -> None:
    """Write JSON with sorted keys (stable, diff-friendly), flushed to disk; NaN/inf are written as null."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(finite(data), fh, indent=2, sort_keys=True, default=str, allow_nan=False)
        fh.flush()
        os.fsync(fh.fileno())


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, mask: int | None = None) -> None:
    """Give `path` the mode a plain open() would (files 0666, folders 0777, minus the umask)."""
    path = Path(path)
    if not path.is_symlink():
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~(current_umask() if mask is None else mask))


def read_result(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished medpeft run (no {RESULT_FILE}); pass a directory under runs/")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}); the run directory is damaged") from None


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
def failure_recorded(
    runs_dir: Path, run_key: str, spec: dict[str, Any], passthrough: tuple[type[BaseException], ...] = (), checkpoint: Path | None = None
) -> Iterator[None]:
    """Record a crash of the block in `runs/.failed/<run_key>/status.json` (status, error, traceback, advice).

    The run's row and directory are never written for a crashed run; the status file says what
    happened, and advises --resume only when `checkpoint` (the run's checkpoint file) exists by then.
    Exceptions in `passthrough` (a clean stop, a recorded divergence) are not failures; they and a
    success remove an earlier attempt's status file.
    """
    target = failed_dir(runs_dir, run_key)
    try:
        yield
    except passthrough:
        _clear(target)
        raise
    except Exception as exc:
        saved = checkpoint is not None and Path(checkpoint).is_file()
        status = {
            "run_key": run_key,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "failed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "spec": spec,
            "checkpoint": str(checkpoint) if saved else None,
            "resume": f"rerun the same command with --resume to continue from the last checkpoint ({checkpoint})" if saved
            else "no checkpoint was saved before the crash: rerun the same command (without --resume) to start the run again",
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
