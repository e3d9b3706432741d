"""Fixtures every test module gets: a session-wide data cache, signal handlers reset after each test,
the shipped BreastMNIST file, and a CLI runner that sees stderr and exit codes. Shared helpers and
constants live in helpers.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from helpers import BREASTMNIST_DIR

# Under pytest-xdist every core already runs a worker: one math thread each avoids oversubscription
# (measured here: a tiny run took 3.9 s with one thread, 18-34 s with two threads per worker).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# No test may reach the network. Set here, before collection: huggingface_hub reads HF_HUB_OFFLINE once,
# when first imported (test modules import timm at collection); set later, it was ignored and tests that
# look for uncached weights tried the network (47 s each in one run here).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A checkpoint after every epoch and evaluation (train/resume.py rate-limits them to one per 30 s):
# what a test finds in a checkpoint never depends on how fast the machine is. Child processes inherit
# it; tests of the rate limit set their own (tests/test_checkpoint_interval.py).
os.environ.setdefault("MEDPEFT_CHECKPOINT_INTERVAL_S", "0")


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """One synthetic-lesions cache for the whole session; never the user's home cache."""
    path = tmp_path_factory.mktemp("medpeft-data")
    old = os.environ.get("MEDPEFT_DATA_DIR")
    os.environ["MEDPEFT_DATA_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MEDPEFT_DATA_DIR", None)
    else:
        os.environ["MEDPEFT_DATA_DIR"] = old


@pytest.fixture(autouse=True)
def _signal_handlers():
    """Every test starts with the session's SIGTERM/SIGUSR1/SIGINT handlers. A command run in-process
    may install one for the rest of its process (`sweep run-one` turns SIGTERM into KeyboardInterrupt);
    in a test process that would leak into whichever tests the worker runs next."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        if signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


@pytest.fixture
def breastmnist_dir() -> Path:
    return BREASTMNIST_DIR


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run `medpeft ARGS` in-process inside tmp_path; returns exit code, stdout and stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        from medpeft_cli.cli import main

        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
