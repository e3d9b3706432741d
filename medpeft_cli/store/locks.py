"""One process per run key: an exclusive lock held while a run trains and stores its result.

Two processes that start the same run key at once (two sweeps over overlapping grids, a job
submitted twice) would train it twice and race to store it. The lock is an `flock` on
`runs/.locks/<run_key>.lock`: the kernel releases it when the holder exits, however it dies
(SIGKILL included), so a crashed run never leaves a stale lock behind. Shared file systems: NFS
(v4, or v3 with lockd) supports it; Lustre needs the `flock` mount option.

The second process does not wait: it stops with one line naming the holder (pid, host, start time).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medpeft_cli.errors import UserError

LOCKS_DIR = ".locks"


class RunLocked(UserError):
    """Another process holds the run key's lock."""


def lock_path(runs_dir: Path, run_key: str) -> Path:
    return Path(runs_dir) / LOCKS_DIR / f"{run_key}.lock"


@contextmanager
def run_lock(runs_dir: Path, run_key: str, enabled: bool = True) -> Iterator[Path | None]:
    """Hold the run key's lock for the block, or raise `RunLocked` at once if another process holds it."""
    if not enabled:
        yield None
        return
    path = lock_path(runs_dir, run_key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {path.parent}: {exc.strerror}; choose a writable --runs-dir") from None
    fd = _acquire(path, run_key)
    try:
        yield path
    finally:
        # Unlink before unlocking: a process that opened the old file then finds it replaced (see _acquire).
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
        try:
            path.parent.rmdir()  # only when no other lock is there
        except OSError:
            pass


def _acquire(path: Path, run_key: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(
                f"run {run_key} is being trained by another process ({holder}); nothing was done: "
                "wait for it to finish (a finished run is then skipped) or stop that process"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot lock {path}: {exc.strerror}; the file system of --runs-dir must support flock") from None
        # The holder we waited behind may have unlinked the file between our open and our lock:
        # then we hold a lock on a deleted file, and must lock the file that is there now.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
    return fd


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
