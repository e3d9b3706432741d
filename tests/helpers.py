"""Helpers shared by the test modules: `from helpers import ...` (pytest puts tests/ on sys.path).

Test modules import shared code from here (or from tiny_models.py / raw_layouts.py), never from
another test module or from conftest.py; fixtures every module gets live in conftest.py.

Settings and paths
    REPO, BREASTMNIST_DIR, TINY (the small end-to-end training flags).

Processes, without wall-clock races
    child_env(**extra)
        The environment for a `medpeft` child process: offline, one math thread, wide output.
    run_cli_killed_at_step(args, step, cwd)
        Runs `medpeft ARGS` in a child process that kills itself with SIGKILL right before its
        `step`-th optimizer step (1-based, counted over epochs and over every torch optimizer in the
        process: a global `torch.optim` step pre-hook, so it works for any task whose loop calls
        `optimizer.step()`). Nothing in medpeft is patched, so the kill lands where a real crash would,
        and always at the same step. Returns the finished `subprocess.CompletedProcess` (stdout and
        stderr as text); fails the test if the child ended any other way (e.g. before that step).
        Typical use, a resume test:

            step = seeded_step(request, steps_per_epoch + 1, epochs * steps_per_epoch)
            run_cli_killed_at_step(["train", *ARGS, "-q", "--no-site"], step, cwd=tmp_path)
            # the last checkpoint is the end of epoch (step - 1) // steps_per_epoch
            resumed = cli("train", *ARGS, "-q", "--no-site", "--resume")   # then compare with a reference run
    at_optimizer_step(request, n, action)
        The same hook in this process: calls action() right before the n-th optimizer step (raise to
        simulate a crash, os.kill(os.getpid(), SIGTERM) to simulate pre-emption). Returns a function
        that removes the hook; it is removed when the test ends in any case.
    seeded_step(request, low, high)
        A step in [low, high] drawn from MEDPEFT_TEST_SEED (default 0) and the test's node id: the same
        step on every run of a test; other seeds (or `pytest --count N` from pytest-repeat, which changes
        the node id) try other steps. Printed, so a failing test's output names it.
    hold_until_killed(code)
        Python source that runs `code`, prints "ready" and then blocks until its parent closes stdin or
        kills it: for children that hold a lock while a test checks what others see.
    wait_for(predicate, what)
        Polls for an event a test cannot be notified of (a file another process writes); the bound is a
        failure guard only, never a delay a test depends on.

Stores
    db_rows(db) -> the rows of a results DuckDB as dicts, oldest first ([] when the file does not exist).

Fixtures to import where wanted
    single_thread (module scope, autouse where imported): one torch thread for tiny models.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real BreastMNIST 28 px file ships inside the package (CC BY 4.0): no test needs ../shared for it.
BREASTMNIST_DIR = REPO / "medpeft_cli" / "resources" / "data" / "breastmnist"

# Small settings every end-to-end test uses: timm's 0.3M-parameter test_vit at 32 px.
TINY = ["--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--method", "lora", "--image-size", "32", "--epochs", "1", "--data-fraction", "0.2", "--batch-size", "64"]


def child_env(**extra: str) -> dict[str, str]:
    """os.environ for a child `medpeft`: offline, one math thread (2 shared cores), wide output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **extra}


# Run by the child: count optimizer steps with torch's global pre-hook; SIGKILL before the N-th one.
# Run by a child process: send itself a signal (argv[1], e.g. SIGKILL) right before its N-th optimizer step
# (argv[2]), then `medpeft ARGS` (argv[3:]). Sent from inside, where it lands does not depend on timing.
SIGNAL_AT_STEP = """
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_pre_hook

signum, target, calls = getattr(signal, sys.argv[1]), int(sys.argv[2]), [0]


def signal_before_step(optimizer, args, kwargs):
    calls[0] += 1
    if calls[0] == target:
        os.kill(os.getpid(), signum)


register_optimizer_step_pre_hook(signal_before_step)
signal.signal(signal.SIGINT, signal.default_int_handler)  # a child of a background job inherits SIGINT ignored
from medpeft_cli.cli import main

main(sys.argv[3:])
"""


def run_cli_signalled_at_step(args: list[str], step: int, cwd: Path, signal_name: str = "SIGKILL", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`medpeft ARGS` in a child process that sends itself `signal_name` right before its step-th optimizer step."""
    assert step >= 1, step
    return subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP, signal_name, str(step), *map(str, args)], cwd=cwd, env=env or child_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def run_cli_killed_at_step(args: list[str], step: int, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`medpeft ARGS` in a child process that SIGKILLs itself right before its step-th optimizer step."""
    done = run_cli_signalled_at_step(args, step, cwd, "SIGKILL", env)
    assert done.returncode == -signal.SIGKILL, f"the child was not killed at step {step} (exit {done.returncode}): {done.stderr[-2000:]}"
    return done


def at_optimizer_step(request, n: int, action):
    """Call action() right before this process's n-th optimizer step (any torch optimizer, counted over
    epochs); returns a function that removes the hook (the test's end removes it too)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    calls = [0]

    def before_step(optimizer, args, kwargs):
        calls[0] += 1
        if calls[0] == n:
            action()

    handle = register_optimizer_step_pre_hook(before_step)
    request.addfinalizer(handle.remove)
    return handle.remove


def seeded_step(request, low: int, high: int) -> int:
    """A step in [low, high], fixed for a test's node id and MEDPEFT_TEST_SEED (default 0)."""
    seed = os.environ.get("MEDPEFT_TEST_SEED", "0")
    step = random.Random(f"{seed}:{request.node.nodeid}").randint(low, high)
    print(f"seeded step {step} of [{low}, {high}] (MEDPEFT_TEST_SEED={seed})")
    return step


def hold_until_killed(code: str) -> str:
    """Python source: run `code`, print "ready", then block until stdin closes (Popen with stdin=PIPE)."""
    return f"{code}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()\n"


def wait_for(predicate, what: str, limit_s: float = 120.0) -> None:
    """Return once predicate() is true; fail naming `what` if it is not within limit_s (a guard only)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {limit_s:.0f} s"
        time.sleep(0.02)


def db_rows(db: Path) -> list[dict]:
    """Every row of the `runs` table of a results DuckDB as dicts, oldest first; [] when there is no file."""
    import duckdb

    if not Path(db).exists():
        return []
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM runs ORDER BY finished_at")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one thread; several threads on shared cores mostly wait on each other.
    Bitwise comparisons also need equal thread counts. Autouse in every module that imports it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
