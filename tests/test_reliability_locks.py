"""One process per run key: the lock, and two processes that start the same run key at once."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pytest
from helpers import child_env, hold_until_killed

from medpeft_cli.store.locks import RunLocked, lock_path, run_lock

# Holds the lock of key k1 until its stdin closes or it is killed.
HOLD = hold_until_killed("""
import sys
from pathlib import Path
from medpeft_cli.store.locks import run_lock
lock = run_lock(Path(sys.argv[1]), "k1")
lock.__enter__()
""")


def test_a_held_key_is_refused_naming_the_holder_and_freed_when_the_holder_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunLocked, match=f"run k1 is being trained by another process \\(pid {holder.pid} on "):
            with run_lock(tmp_path, "k1"):
                pass
        with run_lock(tmp_path, "k2"):  # other keys are independent
            pass
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock; no stale lock file blocks the key
        holder.wait()
    with run_lock(tmp_path, "k1") as path:
        assert path == lock_path(tmp_path, "k1") and path.is_file()
        with pytest.raises(RunLocked):  # also within one process: a second holder is refused
            with run_lock(tmp_path, "k1"):
                pass
    assert not lock_path(tmp_path, "k1").exists() and not (tmp_path / ".locks").exists()  # cleaned up when released


def test_a_lock_file_replaced_while_waiting_is_not_trusted(tmp_path, monkeypatch):
    """Holder A unlinks its file on release; B, which had opened the old file, must lock the new one."""
    from medpeft_cli.store import locks

    real_flock = locks.fcntl.flock
    calls = {"n": 0}

    def flock(fd, op):
        calls["n"] += 1
        if calls["n"] == 1:  # between our open and our lock, the file is replaced by another one
            path = lock_path(tmp_path, "k")
            os.unlink(path)
            path.write_text("")
        return real_flock(fd, op)

    monkeypatch.setattr(locks.fcntl, "flock", flock)
    with run_lock(tmp_path, "k") as path:
        assert calls["n"] == 2 and os.stat(path).st_size > 0  # locked (and wrote its holder into) the file that is there


@pytest.mark.slow
@pytest.mark.timeout(300)  # two training processes at once (measured: 10-31 s on 2 shared cores)
def test_two_processes_starting_the_same_run_key_store_one_row(tmp_path):
    args = ["train", "--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--image-size", "32", "--epochs", "1", "--data-fraction", "0.05", "--batch-size", "16",
            "--method", "linear", "-q", "--no-site"]  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-m", "medpeft_cli", *args], cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate() for p in procs]  # waits on each process's exit (pytest-timeout guards the whole test)
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]
    trained = [r for r in results if r[0] == 0 and "already finished" not in r[1]]
    assert len(trained) == 1, results
    for code, stdout, stderr in results:
        if (code, stdout, stderr) in trained:
            continue
        # the other one skipped: refused while the first trained, or found it finished
        assert (code == 2 and stderr.strip().startswith("medpeft: error: run ") and "is being trained by another process" in stderr
                and len(stderr.strip().splitlines()) == 1) or (code == 0 and "already finished" in stdout), (code, stdout, stderr)  # fmt: skip
    con = duckdb.connect(str(tmp_path / "results" / "medpeft.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT run_key) FROM runs").fetchone() == (1, 1)
    finally:
        con.close()
    runs = [p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1 and not (tmp_path / "runs" / ".locks").exists() and not (tmp_path / "runs" / ".partial").exists()
    print("outcomes:", [(c, "trained" if (c, o, e) in trained else (e.strip() or o.strip().splitlines()[0])) for c, o, e in results])
